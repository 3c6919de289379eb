"""Build the real-photo benchmark: a Tiny-ImageNet-200 subset in the library's metadata-folder format.

    python benchmarks/tiny_imagenet.py --source=tiny-imagenet-200 --out=data/tiny20
    python train.py --dataset=folder --data_root=data/tiny20/images --metadata_root=data/tiny20 \\
        --backbone=efficientnet_lite0 --weights=imagenet --image_size=128 --workdir=runs/tiny20_cam

Tiny-ImageNet-200 holds real ImageNet photos (64 x 64 px) with ImageNet's own boxes. The
benchmark takes 20 classes drawn with seed 0 from the classes that have training boxes
(:func:`benchmark_classes`), 50 training and 10 validation photos per class (the validation
photos held out of Tiny-ImageNet's training set), and all 50 of each class's Tiny-ImageNet
validation photos as the test split: 1000 train, 200 val, 1000 test photos. Sized so that a
CAM run with ImageNet EfficientNet-Lite0 at 128 px stays within about 15 minutes on 2 cores
(docs/RESULTS.md, "Real photos", has the measured times and the run-to-run spread).
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags

from keras_wsol.data import convert

flags.DEFINE_string("source", None, "The tiny-imagenet-200 folder (wnids.txt, words.txt, train/, val/).", required=True)
flags.DEFINE_string("out", "data/tiny20", "The metadata folder to write.")
flags.DEFINE_integer("num_classes", 20, "Classes drawn.", lower_bound=2)
flags.DEFINE_integer("train_per_class", 50, "Training photos per class.", lower_bound=1)
flags.DEFINE_integer("val_per_class", 10, "Validation photos per class (held out of the training photos).")
flags.DEFINE_boolean("overwrite", False, "Replace --out if it exists.")
FLAGS = flags.FLAGS


def benchmark_classes(source: str, count: int, seed: int = 0) -> list[str]:
    """``count`` WordNet ids drawn with ``seed`` from the sorted classes of ``source`` that have training boxes."""
    with open(os.path.join(source, "wnids.txt")) as f:
        wnids = sorted(line.strip() for line in f if line.strip())
    boxed = [w for w in wnids if os.path.isfile(os.path.join(source, "train", w, f"{w}_boxes.txt"))]
    if len(boxed) < count:
        raise ValueError(f"{source}: {len(boxed)} classes with training boxes, {count} asked for")
    return [boxed[i] for i in sorted(np.random.default_rng(seed).choice(len(boxed), count, replace=False))]


def main(argv: list[str]) -> None:
    del argv
    classes = benchmark_classes(FLAGS.source, FLAGS.num_classes)
    # val_percent 20 leaves 400 training photos a class to draw train_per_class from.
    result = convert.convert(
        "tiny_imagenet",
        FLAGS.source,
        FLAGS.out,
        classes=classes,
        val_percent=20,
        max_per_class=(FLAGS.train_per_class, FLAGS.val_per_class, 0),
        overwrite=FLAGS.overwrite,
    )
    print(result.summary, end="")


if __name__ == "__main__":
    app.run(main)
