"""Time the pre-training image check (every file decoded as the pipeline decodes it) on a metadata folder's split.

    python benchmarks/image_check_speed.py --data_root=data/tiny_all/images --metadata_root=data/tiny_all/test

Prints the images checked, the seconds and images per second (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import time

from absl import app, flags

from keras_wsol.data import splits

flags.DEFINE_string("data_root", None, "Images root.", required=True)
flags.DEFINE_string("metadata_root", None, "One split's metadata folder.", required=True)
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    del argv
    split = splits.metadata_split(FLAGS.data_root, FLAGS.metadata_root)
    start = time.perf_counter()
    splits.check_image_files(split, "test")
    seconds = time.perf_counter() - start
    print(f"checked {len(split)} images in {seconds:.1f} s ({len(split) / seconds:.0f} images/s)")


if __name__ == "__main__":
    app.run(main)
