"""absl flags shared by train.py and evaluate.py.

A method never reads these: the scripts turn them into arguments.

Example:
    >>> from absl import flags as absl_flags
    >>> define_data_flags(); "dataset" in absl_flags.FLAGS
    True
"""

import os

from absl import app, flags

from keras_wsol.backbones import BACKBONES
from keras_wsol.distribute import STRATEGIES
from keras_wsol.methods.registry import METHODS

DATASETS = ("synthetic", "cub", "folder", "imagenet")
FLAGS = flags.FLAGS


def define_data_flags() -> None:
    """Dataset and evaluation-protocol flags."""
    if "dataset" in FLAGS:
        return
    flags.DEFINE_enum("dataset", "synthetic", DATASETS, "Dataset source: the offline synthetic benchmark, CUB-200-2011 "
                      "through TFDS, a benchmark metadata folder, or ImageNet (TFDS training images, metadata-folder "
                      "val/test boxes).")
    flags.DEFINE_integer("image_size", 96, "Square input side in pixels (224 for the papers' settings).", lower_bound=32)
    flags.DEFINE_integer("num_classes", 8, "Synthetic benchmark: number of classes (other sources: from the data).",
                         lower_bound=2)
    flags.DEFINE_integer("train_images_per_class", 120, "Synthetic benchmark: training images per class.", lower_bound=1)
    flags.DEFINE_integer("eval_images_per_class", 40, "Synthetic benchmark: val/test images per class.", lower_bound=1)
    flags.DEFINE_integer("data_seed", 0, "Synthetic benchmark: generator seed; cub: which training images are "
                         "held out for val.")
    flags.DEFINE_string("tfds_data_dir", None, "cub, imagenet: TFDS data directory (default: TFDS's own).")
    flags.DEFINE_string("tfds_manual_dir", None, "cub: folder holding CUB_200_2011.tgz and segmentations.tgz (else "
                        "TFDS downloads them); imagenet: folder holding ILSVRC2012_img_train.tar and "
                        "ILSVRC2012_img_val.tar.")
    flags.DEFINE_integer("cub_val_per_class", 5, "cub: training images per class held out as the val split "
                         "(the protocol's CUBV2 val has 5 per class).", lower_bound=1)
    flags.DEFINE_string("data_root", None, "folder, imagenet: root of the images named in image_ids.txt.")
    flags.DEFINE_string("metadata_root", None, "folder: benchmark metadata with train/val/test subfolders "
                        "(imagenet: val/test); evaluator-only mode: that root or one split's folder.")
    flags.DEFINE_string("mask_root", None, "Root of the mask PNGs that localization.txt names (OpenImages).")
    flags.DEFINE_string("mask_metadata_root", None, "folder: optional second metadata root whose split folders list "
                        "masks for a box dataset's images (e.g. CUB segmentations), for PxAP.")
    flags.DEFINE_string("cache", None, "Cache decoded images: 'memory' or a file prefix (train and val get their "
                        "own suffix). Default: off.")
    flags.DEFINE_integer("batch_size", 32, "Global batch size: split over the replicas of --strategy.", lower_bound=1)
    flags.DEFINE_float("cam_curve_interval", 0.01, "Spacing of the CAM thresholds (0.01 or 0.001).")
    flags.DEFINE_integer("resize_length", 224, "Score maps and boxes are evaluated at R x R.", lower_bound=8)
    flags.DEFINE_float("fixed_threshold", 0.2, "Also report Top-1/GT-known Loc at this fixed tau (older papers).")


# The data flags a run's dataset depends on (evaluate.py takes them from the run's flags.txt).
DATA_FLAGS = ("dataset", "image_size", "num_classes", "train_images_per_class", "eval_images_per_class", "data_seed",
              "tfds_data_dir", "tfds_manual_dir", "cub_val_per_class", "data_root", "metadata_root", "mask_root",
              "mask_metadata_root")


def _need(*names: str) -> None:
    missing = [f"--{n}" for n in names if not FLAGS[n].value]
    if missing:
        raise app.UsageError(f"--dataset={FLAGS.dataset} needs {' and '.join(missing)}")


