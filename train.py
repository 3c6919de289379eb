"""Train a WSOL method with model.fit, then evaluate it under the protocol.

    python train.py                                  # CAM on the offline synthetic benchmark
    python train.py --method=cam --backbone=mobilenet_v2 --image_size=224 --workdir=runs/mnv2
    python train.py --flagfile=runs/default/flags.txt   # repeat a run (or resume a killed one)
    python train.py --dataset=cub --tfds_data_dir=DIR --backbone=vgg16 --weights=imagenet --image_size=224
    python train.py --dataset=folder --data_root=IMAGES --metadata_root=metadata/CUB --image_size=224
    python train.py --strategy=mirrored --batch_size=256 ...   # global batch, split over the GPUs
    # ORNet: an evaluator, stage 1, then stage 2 (three workdirs)
    python train.py --method=cam --workdir=runs/evaluator
    python train.py --method=ornet --workdir=runs/ornet_stage1
    python train.py --method=ornet --ornet_stage=2 --workdir=runs/ornet_stage2 \
        --stage1_checkpoint=runs/ornet_stage1/checkpoints/best.keras \
        --evaluator_checkpoint=runs/evaluator/checkpoints/best.keras

Writes to --workdir: flags.txt, checkpoints/{best,last}.keras, log.csv,
tensorboard/ (with CAM overlays), backup/ (resume), eval_test/ (metrics.json,
pictures). Run the same command again after a crash and it continues from
the last finished epoch.
"""

from __future__ import annotations

import os
import sys

from absl import app

import flags as wsol_flags

wsol_flags.define_train_flags()
FLAGS = wsol_flags.FLAGS


def build_optimizer(steps: int, kind: str = "same", learning_rate: float | None = None):
    """The optimizer of --optimizer (or ``kind``) with the --lr_schedule over ``steps`` updates."""
    import keras

    from keras_wsol import optimizers

    kind = FLAGS.optimizer if kind == "same" else kind
    lr = FLAGS.learning_rate if learning_rate is None else learning_rate
    if FLAGS.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))
    elif FLAGS.lr_schedule == "step":
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(steps * 0.5), int(steps * 0.75)], [lr, lr * 0.1, lr * 0.01]
        )
    decay = dict(weight_decay=FLAGS.weight_decay or None, coupled_weight_decay=FLAGS.coupled_weight_decay)
    if kind == "sgd":
        return optimizers.SGD(lr, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov, **decay)
    if kind == "adamw":
        return optimizers.AdamW(lr, **{**decay, "weight_decay": FLAGS.weight_decay})
    return optimizers.Adam(lr, **decay)


def load_checkpoint(flag: str):
    """The .keras model named by ``--flag``; a missing flag or unreadable file is an error naming it."""
    import keras

    import keras_wsol.methods  # noqa: F401  (registers the classes a checkpoint names)

    path = FLAGS[flag].value
    if not path:
        raise app.UsageError(f"--{flag} is required with --method=ornet --ornet_stage=2")
    if not os.path.isfile(path):
        raise app.UsageError(f"--{flag}={path}: no such file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # a damaged or foreign file raises many types
        raise app.UsageError(f"--{flag}={path}: cannot load it as a Keras model ({type(error).__name__}: {error})") from None


def build_refinement(architecture: dict, kwargs: dict):
    """ORNet stage 2: the stage-1 model of --stage1_checkpoint refined against --evaluator_checkpoint.

    The generator's shape comes from the stage-1 model unless given on the
    command line; every other architecture flag must match it.
    """
    from keras_wsol.methods import ORNet

    for flag, argument in (("ornet_tap", "tap"), ("generator_channels", "generator_channels")):
        if not FLAGS[flag].present:
            kwargs.pop(argument)
    stage1, evaluator = load_checkpoint("stage1_checkpoint"), load_checkpoint("evaluator_checkpoint")
    try:
        return ORNet.refine(stage1, evaluator, **architecture, **kwargs)
    except ValueError as error:
        raise app.UsageError(f"--stage1_checkpoint={FLAGS.stage1_checkpoint} "
                             f"--evaluator_checkpoint={FLAGS.evaluator_checkpoint}: {error}") from None


def backbone_lr_multiplier() -> float:
    """--backbone_lr_multiplier, or the papers' 0.1 for pretrained --weights and 1 from random weights."""
    if FLAGS.backbone_lr_multiplier is not None:
        return FLAGS.backbone_lr_multiplier
    return 1.0 if FLAGS.weights in ("none", "") else 0.1


def write_flagfile(path: str) -> None:
    """Save the non-default flags of this run so it can be repeated with --flagfile."""
    lines = [f.serialize() for module in (sys.argv[0], "flags") for f in FLAGS.get_flags_for_module(module)]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(sorted(set(lines))) + "\n")
    os.replace(tmp, path)


