"""The absl flag definitions of the train and evaluate commands (definitions only).

A method never reads these: the commands turn them into arguments
(:mod:`keras_wsol.cli.settings`); :mod:`keras_wsol.cli.parsing` checks a
command line and its flag files before absl reads them. Each
registered method's hyper-parameters become ``--<method>_<name>`` flags
(:mod:`keras_wsol.methods.hyperparameters`); a name a flag had in an earlier version fails with a
message naming the flag it became (:data:`RENAMED`, :data:`REMOVED`, CHANGELOG.md).

Example:
    >>> from absl import flags as absl_flags
    >>> define_data_flags(); "dataset" in absl_flags.FLAGS
    True
"""

import functools

from absl import flags

from keras_wsol.data.factory import DATASETS

FLAGS = flags.FLAGS


#: The flags that say which data a run uses: ``evaluate`` replays them from a workdir's flags.txt. Filled by
#: :func:`define_data_flags` with every flag it defines before the loader and protocol flags, so none is forgotten.
DATA_FLAGS: list[str] = []

#: ``{old name: (flag, version that renamed it)}`` for renamed flags: given, an old name is an error naming the new
#: one (:func:`keras_wsol.cli.parsing.parse_flags`). Filled by :func:`define_model_flags` (and evaluate's flags).
RENAMED: dict[str, tuple[str, str]] = {}
#: ``{old name: (what replaces it, version that removed it)}`` for flags that are gone without a one-to-one successor.
REMOVED: dict[str, tuple[str, str]] = {
    "ornet_stage": ("ORNet's stage 2 is its own method, --method=ornet_refine (flags --ornet_refine_*)", "0.3.0"),
}


def define_data_flags() -> None:
    """Dataset and evaluation-protocol flags."""
    if "dataset" in FLAGS:
        return
    before = set(FLAGS)
    _define_source_flags()
    _define_folder_flags()
    DATA_FLAGS.extend(sorted(set(FLAGS) - before))
    _define_loader_and_protocol_flags()


def _define_source_flags() -> None:
    """Which dataset, at which size: the synthetic benchmark's and TFDS's settings."""
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


def _define_folder_flags() -> None:
    """A benchmark metadata folder (``--dataset=folder``, ImageNet's val/test) and its masks."""
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


def _define_loader_and_protocol_flags() -> None:
    """How images are loaded and batched, and the protocol's settings."""
    flags.DEFINE_string(
        "cache",
        None,
        "Cache decoded images: 'memory' or a file prefix (train and val get their own suffix). Default: off.",
    )
    flags.DEFINE_integer("batch_size", 32, "Global batch size: split over the replicas of --strategy.", lower_bound=1)
    flags.DEFINE_float("cam_curve_interval", 0.01, "Spacing of the CAM thresholds (0.01 or 0.001).")
    flags.DEFINE_integer("resize_length", 224, "Score maps and boxes are evaluated at R x R.", lower_bound=8)
    flags.DEFINE_float("fixed_threshold", 0.2, "Also report Top-1/GT-known Loc at this fixed tau (older papers).")


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
    """``--<method_name>_<name>`` for each of ``method``'s hyper-parameters (earlier names: :data:`RENAMED`)."""
    from keras_wsol.methods.hyperparameters import flag_name

    for parameter in method.hyperparameters:
        flag = flag_name(method_name, parameter)
        if flag is None or flag in FLAGS:
            continue  # no flag, or a shared flag defined above
        _define_hyperparameter_flag(flag, parameter, f"{method.__name__}: {parameter.help}")
        RENAMED.update({old: (flag, version) for old, version in parameter.renamed_from})