def _metadata_split(split: str, localization: bool = True):
    from keras_wsol.data import metadata, splits

    _need("data_root", "metadata_root")
    mask_split = os.path.join(FLAGS.mask_metadata_root, split) if FLAGS.mask_metadata_root else None
    try:
        return splits.metadata_split(FLAGS.data_root, os.path.join(FLAGS.metadata_root, split), FLAGS.mask_root,
                                     mask_split, localization=localization)
    except metadata.MetadataError as error:
        raise app.UsageError(f"--metadata_root={FLAGS.metadata_root}: {error}") from None


def load_split(split: str):
    """The ``split`` (train, val or test) of the dataset the data flags describe, as a :class:`Split`.

    A missing folder or malformed file is an error naming the flag and file.
    """
    from keras_wsol.data import synthetic, tfds_sources

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
            root = tfds_sources.prepare_cub(FLAGS.tfds_data_dir, FLAGS.tfds_manual_dir, FLAGS.cub_val_per_class,
                                            FLAGS.data_seed)
        except Exception as error:  # TFDS raises many kinds (network, checksums, missing manual files)
            raise app.UsageError(f"--dataset={FLAGS.dataset}: TFDS could not prepare {name} in --tfds_data_dir="
                                 f"{FLAGS.tfds_data_dir} (--tfds_manual_dir={FLAGS.tfds_manual_dir}): "
                                 f"{type(error).__name__}: {error}") from None
        return tfds_sources.cub_split(root, split)
    # folder (every split), imagenet (val, test): the benchmark's metadata; training needs no boxes.
    return _metadata_split(split, localization=split != "train")


