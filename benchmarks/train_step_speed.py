"""Time per train step of each method relative to CAM, same backbone and batch, in one run.

    python benchmarks/train_step_speed.py [--backbones small mobilenet_v2] [--size 96] [--sets 4] [--set_size 5]
        [--hyperparameter classifier_channels=256 ...]

Every variant of every registered method (``WSOLModel.variants``: ORNet's
refinement against a CAM evaluator of the same backbone) trains on the
same class-set batch (N sets x S images, which every method accepts) from the
same start; the compiled train steps are timed round by round, interleaved so
drift hits all alike, and the fastest round is kept (the least disturbed by
other work on the machine). ``--hyperparameter NAME=VALUE`` sets NAME on
every method that declares it (default: the declared defaults).

A method declares ``train_passes``: the network passes of one step, a
forward or a backward pass over one batch each counting one (CAM: one
forward and one backward). The target of each method is a time ratio of at
most 1.2x its ratio of passes.
"""

import argparse

import keras
import numpy as np
from timing import fastest_train_steps

from keras_wsol.methods import METHODS


def build_models(cls, backbone: str, size: int, sets: int, set_size: int, overrides: dict | None = None) -> dict:
    """Every variant of method ``cls`` for the benchmark batch, by name, each seeded alike."""
    declared = {p.name: p for p in cls.hyperparameters}
    arguments = {
        k: declared[k].convert(v) for k, v in {"set_size": set_size, **(overrides or {})}.items() if k in declared
    }
    models = {}
    for name, make in cls.variants(num_classes=sets, backbone=backbone, image_size=size, **arguments).items():
        keras.utils.set_random_seed(0)
        models[name] = make()
    return models


def bench(backbone: str, size: int, sets: int, set_size: int, rounds: int, overrides: dict) -> dict[str, tuple]:
    """``{variant: (fastest seconds, train passes)}``."""
    batch = sets * set_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch, size, size, 3)).astype("float32")
    y = np.repeat(np.arange(sets), set_size).astype("int32")
    models = {}
    for cls in METHODS.values():
        models.update(build_models(cls, backbone, size, sets, set_size, overrides))
    for model in models.values():
        model.compile(optimizer=keras.optimizers.Adam(1e-4))
    times = fastest_train_steps(models, x, y, rounds)
    return {name: (seconds, models[name].train_passes) for name, seconds in times.items()}


def _override(text: str) -> tuple[str, object]:
    name, _, value = text.partition("=")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["small", "mobilenet_v2"])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--sets", type=int, default=4)
    parser.add_argument("--set_size", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument(
        "--hyperparameter",
        action="append",
        type=_override,
        default=[],
        help="NAME=VALUE for every method that declares NAME (e.g. classifier_channels=256)",
    )
    args = parser.parse_args()
    for backbone in args.backbones:
        best = bench(backbone, args.size, args.sets, args.set_size, args.rounds, dict(args.hyperparameter))
        cam_seconds, cam_passes = best["cam"]
        print(f"\n{backbone}, {args.size} px, batch {args.sets} x {args.set_size}, fastest of {args.rounds} rounds")
        print(f"{'method':14s}{'ms/step':>10s}{'x CAM':>8s}{'passes':>8s}{'target':>8s}  verdict")
        for name, (seconds, passes) in best.items():
            ratio, target = seconds / cam_seconds, 1.2 * passes / cam_passes
            verdict = "meets" if ratio <= target else "misses"
            print(f"{name:14s}{seconds * 1e3:10.1f}{ratio:8.2f}{passes / cam_passes:8.2f}{target:8.2f}  {verdict}")


if __name__ == "__main__":
    main()
