"""absl flags shared by the train and evaluate commands.

A method never reads these: the commands turn them into arguments. Each
registered method's hyper-parameters become ``--<method>_<name>`` flags
(:mod:`keras_wsol.methods.hyperparameters`); a name they had before 0.2.0 fails with a message naming
the flag it became (:data:`RENAMED`, CHANGELOG.md).

Example:
    >>> from absl import flags as absl_flags
    >>> define_data_flags(); "dataset" in absl_flags.FLAGS
    True
"""

import copy
import functools
import os
import sys
from typing import Callable

from absl import app, flags, logging

DATASETS = ("synthetic", "cub", "folder", "imagenet")
FLAGS = flags.FLAGS


#: The flags that say which data a run uses: ``evaluate`` replays them from a workdir's flags.txt. Filled by
#: :func:`define_data_flags` with every flag it defines before the loader and protocol flags, so none is forgotten.
DATA_FLAGS: list[str] = []

#: ``{name before 0.2.0: flag}`` for the renamed method flags: given, an old name is an error naming the new one
#: (:func:`parse_flags`). Filled by :func:`define_model_flags`.
RENAMED: dict[str, str] = {}

#: The data flags only some sources read: given with another ``--dataset`` they are refused, not ignored (a user's
#: ``--data_root`` without ``--dataset=folder`` would otherwise train on the synthetic benchmark, silently).
SOURCE_FLAGS = {
    "num_classes": ("synthetic",),
    "train_images_per_class": ("synthetic",),
    "eval_images_per_class": ("synthetic",),
    "data_seed": ("synthetic", "cub"),
    "tfds_data_dir": ("cub", "imagenet"),
    "tfds_manual_dir": ("cub", "imagenet"),
    "cub_val_per_class": ("cub",),
    "data_root": ("folder", "imagenet"),
    "metadata_root": ("folder", "imagenet"),
    "mask_root": ("folder", "imagenet"),
    "mask_metadata_root": ("folder", "imagenet"),
    "boxes_normalized": ("folder", "imagenet"),
}


