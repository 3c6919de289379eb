"""Train a WSOL method with model.fit, then evaluate it under the protocol.

    python train.py                                  # CAM on the offline synthetic benchmark
    python train.py --method=cam --backbone=mobilenet_v2 --image_size=224 --workdir=runs/mnv2
    python train.py --flagfile=runs/default/flags.txt   # repeat a run
    # ORNet: an evaluator, stage 1, then stage 2 (three workdirs)
    python train.py --method=cam --workdir=runs/evaluator
    python train.py --method=ornet --workdir=runs/ornet_stage1
    python train.py --method=ornet --ornet_stage=2 --workdir=runs/ornet_stage2 \
        --stage1_checkpoint=runs/ornet_stage1/checkpoints/best.keras \
        --evaluator_checkpoint=runs/evaluator/checkpoints/best.keras

Writes to --workdir: flags.txt, checkpoints/{best,last}.keras, log.csv,
tensorboard/ (with CAM overlays), backup/ (resume), eval_test/ (metrics.json,
pictures).
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

    kind = FLAGS.optimizer if kind == "same" else kind
    lr = FLAGS.learning_rate if learning_rate is None else learning_rate
    if FLAGS.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))
    elif FLAGS.lr_schedule == "step":
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            [int(steps * 0.5), int(steps * 0.75)], [lr, lr * 0.1, lr * 0.01]
        )
    if kind == "sgd":
        return keras.optimizers.SGD(lr, momentum=FLAGS.momentum, weight_decay=FLAGS.weight_decay or None)
    if kind == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=FLAGS.weight_decay)
    return keras.optimizers.Adam(lr)


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


def write_flagfile(path: str) -> None:
    """Save the non-default flags of this run so it can be repeated with --flagfile."""
    lines = [f.serialize() for module in (sys.argv[0], "flags") for f in FLAGS.get_flags_for_module(module)]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(sorted(set(lines))) + "\n")
    os.replace(tmp, path)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    import keras

    from keras_wsol import reporting
    from keras_wsol.callbacks import AtomicCheckpoint, CAMOverlayLogger
    from keras_wsol.data import pipeline, synthetic
    from keras_wsol.methods import get_method

    keras.utils.set_random_seed(FLAGS.seed)
    if FLAGS.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
    workdir = FLAGS.workdir
    os.makedirs(workdir, exist_ok=True)
    write_flagfile(os.path.join(workdir, "flags.txt"))

    data = {split: wsol_flags.load_split(split) for split in synthetic.SPLITS}
    train = data["train"]
    kwargs = wsol_flags.method_kwargs(FLAGS.method)
    if FLAGS.method == "complementary":
        # Hide-and-seek fills hidden patches with the dataset's mean pixel.
        kwargs["hide_fill"] = tuple(float(v) for v in train.images.reshape(-1, 3).mean(axis=0))
    architecture = dict(num_classes=FLAGS.num_classes, backbone=FLAGS.backbone, image_size=FLAGS.image_size,
                        head_channels=FLAGS.head_channels)
    refining = FLAGS.method == "ornet" and FLAGS.ornet_stage == 2
    if not refining and (FLAGS.stage1_checkpoint or FLAGS.evaluator_checkpoint):
        raise app.UsageError("--stage1_checkpoint and --evaluator_checkpoint are for --method=ornet --ornet_stage=2")
    try:
        if refining:
            model = build_refinement(architecture, kwargs)
        else:
            model = get_method(FLAGS.method)(weights=FLAGS.weights, **architecture, **kwargs)
    except ValueError as error:
        raise app.UsageError(f"--method={FLAGS.method}: {error}") from None
    if model.uses_class_sets:
        # N classes x S images a batch; --batch_size is for evaluation only.
        train_batch = FLAGS.set_size * FLAGS.sets_per_batch
        try:
            train_ds = pipeline.class_set_dataset(train.images, train.labels, FLAGS.set_size, FLAGS.sets_per_batch, FLAGS.seed)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    else:
        train_batch = FLAGS.batch_size
        train_ds = pipeline.training_dataset(train.images, train.labels, FLAGS.batch_size, FLAGS.seed)
    steps_per_epoch = len(train.labels) // train_batch
    if steps_per_epoch == 0:
        raise app.UsageError(f"the training batch ({train_batch} images) is larger than the training split ({len(train.labels)})")
    val_ds = pipeline.eval_dataset(data["val"].images, data["val"].labels, FLAGS.batch_size)

    compile_kwargs = {}
    if FLAGS.method == "minmaxcam" and (FLAGS.stage2_optimizer == "sgd" or FLAGS.stage2_learning_rate is not None):
        compile_kwargs["stage2_optimizer"] = build_optimizer(
            FLAGS.epochs * steps_per_epoch, FLAGS.stage2_optimizer, FLAGS.stage2_learning_rate)
    learning_rate = FLAGS.refine_learning_rate if refining else None
    model.compile(optimizer=build_optimizer(FLAGS.epochs * steps_per_epoch, learning_rate=learning_rate),
                  jit_compile=FLAGS.jit_compile, **compile_kwargs)
    ckpt = os.path.join(workdir, "checkpoints")
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(workdir, "backup")),
        AtomicCheckpoint(os.path.join(ckpt, "best.keras"), monitor="val_loss", mode="min"),
        AtomicCheckpoint(os.path.join(ckpt, "last.keras")),
        keras.callbacks.CSVLogger(os.path.join(workdir, "log.csv"), append=True),
        keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
        CAMOverlayLogger(os.path.join(workdir, "tensorboard"), data["val"].images[:8], data["val"].labels[:8]),
    ]
    model.fit(train_ds, validation_data=val_ds, epochs=FLAGS.epochs, callbacks=callbacks, verbose=2,
              steps_per_epoch=steps_per_epoch if model.uses_class_sets else None)  # class sets never end

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
        print(f"\nTest split ({len(data['test'].labels)} images), {FLAGS.method} / {FLAGS.backbone}:")
        print(reporting.format_table(results))
        print(f"\nmetrics and pictures: {out}")


if __name__ == "__main__":
    app.run(main)