def build_model(train, strategy):
    """The --method model (or ORNet's stage-2 refinement), built in ``strategy``'s scope."""
    from keras_wsol.data import pipeline
    from keras_wsol.methods import get_method

    kwargs = wsol_flags.method_kwargs(FLAGS.method)
    if FLAGS.method == "complementary" and train.indexable:
        # Hide-and-seek fills hidden patches with the dataset's mean pixel (a stream keeps the ImageNet mean).
        kwargs["hide_fill"] = pipeline.mean_pixel(train, FLAGS.image_size)
    architecture = dict(num_classes=train.num_classes, backbone=FLAGS.backbone, image_size=FLAGS.image_size,
                        head_channels=FLAGS.head_channels)
    kwargs["backbone_lr_multiplier"] = backbone_lr_multiplier()
    refining = FLAGS.method == "ornet" and FLAGS.ornet_stage == 2
    if not refining and (FLAGS.stage1_checkpoint or FLAGS.evaluator_checkpoint):
        raise app.UsageError("--stage1_checkpoint and --evaluator_checkpoint are for --method=ornet --ornet_stage=2")
    with strategy.scope():
        try:
            if refining:
                return build_refinement(architecture, kwargs)
            return get_method(FLAGS.method)(weights=FLAGS.weights, **architecture, **kwargs)
        except ValueError as error:
            raise app.UsageError(f"--method={FLAGS.method}: {error}") from None


def training_data(model, train, strategy):
    """``(dataset, steps per epoch)`` for ``fit``."""
    import tensorflow as tf

    from keras_wsol.data import pipeline

    replicas = strategy.num_replicas_in_sync
    try:
        if model.uses_class_sets:
            # N classes x S images a batch; --batch_size is for evaluation only.
            if FLAGS.sets_per_batch % replicas:
                raise ValueError(f"--sets_per_batch={FLAGS.sets_per_batch} must be a multiple of the {replicas} "
                                 "replicas, so each replica gets whole class sets")
            batch = FLAGS.set_size * FLAGS.sets_per_batch
            ds = pipeline.class_set_dataset(train, FLAGS.set_size, FLAGS.sets_per_batch, FLAGS.image_size, FLAGS.seed)
        else:
            if FLAGS.batch_size % replicas:
                raise ValueError(f"--batch_size={FLAGS.batch_size} (global) must be a multiple of the {replicas} replicas")
            batch = FLAGS.batch_size
            ds = pipeline.training_dataset(train, batch, FLAGS.image_size, FLAGS.seed, cache=_cache("train"))
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    steps = len(train) // batch
    if steps == 0:
        raise app.UsageError(f"the training batch ({batch} images) is larger than the training split ({len(train)})")
    options = tf.data.Options()
    # Indexable sources: every worker runs the pipeline and keeps its share of each global batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if train.indexable else tf.data.experimental.AutoShardPolicy.AUTO)
    return ds.with_options(options), steps