def _define_hyperparameter_flag(flag: str, parameter, help_text: str) -> None:
    """One absl flag of ``parameter``'s type, bounds and choices."""
    kind = parameter.value_type
    text = f"{help_text} [default from: {parameter.source}]"
    bounds = {"lower_bound": parameter.minimum, "upper_bound": parameter.maximum}
    if parameter.is_tuple:
        flags.DEFINE_list(flag, [str(v) for v in parameter.default], text)
        limits = "".join(
            f" {op} {v:g}" for op, v in ((">=", parameter.minimum), ("<=", parameter.maximum)) if v is not None
        )
        flags.register_validator(
            flag,
            functools.partial(_valid_list, parameter),
            message=f"--{flag}: give {kind.__name__} values{limits} separated by commas, "
            f"e.g. {','.join(map(str, parameter.default))}",
        )
    elif parameter.choices is not None and kind is str:
        flags.DEFINE_enum(flag, parameter.default, parameter.choices, text)
    elif kind is bool:
        flags.DEFINE_boolean(flag, parameter.default, text)
    elif kind in (int, float):
        define = flags.DEFINE_integer if kind is int else flags.DEFINE_float
        define(flag, parameter.default, text, **bounds)
    else:
        flags.DEFINE_string(flag, parameter.default, text)
    if parameter.choices is not None and kind is not str:
        flags.register_validator(
            flag,
            lambda v, choices=parameter.choices: v in choices,
            message=f"--{flag}: choose one of {', '.join(map(str, parameter.choices))}",
        )


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


def define_train_flags() -> None:
    """Everything train.py needs."""
    define_data_flags()
    define_model_flags()
    _define_run_flags()
    _define_optimizer_flags()
    _define_execution_flags()


def _define_run_flags() -> None:
    """Where a run writes, how long it trains, which epoch it keeps."""
    flags.DEFINE_string("workdir", "runs/default", "Output folder: checkpoints, logs, flags, evaluation.")
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "Delete the run already in --workdir (checkpoints, backup, logs, evaluation) and train anew. Without it, "
        "the same command resumes an interrupted run, evaluates a trained one, and leaves a finished one alone.",
    )
    flags.DEFINE_integer("epochs", 12, "Training epochs.", lower_bound=1)
    flags.DEFINE_integer("seed", 0, "Random seed for weights, shuffling and augmentation.")
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


def _define_optimizer_flags() -> None:
    """The run's optimizer and schedule (a method's own defaults apply where a flag is not given)."""
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


def _define_execution_flags() -> None:
    """Precision, devices and compilation."""
    from keras_wsol.distribute import STRATEGIES

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


def define_evaluate_flags() -> None:
    """Everything evaluate.py needs: the data and protocol flags, and the command's own."""
    from keras_wsol.choices import DEFAULT_BOX_THRESHOLD, LOCALIZER_NAMES

    define_data_flags()
    if "scoremap_root" in FLAGS:
        return
    _define_evaluated_model_flags()
    _define_localizer_flags(LOCALIZER_NAMES)
    _define_export_flags()
    _define_image_flags(DEFAULT_BOX_THRESHOLD)
    _define_extra_score_flags()


def _define_evaluated_model_flags() -> None:
    """Which checkpoint, which split, where the results go."""
    flags.DEFINE_string("workdir", None, "A train.py workdir (its checkpoints/best.keras and flags.txt are used).")
    flags.DEFINE_string("checkpoint", None, "A .keras model file; default WORKDIR/checkpoints/best.keras.")
    flags.DEFINE_enum("split", "test", ("train", "val", "test"), "Split to evaluate.")
    flags.DEFINE_string("output_dir", None, "Where metrics.json and pictures go; default WORKDIR/eval_SPLIT.")


def _define_localizer_flags(localizer_names: tuple) -> None:
    """How score maps are made from the checkpoint."""
    flags.DEFINE_enum(
        "localizer",
        "cam",
        (*localizer_names, "all"),
        "How score maps are made from the checkpoint (keras_wsol.localizers); all: sweep them.",
    )
    flags.DEFINE_string(
        "layer",
        None,
        "Layer for the localizer: low, mid, high, cam (WSOLModel taps) or a layer name; several, comma-separated "
        "(mid,high): their maps fused by --layer_fusion; all: every tap, one at a time. Default: the classifier's "
        "layer.",
    )
    flags.DEFINE_enum(
        "layer_fusion",
        "max",
        ("max", "mean"),
        "--layer with several layers: per pixel the max or the mean of their min-max normalized maps.",
    )
    flags.DEFINE_enum("localizer_score", "logit", ("logit", "softmax"), "Score the localizer differentiates.")
    flags.DEFINE_enum(
        "guided",
        "default",
        ("default", "on", "off"),
        "Guided backprop through the ReLUs above the layer (default: on for bagcams only).",
    )


