"""The input pipeline on real JPEGs against what the train step consumes: is it ever the bottleneck?

    python benchmarks/pipeline_speed.py --data_root=data/tiny20/images --metadata_root=data/tiny20 \\
        [--backbone efficientnet_lite0] [--size 128] [--batch 32] [--steps 6] [--rounds 20]

Three measurements on the training split of a benchmark folder (docs/DATA.md):

* the pipeline alone (``keras_wsol.data.pipeline.training_dataset``: read,
  decode, resize, random crop and flip, batch), in images per second, with
  each cache option (none; ``memory``, timed once the cache is filled);
* the compiled CAM train step alone on one batch held in memory (the images
  per second it consumes);
* ``model.fit`` fed by each pipeline against ``fit`` fed from memory (one
  batch repeated): ``--rounds`` short rounds of ``--steps`` steps, the feeds
  interleaved in a rotating order. A callback clocks every step's end; a
  round's time is the mean interval between step ends after the first (the
  steady state: the wait for the next batch included, the epoch's start-up
  not). Each pipeline round is paired with the memory round of the same turn
  of the rotation (at most two rounds apart), and the median of the paired
  ratios is the figure against the target (at most 1.05), with its
  quartiles. On the 2-core development machine whole rounds of either feed
  sometimes run at 1.5-3x the undisturbed step time (docs/BENCHMARKS.md);
  pairing neighbours and taking the median keeps a disturbed round from
  deciding the figure, which the fastest-of-N rule of earlier versions did
  not when a feed had no clean round.

Run it on an otherwise idle machine: the two sides share the cores.
"""

import argparse
import time

import keras
import numpy as np
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


class StepClock(keras.callbacks.Callback):
    """Records ``time.perf_counter()`` at the end of every train batch."""

    def on_train_begin(self, logs=None) -> None:
        self.ends = []

    def on_train_batch_end(self, batch, logs=None) -> None:
        self.ends.append(time.perf_counter())


def steady_step_seconds(model: keras.Model, dataset: tf.data.Dataset, steps: int) -> float:
    """Mean seconds between consecutive step ends of one ``fit`` epoch of ``steps`` steps (``steps`` >= 2; the
    model already traced): the step and the wait for its batch, without the epoch's start-up."""
    clock = StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[clock], shuffle=False)
    return (clock.ends[-1] - clock.ends[0]) / (steps - 1)


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """The lower quartile, median and upper quartile of ``values``.

    Example:
        >>> quartiles([1.0, 2.0, 3.0, 4.0, 100.0])
        (2.0, 3.0, 4.0)
    """
    q1, q2, q3 = np.percentile(values, [25, 50, 75])
    return float(q1), float(q2), float(q3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", required=True)
    parser.add_argument("--metadata_root", required=True)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps: give at least 2 (a round's time is the interval between step ends)")
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
        steady_step_seconds(model, dataset, 2)  # trace the epoch loop with each input
    names = list(feeds)
    times = {name: [] for name in feeds}
    for round_index in range(args.rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # each feed takes each position in turn
            times[name].append(steady_step_seconds(model, feeds[name], args.steps))
    print(f"\n{'fit fed from':24s} {'median s/step':>13s}   paired ratio to memory: median (quartiles)")
    print(f"{'memory':24s} {np.median(times['memory']):13.3f}")
    medians = {}
    for name in pipelines:
        ratios = [t / m for t, m in zip(times[name], times["memory"])]
        low, medians[name], high = quartiles(ratios)
        print(f"{name:24s} {np.median(times[name]):13.3f}   {medians[name]:.3f} ({low:.3f}-{high:.3f})")
    for name, seconds in times.items():
        print(f"  every round, {name}: " + " ".join(f"{t:.3f}" for t in seconds))
    worst = max(medians.values())
    print(
        f"\nslowest pipeline / memory, median of paired rounds: {worst:.3f} (target at most 1.05)"
        f"{'' if worst <= 1.05 else '  MISSED'}"
    )


if __name__ == "__main__":
    main()