def show_in_help(*modules: str) -> None:
    """List the flags ``modules`` define under ``--help``, which absl limits to the main script's own flags."""
    for module in modules:
        for flag in FLAGS.get_flags_for_module(module):
            FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def errors_without_help(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
    """``main`` whose ``app.UsageError`` prints ``PROGRAM: error: MESSAGE`` and exits 2, instead of absl's whole flag
    help before the one line that matters (``--help`` shows the help)."""

    def wrapped(argv: list[str]) -> None:
        try:
            main(argv)
        except app.UsageError as error:
            print(f"{os.path.basename(argv[0])}: error: {error}\n(--help lists the flags)", file=sys.stderr)
            sys.exit(2)

    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, after checking each ``--flagfile`` line so that an error names the file and line.

    absl reads flag files itself but reports an unknown flag or a bad value
    without saying where it came from. Used as ``app.run``'s ``flags_parser``.
    """
    try:
        for i, argument in enumerate(argv[1:], 1):
            if argument == "--":
                break
            if argument.startswith("-") and _renamed(argument):
                raise flags.Error(_renamed(argument))
            if argument.startswith("--flagfile="):
                _check_flagfile(argument.split("=", 1)[1], ())
            elif argument == "--flagfile" and i + 1 < len(argv):
                _check_flagfile(argv[i + 1], ())
    except flags.Error as error:
        sys.stderr.write(f"FATAL Flags parsing error: {error}\nPass --help to see the flags.\n")
        sys.exit(1)
    return app.parse_flags_with_usage(argv)


def _renamed(argument: str) -> str | None:
    """The message for ``argument`` (``--name[=value]``) when ``name`` is a flag's name before 0.2.0, else None."""
    name = argument.lstrip("-").partition("=")[0]
    negated = name.startswith("no") and name[2:] in RENAMED and name not in RENAMED
    old = name[2:] if negated else name
    if old not in RENAMED or old in FLAGS:
        return None
    new = ("no" if negated else "") + RENAMED[old]
    return f"--{name} was renamed --{new} in keras_wsol 0.2.0 (CHANGELOG.md lists every renamed flag)"


def _check_flagfile(path: str, including: tuple[str, ...]) -> None:
    """Raise :class:`flags.Error` naming ``path:line`` for the first line absl would refuse."""
    if path in including:
        raise flags.Error(f"--flagfile={path} includes itself (through {' -> '.join(including)})")
    try:
        with open(path) as file:
            lines = file.read().splitlines()
    except OSError as error:
        raise flags.Error(f"--flagfile={path}: cannot read it ({error.strerror})") from None
    for number, line in enumerate(lines, 1):
        text, where = line.strip(), f"{path}:{number}"
        if not text or text.startswith(("#", "//")):
            continue
        if not text.startswith("-"):
            raise flags.Error(f"{where}: {text!r} is not a flag (one --name=value per line)")
        name, has_value, value = text.lstrip("-").partition("=")
        if name == "flagfile":
            _check_flagfile(value, (*including, path))
            continue
        if _renamed(text):
            raise flags.Error(f"{where}: {_renamed(text)}")
        boolean = name.startswith("no") and name[2:] in FLAGS and FLAGS[name[2:]].boolean and not has_value
        if name not in FLAGS and not boolean:
            from absl.flags import _helpers

            close = _helpers.get_flag_suggestions(name, list(FLAGS))
            hint = f" (did you mean --{' or --'.join(close)}?)" if close else ""
            raise flags.Error(f"{where}: unknown flag --{name}{hint}")
        if has_value:
            try:
                copy.deepcopy(FLAGS[name]).parse(value)  # a copy: the real flag is set by absl's own pass
            except (flags.Error, ValueError) as error:
                raise flags.Error(f"{where}: {error}") from None


def define_data_flags() -> None:
    """Dataset and evaluation-protocol flags."""
    if "dataset" in FLAGS:
        return
    before = set(FLAGS)
    flags.DEFINE_enum(
        "dataset",
        "synthetic",
        DATASETS,
        "Dataset source: the offline synthetic benchmark, CUB-200-2011 "
        "through TFDS, a benchmark metadata folder, or ImageNet (TFDS training images, metadata-folder "
        "val/test boxes).",
    )
    flags.DEFINE_integer(
        "image_size", 96, "Square input side in pixels (224 for the papers' settings).", lower_bound=32
    )
    flags.DEFINE_integer(
        "num_classes", 8, "Synthetic benchmark: number of classes (other sources: from the data).", lower_bound=2
    )
    flags.DEFINE_integer(
        "train_images_per_class", 120, "Synthetic benchmark: training images per class.", lower_bound=1
    )
    flags.DEFINE_integer("eval_images_per_class", 40, "Synthetic benchmark: val/test images per class.", lower_bound=1)
    flags.DEFINE_integer(
        "data_seed", 0, "Synthetic benchmark: generator seed; cub: which training images are held out for val."
    )
    flags.DEFINE_string("tfds_data_dir", None, "cub, imagenet: TFDS data directory (default: TFDS's own).")
    flags.DEFINE_string(
        "tfds_manual_dir",
        None,
        "cub: folder holding CUB_200_2011.tgz and segmentations.tgz (else "
        "TFDS downloads them); imagenet: folder holding ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar.",
    )
    flags.DEFINE_integer(
        "cub_val_per_class",
        5,
        "cub: training images per class held out as the val split (the protocol's CUBV2 val has 5 per class).",
        lower_bound=1,
    )
    flags.DEFINE_string("data_root", None, "folder, imagenet: root of the images named in image_ids.txt.")
    flags.DEFINE_string(
        "metadata_root",
        None,
        "folder: benchmark metadata with train/val/test subfolders "
        "(imagenet: val/test); evaluator-only mode: that root or one split's folder.",
    )
    flags.DEFINE_string("mask_root", None, "Root of the mask PNGs that localization.txt names (OpenImages).")
    flags.DEFINE_string(
        "mask_metadata_root",
        None,
        "folder: optional second metadata root whose split folders list "
        "masks for a box dataset's images (e.g. CUB segmentations), for PxAP; a split without a folder there "
        "(often train and val) is scored on its boxes alone.",
    )
    flags.DEFINE_boolean(
        "boxes_normalized",
        False,
        "folder: localization.txt's boxes are fractions of the image's width and height in [0, 1], not pixels "
        "(x0 * W, y0 * H, x1 * W - 1, y1 * H - 1 are used); without it such boxes are refused",
    )
    DATA_FLAGS.extend(sorted(set(FLAGS) - before))
    flags.DEFINE_string(
        "cache",
        None,
        "Cache decoded images: 'memory' or a file prefix (train and val get their own suffix). Default: off.",
    )
    flags.DEFINE_integer("batch_size", 32, "Global batch size: split over the replicas of --strategy.", lower_bound=1)
    flags.DEFINE_float("cam_curve_interval", 0.01, "Spacing of the CAM thresholds (0.01 or 0.001).")
    flags.DEFINE_integer("resize_length", 224, "Score maps and boxes are evaluated at R x R.", lower_bound=8)
    flags.DEFINE_float("fixed_threshold", 0.2, "Also report Top-1/GT-known Loc at this fixed tau (older papers).")


def _need(*names: str) -> None:
    missing = [f"--{n}" for n in names if not FLAGS[n].value]
    if missing:
        raise app.UsageError(f"--dataset={FLAGS.dataset} needs {' and '.join(missing)}")


def _metadata_split(split: str, localization: bool = True):
    from keras_wsol.data import metadata, splits

    _need("data_root", "metadata_root")
    mask_split = None
    if FLAGS.mask_metadata_root:
        if not os.path.isdir(FLAGS.mask_metadata_root):
            raise app.UsageError(f"--mask_metadata_root={FLAGS.mask_metadata_root}: no such folder")
        mask_split = os.path.join(FLAGS.mask_metadata_root, split)
        if not os.path.isdir(mask_split):  # masks often exist for the test split only
            logging.info("--mask_metadata_root has no %s folder: the %s split is scored on boxes alone", split, split)
            mask_split = None
    try:
        loaded = splits.metadata_split(
            FLAGS.data_root,
            os.path.join(FLAGS.metadata_root, split),
            FLAGS.mask_root,
            mask_split,
            localization=localization,
        )
        return splits.pixel_boxes(loaded, split, FLAGS.boxes_normalized)
    except metadata.MetadataError as error:
        raise app.UsageError(f"--metadata_root={FLAGS.metadata_root}: {error}") from None


def load_split(split: str):
    """The ``split`` (train, val or test) of the dataset the data flags describe, as a :class:`Split`.

    A missing folder or malformed file is an error naming the flag and file;
    a flag of another source is refused (:data:`SOURCE_FLAGS`).
    """
    from keras_wsol.data import synthetic, tfds_sources

    for name, readers in SOURCE_FLAGS.items():
        if FLAGS[name].present and FLAGS.dataset not in readers:
            raise app.UsageError(
                f"--{name} is read by --dataset={' or '.join(readers)} only, and this run has --dataset="
                f"{FLAGS.dataset}: give --dataset={' or --dataset='.join(readers)}, or drop --{name}"
            )

    if FLAGS.dataset == "synthetic":
        data = synthetic.generate(
            split,
            num_classes=FLAGS.num_classes,
            images_per_class=FLAGS.train_images_per_class if split == "train" else FLAGS.eval_images_per_class,
            image_size=FLAGS.image_size,
            seed=FLAGS.data_seed,
        )
        return data.as_split(FLAGS.num_classes)
    if FLAGS.dataset == "cub" or (FLAGS.dataset == "imagenet" and split == "train"):
        name = "caltech_birds2011" if FLAGS.dataset == "cub" else "imagenet2012"
        try:
            if FLAGS.dataset == "imagenet":
                return tfds_sources.imagenet_train(FLAGS.tfds_data_dir, FLAGS.tfds_manual_dir)
            root = tfds_sources.prepare_cub(
                FLAGS.tfds_data_dir, FLAGS.tfds_manual_dir, FLAGS.cub_val_per_class, FLAGS.data_seed
            )
        except Exception as error:  # TFDS raises many kinds (network, checksums, missing manual files)
            raise app.UsageError(
                f"--dataset={FLAGS.dataset}: TFDS could not prepare {name} in --tfds_data_dir="
                f"{FLAGS.tfds_data_dir} (--tfds_manual_dir={FLAGS.tfds_manual_dir}): "
                f"{type(error).__name__}: {error}"
            ) from None
        return tfds_sources.cub_split(root, split)
    # folder (every split), imagenet (val, test): the benchmark's metadata; training needs no boxes.
    return _metadata_split(split, localization=split != "train")


def data_source() -> str:
    """The flags that say where the data comes from, for error messages."""
    if FLAGS.dataset in ("folder", "imagenet"):
        return f"--data_root={FLAGS.data_root} --metadata_root={FLAGS.metadata_root}"
    return f"--dataset={FLAGS.dataset}"


def check_data(data: dict, num_classes: int | None = None) -> None:
    """Refuse the run's splits before any long work: empty splits, stray labels, missing, damaged or mis-sized files.

    ``num_classes``: the model's class count, when a trained model is to
    score the splits (it must equal the data's).
    """
    from keras_wsol.data import splits

    try:
        splits.check_splits(data)
        for name, split in data.items():
            if num_classes is not None and split.indexable and split.num_classes != num_classes:
                raise ValueError(
                    f"{name} split: its labels span {split.num_classes} classes, the model has {num_classes}: "
                    "evaluate a model on the data it was trained for"
                )
            splits.check_image_files(split, name)
    except ValueError as error:
        raise app.UsageError(f"{data_source()}: {error}") from None


def define_model_flags() -> None:
    """Method and backbone flags; each registered method's hyper-parameters as ``--<method>_<name>``."""
    if "method" in FLAGS:
        return
    from keras_wsol.backbones import BACKBONES
    from keras_wsol.methods.registry import METHODS

    flags.DEFINE_enum("method", "cam", sorted(METHODS), "WSOL method.")
    flags.DEFINE_enum("backbone", "small", BACKBONES, "Backbone.")
    flags.DEFINE_string(
        "weights",
        "none",
        "Backbone weights: none, imagenet (keras.applications download; offline "
        "for efficientnet_lite0) or a .weights.h5 path.",
    )
    flags.DEFINE_integer(
        "head_channels", 0, "Width of an extra 3x3 conv before GAP (1024 for VGG16 CAM); 0 for none.", lower_bound=0
    )
    flags.DEFINE_enum(
        "input_normalization",
        "dataset",
        ("unit", "dataset"),
        "small backbone: standardize pixels with the training split's mean and std (default), so a masked pixel "
        "(the preprocessing's zero point) is the dataset's mean colour, as the official codes' masks of normalized "
        "tensors are; or scale them to [0, 1] (unit), where a masked pixel is black. The other backbones "
        "normalize as their ImageNet weights expect and refuse this flag when it is given.",
    )
    # Class-set batches (methods whose uses_class_sets is true): read by the data pipeline too.
    flags.DEFINE_integer("set_size", 5, "Images per class set, S (class-set methods).", lower_bound=2)
    flags.DEFINE_integer(
        "sets_per_batch", 5, "Class sets per batch, N; the training batch is N x S (class-set methods).", lower_bound=1
    )
    for name, method in sorted(METHODS.items()):
        define_hyperparameter_flags(name, method)


def define_hyperparameter_flags(method_name: str, method) -> None:
    """``--<method_name>_<name>`` for each of ``method``'s hyper-parameters (names before 0.2.0: :data:`RENAMED`)."""
    from keras_wsol.methods.hyperparameters import flag_name

    for parameter in method.hyperparameters:
        flag = flag_name(method_name, parameter)
        if flag is None or flag in FLAGS:
            continue  # no flag, or a shared flag defined above
        kind = parameter.value_type
        text = f"{method.__name__}: {parameter.help} [default from: {parameter.source}]"
        if parameter.is_tuple:
            flags.DEFINE_list(flag, [str(v) for v in parameter.default], text)
            bounds = "".join(
                f" {op} {v:g}" for op, v in ((">=", parameter.minimum), ("<=", parameter.maximum)) if v is not None
            )
            flags.register_validator(
                flag,
                functools.partial(_valid_list, parameter),
                message=f"--{flag}: give {kind.__name__} values{bounds} separated by commas, "
                f"e.g. {','.join(map(str, parameter.default))}",
            )
        elif parameter.choices is not None and kind is str:
            flags.DEFINE_enum(flag, parameter.default, parameter.choices, text)
        elif kind is bool:
            flags.DEFINE_boolean(flag, parameter.default, text)
        elif kind is int:
            flags.DEFINE_integer(
                flag, parameter.default, text, lower_bound=parameter.minimum, upper_bound=parameter.maximum
            )
        elif kind is float:
            flags.DEFINE_float(
                flag, parameter.default, text, lower_bound=parameter.minimum, upper_bound=parameter.maximum
            )
        else:
            flags.DEFINE_string(flag, parameter.default, text)
        if parameter.choices is not None and kind is not str:
            flags.register_validator(
                flag,
                lambda v, choices=parameter.choices: v in choices,
                message=f"--{flag}: choose one of {', '.join(map(str, parameter.choices))}",
            )
        RENAMED.update({old: flag for old in parameter.renamed_from})


def _valid_list(parameter, values: list[str]) -> bool:
    try:
        parameter.convert([parameter.value_type(v) for v in values])
    except ValueError:
        return False
    return True


def _increasing_fractions(values: list[str]) -> bool:
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        return False
    return all(0 < a < b < 1 for a, b in zip(numbers, numbers[1:])) and all(0 < n < 1 for n in numbers)


def method_arguments(method_name: str) -> dict:
    """Constructor arguments of ``method_name`` from the flags given on the command line (a method never reads flags).

    Hyper-parameters whose flag was not given keep the method's declared
    default. Another method's flag given with a value other than its default
    is an error naming it.
    """
    from keras_wsol.methods.hyperparameters import flag_name
    from keras_wsol.methods.registry import METHODS

    strays = [
        f"--{flag_name(other, p)}"
        for other, cls in METHODS.items()
        if other != method_name
        for p in cls.hyperparameters
        if flag_name(other, p)
        and not p.flag
        and FLAGS[flag_name(other, p)].present
        and FLAGS[flag_name(other, p)].value != FLAGS[flag_name(other, p)].default
    ]
    if strays:
        raise app.UsageError(f"{', '.join(strays)}: not a flag of --method={method_name}")
    arguments = {}
    for parameter in METHODS[method_name].hyperparameters:
        flag = flag_name(method_name, parameter)
        if flag is None or not FLAGS[flag].present:
            continue
        value = FLAGS[flag].value
        value = [parameter.value_type(v) for v in value] if parameter.is_tuple else value
        arguments[parameter.name] = value
    return arguments


def dataset_statistics(method_name: str) -> dict[str, str]:
    """``{argument: statistic}``: the hyper-parameters of ``method_name`` the CLI fills from the training data."""
    from keras_wsol.methods.registry import METHODS

    return {p.name: p.statistic for p in METHODS[method_name].hyperparameters if p.statistic}


def protocol():
    """The protocol flags as one :class:`keras_wsol.evaluation.Protocol`."""
    from keras_wsol.evaluation import Protocol

    return Protocol(FLAGS.cam_curve_interval, FLAGS.resize_length, FLAGS.fixed_threshold)


def define_train_flags() -> None:
    """Everything train.py needs."""
    from keras_wsol.distribute import STRATEGIES

    define_data_flags()
    define_model_flags()
    flags.DEFINE_string("workdir", "runs/default", "Output folder: checkpoints, logs, flags, evaluation.")
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "Delete the run already in --workdir (checkpoints, backup, logs, evaluation) and train anew. Without it, "
        "the same command resumes an interrupted run, evaluates a trained one, and leaves a finished one alone.",
    )
    flags.DEFINE_integer("epochs", 12, "Training epochs.", lower_bound=1)
    flags.DEFINE_enum("optimizer", "adam", ("adam", "adamw", "sgd"), "Optimizer.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.", lower_bound=0)
    flags.DEFINE_enum("lr_schedule", "cosine", ("constant", "cosine", "step"), "Learning-rate schedule over training.")
    flags.DEFINE_list(
        "lr_milestones",
        ["0.5", "0.75"],
        "--lr_schedule=step: the fractions of training where the learning rate is divided by 10.",
    )
    flags.register_validator(
        "lr_milestones",
        _increasing_fractions,
        message="--lr_milestones: give increasing fractions in (0, 1), e.g. 0.5,0.75",
    )
    flags.DEFINE_float(
        "weight_decay", 0.0, "Weight decay: decoupled (adamw, sgd) unless --coupled_weight_decay.", lower_bound=0
    )
    flags.DEFINE_boolean(
        "coupled_weight_decay",
        False,
        "Add weight_decay * w to the gradient (L2, PyTorch's SGD and "
        "Adam, the official codes' choice) instead of Keras' decoupled decay.",
    )
    flags.DEFINE_float(
        "momentum",
        0.9,
        "SGD momentum (PyTorch's form: the buffer holds gradients, not steps).",
        lower_bound=0,
        upper_bound=1,
    )
    flags.DEFINE_boolean("nesterov", False, "SGD with Nesterov momentum.")
    flags.DEFINE_float(
        "backbone_lr_multiplier",
        None,
        "The backbone's learning rate relative to the new layers', for "
        "every optimizer a method builds. Default: 0.1 with pretrained --weights (the papers: backbone "
        "1e-4, new layers 1e-3), 1 from random weights.",
        lower_bound=0,
    )
    flags.DEFINE_integer("seed", 0, "Random seed for weights, shuffling and augmentation.")
    flags.DEFINE_enum(
        "mixed_precision",
        "none",
        ("none", "mixed_float16", "mixed_bfloat16"),
        "Keras dtype policy (losses and CAM arithmetic stay float32).",
    )
    flags.DEFINE_enum(
        "strategy",
        "default",
        STRATEGIES,
        "tf.distribute strategy: default (one device), mirrored "
        "(all local GPUs), multi_worker (TF_CONFIG names the workers), tpu (--tpu).",
    )
    flags.DEFINE_string("tpu", None, "--strategy=tpu: the TPU name or address ('local' on a TPU VM).")
    flags.DEFINE_boolean(
        "sync_batchnorm",
        True,
        "With more than one replica, BatchNorm averages its statistics over "
        "the global batch (as on one device); --nosync_batchnorm keeps per-replica statistics.",
    )
    flags.DEFINE_boolean(
        "jit_compile",
        None,
        "XLA-compile the train, test and predict steps. Default: Keras' own choice (jit_compile='auto': on with one "
        "GPU when every layer supports it, off on the CPU and under tf.distribute); --jit_compile forces it on, "
        "--nojit_compile off.",
    )
    flags.DEFINE_enum(
        "select_checkpoint",
        "val_localization",
        ("val_loss", "val_localization"),
        "Which epoch checkpoints/best.keras keeps (and the final evaluation scores): the best validation "
        "localization (default; MaxBoxAccV2, PxAP for masks; each epoch's maps scored on the val split, logged as "
        "val_localization), as the protocol's code and the official MinMaxCAM code keep; or the lowest validation "
        "loss. A val split without boxes or masks falls back to val_loss unless this flag is given.",
    )
    flags.DEFINE_boolean("evaluate", True, "Evaluate the best checkpoint on the test split at the end.")