def _cache(split: str) -> str | None:
    """The --cache value for one split: 'memory', or the file prefix with the split's name."""
    if not FLAGS.cache or FLAGS.cache == "memory":
        return FLAGS.cache
    return f"{FLAGS.cache}_{split}"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import shutil

    import keras

    from keras_wsol import distribute, reporting
    from keras_wsol.callbacks import AtomicCheckpoint, CAMOverlayLogger, StopOnNonFiniteLoss
    from keras_wsol.data import pipeline, synthetic

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    try:
        strategy = distribute.build_strategy(FLAGS.strategy, FLAGS.tpu)
    except ValueError as error:
        raise app.UsageError(f"--strategy={FLAGS.strategy}: {error}") from None
    chief = distribute.is_chief(strategy)
    # Other workers of a multi-worker run write to a scratch folder of their own, removed at the end.
    workdir = FLAGS.workdir if chief else os.path.join(FLAGS.workdir, f".worker{distribute.worker_id()}")
    os.makedirs(workdir, exist_ok=True)
    if chief:
        write_flagfile(os.path.join(workdir, "flags.txt"))

    data = {split: wsol_flags.load_split(split) for split in synthetic.SPLITS}
    train = data["train"]
    model = build_model(train, strategy)
    if strategy.num_replicas_in_sync > 1 and FLAGS.sync_batchnorm:
        distribute.synchronize_batch_norm(model)
    train_ds, steps_per_epoch = training_data(model, train, strategy)
    val_ds = pipeline.eval_dataset(data["val"], FLAGS.batch_size, FLAGS.image_size, cache=_cache("val"))

    with strategy.scope():
        compile_kwargs = {}
        if FLAGS.method == "minmaxcam" and (FLAGS.stage2_optimizer == "sgd" or FLAGS.stage2_learning_rate is not None):
            compile_kwargs["stage2_optimizer"] = build_optimizer(
                FLAGS.epochs * steps_per_epoch, FLAGS.stage2_optimizer, FLAGS.stage2_learning_rate)
        learning_rate = FLAGS.refine_learning_rate if FLAGS.method == "ornet" and FLAGS.ornet_stage == 2 else None
        model.compile(optimizer=build_optimizer(FLAGS.epochs * steps_per_epoch, learning_rate=learning_rate),
                      jit_compile=FLAGS.jit_compile, **compile_kwargs)
    ckpt = os.path.join(workdir, "checkpoints")
    callbacks = [
        StopOnNonFiniteLoss(ckpt),  # first: nothing saves NaN weights
        keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
        AtomicCheckpoint(os.path.join(ckpt, "best.keras"), monitor="val_loss", mode="min"),
        AtomicCheckpoint(os.path.join(ckpt, "last.keras")),
        keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
        CAMOverlayLogger(os.path.join(workdir, "tensorboard"), pipeline.first_images(data["val"], 8, FLAGS.image_size),
                         data["val"].labels[:8]),
    ]
    try:
        model.fit(train_ds, validation_data=val_ds, epochs=FLAGS.epochs, callbacks=callbacks, verbose=2,
                  steps_per_epoch=steps_per_epoch if model.uses_class_sets else None)  # class sets never end
    except FloatingPointError as error:
        sys.exit(f"train.py: {error}")
    if not chief:
        shutil.rmtree(workdir, ignore_errors=True)
        return

    if FLAGS.evaluate:
        best = keras.models.load_model(os.path.join(ckpt, "best.keras"))
        out = os.path.join(workdir, "eval_test")
        results = reporting.evaluate_split(
            best,
            data["test"],
            out,
            cam_curve_interval=FLAGS.cam_curve_interval,
            resize_length=FLAGS.resize_length,
            fixed_threshold=FLAGS.fixed_threshold,
        )
        print(f"\nTest split ({len(data['test'])} images), {FLAGS.method} / {FLAGS.backbone}:")
        print(reporting.format_table(results))
        print(f"\nmetrics and pictures: {out}")


if __name__ == "__main__":
    app.run(main)