def define_model_flags() -> None:
    """Method and backbone flags."""
    if "method" in FLAGS:
        return
    flags.DEFINE_enum("method", "cam", sorted(METHODS), "WSOL method.")
    flags.DEFINE_enum("backbone", "small", BACKBONES, "Backbone.")
    flags.DEFINE_string("weights", "none", "Backbone weights: none, imagenet (needs the network) or a .weights.h5 path.")
    flags.DEFINE_integer("head_channels", 0, "Width of an extra 3x3 conv before GAP (1024 for VGG16 CAM); 0 for none.", lower_bound=0)
    # Class-set batches (MinMaxCAM; CAMs2i's inter-sample module).
    flags.DEFINE_integer("set_size", 5, "Images per class set, S (class-set methods).", lower_bound=2)
    flags.DEFINE_integer("sets_per_batch", 5, "Class sets per batch, N; the training batch is N x S "
                         "(official MinMaxCAM code: 5; paper: 12).", lower_bound=1)
    # MinMaxCAM.
    flags.DEFINE_float("lambda_crr", 1.0, "MinMaxCAM: weight of Common Region Regularization (Eq. 5).", lower_bound=0)
    flags.DEFINE_float("lambda_frr", 1.0, "MinMaxCAM: weight of Full Region Regularization (Eq. 5); 10 in a later "
                       "reimplementation.", lower_bound=0)
    flags.DEFINE_enum("stage2_optimizer", "same", ("same", "sgd"),
                      "MinMaxCAM stage II optimizer: a fresh copy of --optimizer, or SGD with --momentum (the official code "
                      "steps both stages with SGD, so a loss's size sets its step).")
    flags.DEFINE_float("stage2_learning_rate", None, "MinMaxCAM stage II learning rate; default --learning_rate.")
    # CAMs2i.
    flags.DEFINE_enum("s2_tap", "mid", ("low", "mid"), "CAMs2i: backbone tap where the second classifier S2 is "
                      "inserted (the max-pools after it run with stride 1).")
    flags.DEFINE_integer("classifier_channels", 1024, "CAMs2i: width of the two 1x1 convs of each classifier.",
                         lower_bound=1)
    flags.DEFINE_integer("ramp_steps", 300, "CAMs2i: steps over which w0 of Eq. 7 rises from 0 to 1 (0: 1 from "
                         "the start).", lower_bound=0)
    flags.DEFINE_boolean("inter_module", True, "CAMs2i: add the inter-sample criterion (Eq. 8-10; needs class-set "
                         "batches); --nointer_module trains CAMsIntra.")
    flags.DEFINE_enum("inter_net", "small", ("small", "low", "mid", "high"), "CAMs2i: f of Eq. 9, a small conv net of "
                      "its own or GAP of a backbone tap.")
    flags.DEFINE_integer("inter_dim", 128, "CAMs2i: embedding width of the small f.", lower_bound=1)
    # Complementary regions (Babar & Das).
    flags.DEFINE_list("patch_sizes", ["16", "32", "44", "56"], "Complementary: hide-and-seek patch sizes at 224 px, "
                      "one drawn per image ('mixed'); give one for a fixed size. Scaled below 224 px.")
    flags.register_validator("patch_sizes", lambda sizes: bool(sizes) and all(s.isdigit() and int(s) > 0 for s in sizes),
                             message="--patch_sizes: give positive integers, e.g. 16,32,44,56")
    flags.DEFINE_float("hide_prob", 0.5, "Complementary: probability a patch is hidden in X.", lower_bound=0, upper_bound=1)
    flags.DEFINE_float("beta", 50.0, "Complementary: weight of the attention-based fusion loss (Eq. 15); 0 drops it.",
                       lower_bound=0)
    flags.DEFINE_boolean("use_caam", True, "Complementary: train with CAAM (Eq. 1-6).")
    flags.DEFINE_boolean("use_ssam", True, "Complementary: train with SSAM (Eq. 7-8).")
    flags.DEFINE_boolean("attention_at_inference", False, "Complementary: keep CAAM and SSAM on at inference "
                         "(the paper switches them off).")
    # ORNet: stage 1 (generator) and stage 2 (refinement against an evaluator), two train.py runs.
    flags.DEFINE_integer("ornet_stage", 1, "ORNet: 1 trains the generator with the classifier; 2 refines a stage-1 "
                         "model (--stage1_checkpoint) against a frozen classifier (--evaluator_checkpoint).",
                         lower_bound=1, upper_bound=2)
    flags.DEFINE_string("stage1_checkpoint", None, "ORNet stage 2: the stage-1 .keras model it starts from.")
    flags.DEFINE_string("evaluator_checkpoint", None, "ORNet stage 2: a trained classifier .keras (e.g. a "
                        "--method=cam run's checkpoints/best.keras), frozen.")
    flags.DEFINE_enum("ornet_tap", "low", ("low", "mid"), "ORNet: backbone tap the generator reads (F1/F2 split).")
    flags.DEFINE_integer("generator_channels", 64, "ORNet: width of the generator's encoder-decoder.", lower_bound=1)
    flags.DEFINE_float("ornet_alpha", 1.5, "ORNet stage 2: weight of the weighted entropy loss (Eq. 10); 0 drops it.",
                       lower_bound=0)
    flags.DEFINE_float("ornet_beta", 0.02, "ORNet stage 2: weight of the area loss (Eq. 10); 0 drops it.", lower_bound=0)
    flags.DEFINE_float("entropy_mu", 0.5, "ORNet stage 2: mean of the entropy weighting (Eq. 15).")
    flags.DEFINE_float("entropy_sigma", 0.1, "ORNet stage 2: width of the entropy weighting (Eq. 15).", lower_bound=1e-6)
    flags.DEFINE_boolean("attentive_erasing", True, "ORNet stage 2: attentive erasing in training (Section 3.2.2).")
    flags.DEFINE_float("erase_threshold", 0.5, "ORNet stage 2: map values above this inside the rectangle may be "
                       "erased.", lower_bound=0, upper_bound=1)
    flags.DEFINE_list("erase_size", ["0.25", "0.75"], "ORNet stage 2: range of the erasing rectangle's height and "
                      "width, as fractions of the map side.")
    flags.register_validator("erase_size", _is_fraction_range,
                             message="--erase_size: give two fractions LOW,HIGH with 0 < LOW <= HIGH <= 1")
    flags.DEFINE_float("erase_prob", 0.5, "ORNet stage 2: probability an erasing candidate is dropped.",
                       lower_bound=0, upper_bound=1)
    flags.DEFINE_boolean("train_shallow", True, "ORNet stage 2: step the shallow layers F1 with the generator "
                         "(Eq. 7-8); --notrain_shallow steps the generator alone.")
    flags.DEFINE_float("refine_learning_rate", 1e-4, "ORNet stage 2: peak learning rate (the paper's 1e-4; "
                       "--learning_rate is stage 1's).", lower_bound=0)