def _define_export_flags() -> None:
    """TF Serving export."""
    flags.DEFINE_bool(
        "export",
        False,
        "Export the checkpoint as a TF Serving SavedModel (keras_wsol.export) instead of "
        "evaluating: the box threshold is chosen on the val split; --localizer/--layer pick the score maps.",
    )
    flags.DEFINE_string("export_dir", "saved_models", "Export: TF Serving model base folder.")
    flags.DEFINE_string("model_name", None, "Export: model folder name; default the workdir's name.")
    flags.DEFINE_integer(
        "version", None, "Export: version number (must be free); default the next free one.", lower_bound=1
    )


def _define_extra_score_flags() -> None:
    """Threshold curves of other runs, faithfulness, inference settings, evaluator-only mode."""
    flags.DEFINE_list(
        "compare_workdirs",
        [],
        "Also draw these train.py workdirs' BoxAcc-versus-threshold curves "
        "(their own maps, single contour, IoU 0.5) with this one's: box_acc_compare.png and "
        "threshold_curves.json in the output folder. They must have been trained on the same data.",
    )
    flags.DEFINE_bool(
        "faithfulness",
        False,
        "Also score the maps' deletion and insertion AUC (keras_wsol.faithfulness; RISE, Petsiuk et al. 2018): "
        "the class probability as the map's pixels are removed or revealed, highest first.",
    )
    flags.DEFINE_integer("faithfulness_steps", 16, "--faithfulness: pixel steps from 0 to all.", lower_bound=1)
    flags.DEFINE_enum("faithfulness_fill", "blur", ("blur", "mean"), "--faithfulness: what a removed pixel shows.")
    flags.DEFINE_list(
        "inference_setting",
        [],
        "NAME=VALUE,...: score the checkpoint with these inference-only hyper-parameters changed (e.g. "
        "fusion=min; training does not depend on them; the README's method tables mark them); the default "
        "output folder gets their names.",
    )
    flags.DEFINE_string("scoremap_root", None, "Evaluator-only mode: folder of <image_id>.npy score maps.")
    flags.DEFINE_string("output_json", None, "Evaluator-only mode: where to write the metrics.")


def _define_image_flags(default_box_threshold: float) -> None:
    """Localizing image files (a checkpoint or an ImageNet classifier)."""
    flags.DEFINE_list(
        "images",
        [],
        "Localize these image files, folders of images or glob patterns (any size; JPEG, PNG, GIF, BMP): print "
        "the top-5 classes and a box, write an overlay PNG each (sized to the photo; a repeated name gets _2).",
    )
    flags.DEFINE_enum(
        "imagenet",
        None,
        ("efficientnet_lite0",),
        "--images: an ImageNet classifier with offline "
        "weights (keras_wsol.pretrained) instead of a checkpoint; --image_size defaults to 224 for it.",
    )
    flags.DEFINE_bool("imagenet_surgery", False, "--imagenet: run the last stride-2 stage at stride 1 (finer maps).")
    flags.DEFINE_float(
        "box_threshold",
        None,
        f"The tau at which boxes are drawn from a min-max normalized map: --images (default {default_box_threshold}, "
        "CAM's fixed 20%, Zhou et al. 2016) and --export (default: the tau of the best MaxBoxAcc on the val split). "
        "The protocol's scores try every tau; --fixed_threshold adds one to their report.",
        lower_bound=0,
        upper_bound=0.999,
    )
    RENAMED["export_threshold"] = ("box_threshold", "0.2.0")
