"""Time per train step of each method relative to CAM, same backbone and batch, in one run.

    python benchmarks/train_step_speed.py [--backbones small mobilenet_v2] [--size 96] [--sets 4] [--set_size 5]
        [--cams2i_channels 1024]

Every registered method (ORNet at both stages, stage 2 against a CAM
evaluator of the same backbone) trains on the same class-set batch (N sets x S
images, which every method accepts) from the same start; the compiled train
steps are timed round by round, interleaved so drift hits all alike, and the
fastest round is kept (the least disturbed by other work on the machine).

``PASSES`` counts the network passes of one step, a forward or a backward
pass over one batch each counting one: CAM runs one forward and one
backward. The target of each method is a time ratio of at most 1.2x its
ratio of passes.
"""

import argparse
import time

import keras
import numpy as np

from keras_wsol.methods import CAM, METHODS, ORNet

# Forward + backward passes per step (CAM: 1 + 1).
PASSES = {
    "cam": 2,
    # Stage I: forward + backward; stage II: forward on I (H and f_o), forward
    # on I * H, backward through that pass to the input (H) and the kernel.
    "minmaxcam": 5,
    # One forward and one backward through the backbone and both classifiers;
    # the inter-sample module adds a forward and a backward of f over the 4
    # weighted images of each image (f is much smaller than the backbone, so
    # this counts it as one pass each way). CAMs2i's network is also larger
    # than CAM's (the last block at stride 1, two 1x1-conv classifiers), which
    # passes do not count.
    "cams2i": 4,
    # The backbone forward and backward over X and X~ (twice the batch); CAAM,
    # SSAM and the aggregation conv run at feature resolution.
    "complementary": 4,
    # Stage 1: one forward and one backward through the backbone, the
    # generator riding on the low-level tap (its own convolutions at that
    # resolution are not counted).
    "ornet": 2,
    # Stage 2: the shallow layers + generator forward, the evaluator forward on
    # I * p^a, the evaluator backward to the input, the generator and shallow
    # layers backward: two networks, each once forward and once backward.
    "ornet_stage2": 4,
}


def bench(backbone: str, size: int, sets: int, set_size: int, rounds: int, cams2i_channels: int) -> dict[str, float]:
    batch = sets * set_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = np.repeat(np.arange(sets), set_size).astype("int32")
    models = {}
    for name, cls in METHODS.items():
        keras.utils.set_random_seed(0)
        kwargs = {"minmaxcam": {"set_size": set_size}, "cams2i": {"classifier_channels": cams2i_channels}}.get(name, {})
        models[name] = cls(num_classes=sets, backbone=backbone, image_size=size, **kwargs)
    evaluator = CAM(num_classes=sets, backbone=backbone, image_size=size)
    models["ornet_stage2"] = ORNet.refine(models["ornet"], evaluator)
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
        for _ in range(2):  # trace and warm up
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["small", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--set_size", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cams2i_channels", type=int, default=1024, help="CAMs2i classifier width (paper: 1024)")
    args = parser.parse_args()
    for backbone in args.backbones:
        best = bench(backbone, args.size, args.sets, args.set_size, args.rounds, args.cams2i_channels)
        print(f"\n{backbone}, {args.size} px, batch {args.sets} x {args.set_size}, fastest of {args.rounds} rounds")
        print(f"{'method':14s}{'ms/step':>10s}{'x CAM':>8s}{'passes':>8s}{'target':>8s}  verdict")
        for name, seconds in best.items():
            ratio = seconds / best["cam"]
            target = 1.2 * PASSES[name] / PASSES["cam"]
            verdict = "meets" if ratio <= target else "misses"
            print(f"{name:14s}{seconds * 1e3:10.1f}{ratio:8.2f}{PASSES[name] / PASSES['cam']:8.2f}{target:8.2f}  {verdict}")


if __name__ == "__main__":
    main()