def _is_fraction_range(values: list[str]) -> bool:
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        return False
    return 0 < low <= high <= 1


# The flags each method takes as constructor arguments, flag -> argument (a method never reads flags itself).
METHOD_FLAGS = {
    "cams2i": {name: name for name in ("s2_tap", "classifier_channels", "ramp_steps", "inter_module", "inter_net",
                                       "inter_dim")},
    "complementary": {name: name for name in ("patch_sizes", "hide_prob", "beta", "use_caam", "use_ssam",
                                              "attention_at_inference")},
    "minmaxcam": {name: name for name in ("set_size", "lambda_crr", "lambda_frr")},
    "ornet": {"ornet_stage": "stage", "ornet_tap": "tap", "generator_channels": "generator_channels",
              "ornet_alpha": "alpha", "ornet_beta": "beta", "entropy_mu": "mu", "entropy_sigma": "sigma",
              "attentive_erasing": "erasing", "erase_threshold": "erase_threshold", "erase_size": "erase_size",
              "erase_prob": "erase_prob", "train_shallow": "train_shallow"},
}
# List flags whose entries are numbers.
_NUMBER_LISTS = {"patch_sizes": int, "erase_size": float}


def method_kwargs(method: str) -> dict:
    """Constructor arguments of ``method`` from its flags."""
    kwargs = {}
    for flag, argument in METHOD_FLAGS.get(method, {}).items():
        value = FLAGS[flag].value
        kwargs[argument] = tuple(_NUMBER_LISTS[flag](v) for v in value) if flag in _NUMBER_LISTS else value
    return kwargs


def define_train_flags() -> None:
    """Everything train.py needs."""
    define_data_flags()
    define_model_flags()
    flags.DEFINE_string("workdir", "runs/default", "Output folder: checkpoints, logs, flags, evaluation.")
    flags.DEFINE_integer("epochs", 12, "Training epochs.", lower_bound=1)
    flags.DEFINE_enum("optimizer", "adam", ("adam", "adamw", "sgd"), "Optimizer.")
    flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.", lower_bound=0)
    flags.DEFINE_enum("lr_schedule", "cosine", ("constant", "cosine", "step"), "Learning-rate schedule over training.")
    flags.DEFINE_float("weight_decay", 0.0, "Weight decay: decoupled (adamw, sgd) unless --coupled_weight_decay.",
                       lower_bound=0)
    flags.DEFINE_boolean("coupled_weight_decay", False, "Add weight_decay * w to the gradient (L2, PyTorch's SGD and "
                         "Adam, the official codes' choice) instead of Keras' decoupled decay.")
    flags.DEFINE_float("momentum", 0.9, "SGD momentum (PyTorch's form: the buffer holds gradients, not steps).",
                       lower_bound=0, upper_bound=1)
    flags.DEFINE_boolean("nesterov", False, "SGD with Nesterov momentum (the official MinMaxCAM code).")
    flags.DEFINE_float("backbone_lr_multiplier", None, "The backbone's learning rate relative to the new layers', for "
                       "every optimizer a method builds. Default: 0.1 with pretrained --weights (the papers: backbone "
                       "1e-4, new layers 1e-3), 1 from random weights.", lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Random seed for weights, shuffling and augmentation.")
    flags.DEFINE_enum("mixed_precision", "none", ("none", "mixed_float16", "mixed_bfloat16"), "Keras dtype policy "
                      "(losses and CAM arithmetic stay float32).")
    flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy: default (one device), mirrored "
                      "(all local GPUs), multi_worker (TF_CONFIG names the workers), tpu (--tpu).")
    flags.DEFINE_string("tpu", None, "--strategy=tpu: the TPU name or address ('local' on a TPU VM).")
    flags.DEFINE_boolean("sync_batchnorm", True, "With more than one replica, BatchNorm averages its statistics over "
                         "the global batch (as on one device); --nosync_batchnorm keeps per-replica statistics.")
    flags.DEFINE_boolean("jit_compile", False, "XLA-compile the train step.")
    flags.DEFINE_boolean("evaluate", True, "Evaluate the best checkpoint on the test split at the end.")
