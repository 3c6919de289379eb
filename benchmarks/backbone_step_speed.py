"""CAM train-step time of several backbones at several sizes, side by side in one run.

    python benchmarks/backbone_step_speed.py [--backbones efficientnet_lite0 mobilenet_v2] [--sizes 128 224]
        [--batch 8] [--rounds 8]

For each size, a CAM of each backbone (random weights, same batch) is
compiled and warmed up; their train steps are then timed round by round,
interleaved so that drift hits all alike, and the fastest round is kept. The
ratio column divides each backbone's time by the first backbone's.
"""

import argparse

import keras
import numpy as np
from timing import fastest_train_steps

from keras_wsol.methods import CAM
from keras_wsol.optimizers import Adam


def bench(backbones: list[str], size: int, batch: int, rounds: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = np.arange(batch) % 4
    models = {}
    for name in backbones:
        keras.utils.set_random_seed(0)
        models[name] = CAM(num_classes=4, backbone=name, image_size=size, backbone_lr_multiplier=0.1)
        models[name].compile(optimizer=Adam(1e-3))
    return fastest_train_steps(models, x, y, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "mobilenet_v2"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 224])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    for size in args.sizes:
        best = bench(args.backbones, size, args.batch, args.rounds)
        print(f"\nCAM train step, {size} px, batch {args.batch}, fastest of {args.rounds} rounds")
        print(f"{'backbone':20s}{'ms/step':>10s}{f'x {args.backbones[0]}':>24s}")
        for name, seconds in best.items():
            print(f"{name:20s}{seconds * 1e3:10.1f}{seconds / best[args.backbones[0]]:24.2f}")


if __name__ == "__main__":
    main()
