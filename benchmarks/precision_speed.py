"""CAM train-step time under each Keras precision policy relative to float32, same model and batch, in one run.

    python benchmarks/precision_speed.py [--backbones small efficientnet_lite0] [--size 128] [--batch 32]
        [--rounds 5] [--policies float32 mixed_bfloat16]

For each backbone a CAM model is built under every policy from the same seed
(the policy is global in Keras while a model is built; each model keeps its
own), compiled with Adam, and its compiled train step timed on one random
batch; rounds interleave the policies (``timing.fastest_train_steps``) and
the fastest round is kept. The last column is float32's time over the
policy's: above 1 the policy is faster. On a CPU, mixed_bfloat16 pays off only
where oneDNN has bfloat16 kernels for the model's ops (AVX512_BF16 or AMX).
"""

import argparse

import keras
import numpy as np
from timing import fastest_train_steps

from keras_wsol.methods import CAM


def bench(backbone: str, size: int, batch: int, policies: list[str], rounds: int) -> dict[str, float]:
    """``{policy: fastest seconds per train step}`` of a CAM model on ``backbone``."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = (np.arange(batch) % 20).astype("int32")
    models = {}
    try:
        for policy in policies:
            keras.mixed_precision.set_global_policy(policy)
            keras.utils.set_random_seed(0)
            models[policy] = CAM(num_classes=20, backbone=backbone, image_size=size)
            models[policy].compile(optimizer=keras.optimizers.Adam(1e-4))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return fastest_train_steps(models, x, y, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["small", "efficientnet_lite0"])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--policies", nargs="+", default=["float32", "mixed_bfloat16"])
    args = parser.parse_args()
    if args.policies[0] != "float32":
        parser.error("--policies: the first must be float32, the reference of the ratios")
    print(f"{'backbone':20s} {'policy':16s} {'s/step':>8s} {'float32 / policy':>17s}")
    for backbone in args.backbones:
        times = bench(backbone, args.size, args.batch, args.policies, args.rounds)
        for policy, seconds in times.items():
            print(f"{backbone:20s} {policy:16s} {seconds:8.3f} {times['float32'] / seconds:17.2f}")


if __name__ == "__main__":
    main()
