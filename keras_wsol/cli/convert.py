"""The convert command: annotated photos (VOC, COCO, YOLO, Tiny-ImageNet) -> a benchmark metadata folder.

    python convert.py FORMAT SOURCE OUT [--classes=a,b] [--split=60,10,30] [--seed=0] [--strict]

Run it as ``python convert.py`` (a checkout), ``wsol-convert`` (installed) or
``python -m keras_wsol.cli.convert``. It imports neither TensorFlow nor
Keras. The result trains with ``train.py --dataset=folder
--data_root=OUT/images --metadata_root=OUT``; docs/DATA.md describes the
format and each source's box convention.
"""

from __future__ import annotations

import sys

from absl import app, flags

from keras_wsol.cli.parsing import command_main
from keras_wsol.data import convert as convert_lib
from keras_wsol.data import sources

FLAGS = flags.FLAGS
USAGE = f"usage: convert.py {{{'|'.join(sources.FORMATS)}}} SOURCE OUT [flags]; --help for the flags"


def define_convert_flags() -> None:
    """This command's flags."""
    flags.DEFINE_list("classes", None, "Keep only these classes (names, WordNet ids or lemmas), in this id order.")
    flags.DEFINE_list("split", ["60", "10", "30"], "train,val,test percentages, for a source without splits.")
    flags.DEFINE_integer(
        "val_percent", 10, "Percent of each training class held out as val, for a source with train and test only."
    )
    flags.DEFINE_integer("seed", 0, "Seed of the split and of --max_per_class's choice.")
    flags.DEFINE_list(
        "max_per_class", ["0", "0", "0"], "At most this many images per class in train,val,test (0: all)."
    )
    flags.DEFINE_boolean("strict", False, "Refuse, naming the file, any image that would be skipped.")
    flags.DEFINE_boolean("copy", False, "Copy the photos into OUT/images instead of hard-linking them.")
    flags.DEFINE_boolean("overwrite", False, "Replace OUT if it exists.")
    flags.DEFINE_string("names", None, "yolo: the class-names file (default: classes.txt, obj.names or data.yaml).")
    flags.DEFINE_string("image_root", None, "coco: the folder the file_name entries are under (default: the JSON's).")


def _three(flag: str) -> tuple[int, int, int]:
    values = FLAGS[flag].value
    try:
        parsed = tuple(int(v) for v in values)
    except ValueError:
        parsed = ()
    if len(parsed) != 3 or min(parsed) < 0:
        raise app.UsageError(f"--{flag}={','.join(values)}: three whole numbers >= 0 (train, val, test)")
    return parsed


def main(argv: list[str]) -> None:
    if len(argv) != 4:
        raise app.UsageError(f"{USAGE} (got {len(argv) - 1} argument(s))")
    kind, source, out = argv[1:]
    try:
        result = convert_lib.convert(
            kind,
            source,
            out,
            classes=FLAGS.classes,
            split=_three("split"),
            val_percent=FLAGS.val_percent,
            seed=FLAGS.seed,
            max_per_class=_three("max_per_class"),
            strict=FLAGS.strict,
            copy=FLAGS.copy,
            overwrite=FLAGS.overwrite,
            names_file=FLAGS.names,
            image_root=FLAGS.image_root,
        )
    except (convert_lib.ConversionError, sources.SourceError) as error:
        print(f"convert.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(result.summary, end="")
    print(f"\nWrote {out}. Train on it:")
    print(f"  python train.py --dataset=folder --data_root={out}/images --metadata_root={out}")


def run() -> None:
    """Entry point of ``convert.py`` and ``wsol-convert``."""
    define_convert_flags()
    app.run(command_main(main))


if __name__ == "__main__":
    run()
