"""The input pipeline on real JPEGs against what the train step consumes: is it ever the bottleneck?

    python benchmarks/pipeline_speed.py --data_root=data/tiny20/images --metadata_root=data/tiny20 \\
        [--backbone efficientnet_lite0] [--size 128] [--batch 32] [--steps 20] [--rounds 3]

Three measurements on the training split of a benchmark folder (docs/DATA.md):

* the pipeline alone (``keras_wsol.data.pipeline.training_dataset``: read,
  decode, resize, random crop and flip, batch), in images per second, with
  each cache option (none; ``memory``, timed once the cache is filled);
* the compiled CAM train step alone on one batch held in memory (the images
  per second it consumes);
* ``model.fit`` for ``--steps`` steps fed by each pipeline against the same
  steps fed from memory (one batch repeated), rounds interleaved, the fastest
  of each kept. The ratio column, files / memory, is the target: at most 1.05.
  Every round's time is printed beside it: on the 2-core development machine
  whole rounds of either feed sometimes run at 1.5-3x the undisturbed step
  time (docs/BENCHMARKS.md), so a ratio is only meaningful when each feed has
  at least one undisturbed round.

Run it on an otherwise idle machine: the two sides share the cores.
"""

import argparse
import time

import keras
import tensorflow as tf
from timing import fastest_train_steps

from keras_wsol.data import factory, pipeline
from keras_wsol.methods import CAM

CACHES = {"files": None, "files, cache=memory": "memory"}


def pipeline_images_per_second(dataset: tf.data.Dataset, batches: int, batch: int) -> float:
    """Images per second of iterating ``batches`` batches of ``dataset`` (after one warm-up pass)."""
    for _ in dataset.take(batches):
        pass
    start = time.perf_counter()
    for _ in dataset.take(batches):
        pass
    return batches * batch / (time.perf_counter() - start)


def fit_seconds(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> float:
    """Seconds of one ``fit`` epoch of ``steps`` steps (the model already traced)."""
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--metadata_root", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = factory.DataSettings(
        dataset="folder", data_root=args.data_root, metadata_root=args.metadata_root, image_size=args.size
    )
    train = factory.load_split(settings, "train")
    pipelines = {
        name: pipeline.training_dataset(train, args.batch, args.size, seed=0, cache=cache).repeat()
        for name, cache in CACHES.items()
    }
    batches = len(train) // args.batch
    print(f"training split: {len(train)} photos, batch {args.batch}, {args.size} px, {args.backbone}")
    for name, dataset in pipelines.items():
        rate = pipeline_images_per_second(dataset, batches, args.batch)
        print(f"pipeline alone, {name:22s} {rate:8.0f} images/s")

    keras.utils.set_random_seed(0)
    model = CAM(num_classes=train.num_classes, backbone=args.backbone, image_size=args.size)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    x, y = next(iter(pipelines["files"]))
    step = fastest_train_steps({"cam": model}, x.numpy(), y.numpy(), args.rounds)["cam"]
    print(f"train step alone, from memory   {args.batch / step:8.0f} images/s ({step:.3f} s a step)")

    feeds = {"memory": tf.data.Dataset.from_tensors((x, y)).repeat(), **pipelines}
    for dataset in feeds.values():
        fit_seconds(model, dataset, 2)  # trace the epoch loop with each input
    times = {name: [] for name in feeds}
    for _ in range(args.rounds):
        for name, dataset in feeds.items():
            times[name].append(fit_seconds(model, dataset, args.steps))
    best = {name: min(t) for name, t in times.items()}
    print(f"\n{'fit fed from':24s} {'s / step':>9s} {'/ memory':>9s}   every round, s / step")
    for name, seconds in best.items():
        rounds = " ".join(f"{t / args.steps:.3f}" for t in times[name])
        print(f"{name:24s} {seconds / args.steps:9.3f} {seconds / best['memory']:9.2f}   {rounds}")
    worst = max(best[name] / best["memory"] for name in pipelines)
    print(f"\nslowest pipeline / memory: {worst:.2f} (target at most 1.05){'' if worst <= 1.05 else '  MISSED'}")


if __name__ == "__main__":
    main()
