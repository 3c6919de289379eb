"""Latency of the exported ``serving_default`` against a classify-only export of the same model, in one run.

    PYTHONPATH=. python benchmarks/serving_latency.py [--backbones small resnet50] [--sizes 96 224]
        [--batches 1 32] [--rounds 9] [--workdir runs/default]

For each backbone and side, one model (random weights, or the checkpoint of
``--workdir``, whose backbone and side are then used) is exported twice with
:func:`keras_wsol.export.export_model` to a temporary folder: the full export
(probabilities, classes, score maps at the input size, boxes) and a
classify-only one (probabilities and classes). Both are loaded with
``tf.saved_model.load`` and their ``serving_default`` signatures called on the
same float batch, interleaved round by round; the fastest round of each is
kept. The target is full / classify-only at most 1.3x, at batch 1 and 32.
"""

import argparse
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from keras_wsol import export
from keras_wsol.methods import CAM


def timed(fn, images) -> float:
    start = time.perf_counter()
    out = fn(images=images)
    np.asarray(out["classes"])  # wait for the result
    return time.perf_counter() - start


def bench(model, batches: list[int], rounds: int) -> list[tuple[int, float, float]]:
    """``(batch, full seconds, classify-only seconds)`` for each batch size."""
    side = model.image_size
    with tempfile.TemporaryDirectory() as root:
        full = tf.saved_model.load(export.export_model(model, root, "full", threshold=0.5))
        classify = tf.saved_model.load(export.export_model(model, root, "classify", threshold=0.5, classify_only=True))
        fns = {"full": full.signatures["serving_default"], "classify": classify.signatures["serving_default"]}
        rows = []
        for batch in batches:
            images = tf.constant(np.random.default_rng(0).uniform(0, 255, (batch, side, side, 3)).astype("float32"))
            times = {name: [] for name in fns}
            for fn in fns.values():  # warm up
                timed(fn, images)
                timed(fn, images)
            for _ in range(rounds):
                for name, fn in fns.items():
                    times[name].append(timed(fn, images))
            rows.append((batch, min(times["full"]), min(times["classify"])))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["small"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[96])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--workdir", default=None, help="benchmark this train.py run's best checkpoint instead")
    args = parser.parse_args()
    if args.workdir:
        models = [keras.models.load_model(os.path.join(args.workdir, "checkpoints", "best.keras"))]
    else:
        keras.utils.set_random_seed(0)
        models = [CAM(num_classes=10, backbone=b, image_size=s) for b in args.backbones for s in args.sizes]
    print(
        f"{'backbone':12s}{'side':>6s}{'batch':>7s}{'full ms':>10s}{'classify ms':>13s}{'ratio':>8s}"
        "  verdict (target 1.30)"
    )
    for model in models:
        for batch, full, classify in bench(model, args.batches, args.rounds):
            ratio = full / classify
            print(
                f"{model.backbone_name:12s}{model.image_size:6d}{batch:7d}{full * 1e3:10.1f}{classify * 1e3:13.1f}"
                f"{ratio:8.2f}  {'meets' if ratio <= 1.3 else 'misses'}"
            )


if __name__ == "__main__":
    main()
