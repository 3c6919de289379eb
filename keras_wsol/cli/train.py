"""The train command: flags -> data -> method -> ``model.fit`` -> checkpoints -> test evaluation.

Run it as ``python train.py`` (a checkout), ``wsol-train`` (installed) or
``python -m keras_wsol.cli.train``; the root ``train.py`` documents the flags
with examples. Writes to --workdir: flags.txt, checkpoints/{best,last}.keras,
log.csv, tensorboard/ (with CAM overlays), backup/ (resume), run.json (the
run's identity and state), eval_test/ (metrics.json, pictures). Run the same
command again after a crash and it continues from the last finished epoch (or
only evaluates, or does nothing for a finished run); --overwrite trains anew.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys

import keras
import tensorflow as tf
from absl import app, logging

import keras_wsol.methods  # noqa: F401  (registers the classes a checkpoint names)
from keras_wsol import distribute, evaluation, optimizers, reporting
from keras_wsol.backbones import DATASET_NORMALIZED, pretrained
from keras_wsol.callbacks import AtomicCheckpoint, CAMOverlayLogger, StopOnNonFiniteLoss, ValidationLocalization
from keras_wsol.cli import flags as wsol_flags
from keras_wsol.cli import parsing, workdirs
from keras_wsol.cli import settings as wsol_settings
from keras_wsol.data import pipeline, synthetic
from keras_wsol.data.splits import fingerprint
from keras_wsol.layers import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from keras_wsol.methods import get_method
from keras_wsol.methods.hyperparameters import flag_name

FLAGS = wsol_flags.FLAGS


#: The run's optimizer flags; a method's ``optimizer_settings()`` gives its own defaults for them.
OPTIMIZER_FLAGS = (
    "optimizer",
    "learning_rate",
    "lr_schedule",
    "lr_milestones",
    "momentum",
    "nesterov",
    "weight_decay",
    "coupled_weight_decay",
)


def optimizer_settings(model) -> dict:
    """The run's optimizer settings: the flags, with the model's own defaults where a flag was not given."""
    settings = {name: FLAGS[name].value for name in OPTIMIZER_FLAGS}
    own = model.optimizer_settings()
    unknown = sorted(set(own) - set(OPTIMIZER_FLAGS))
    if unknown:
        raise ValueError(f"{type(model).__name__}.optimizer_settings names no optimizer flag: {', '.join(unknown)}")
    settings.update({name: value for name, value in own.items() if not FLAGS[name].present})
    settings["lr_milestones"] = [float(v) for v in settings["lr_milestones"]]
    return settings


def build_optimizer(steps: int, settings: dict, kind: str = "same", learning_rate: float | None = None):
    """The optimizer of ``settings`` (``kind``, ``learning_rate`` override them) with its schedule over ``steps``."""
    kind = settings["optimizer"] if kind == "same" else kind
    lr = settings["learning_rate"] if learning_rate is None else learning_rate
    if settings["lr_schedule"] == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(steps, 1))
    elif settings["lr_schedule"] == "step":
        milestones = [int(steps * m) for m in settings["lr_milestones"]]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(
            milestones, [lr * 0.1**k for k in range(len(milestones) + 1)]
        )
    decay = dict(weight_decay=settings["weight_decay"] or None, coupled_weight_decay=settings["coupled_weight_decay"])
    if kind == "sgd":
        return optimizers.SGD(lr, momentum=settings["momentum"], nesterov=settings["nesterov"], **decay)
    if kind == "adamw":
        return optimizers.AdamW(lr, **{**decay, "weight_decay": settings["weight_decay"]})
    return optimizers.Adam(lr, **decay)


def load_checkpoint(flag: str):
    """The .keras model named by ``--flag``; a missing flag or unreadable file is an error naming it."""
    path = FLAGS[flag].value
    if not path:
        raise app.UsageError(f"--{flag} is required here")
    if not os.path.isfile(path):
        raise app.UsageError(f"--{flag}={path}: no such file")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # a damaged or foreign file raises many types
        raise app.UsageError(
            f"--{flag}={path}: cannot load it as a Keras model ({type(error).__name__}: {error})"
        ) from None


def backbone_lr_multiplier() -> float:
    """--backbone_lr_multiplier, or the papers' 0.1 for pretrained --weights and 1 from random weights."""
    if FLAGS.backbone_lr_multiplier is not None:
        return FLAGS.backbone_lr_multiplier
    return 0.1 if pretrained(FLAGS.weights) else 1.0


def dataset_statistics(split):
    """``statistic(name)``: the training split's ``mean_pixel`` or ``std_pixel`` (RGB), computed once when asked."""
    computed = []

    def statistic(name: str):
        if name not in ("mean_pixel", "std_pixel"):
            raise ValueError(f"unknown dataset statistic {name!r}")
        if not computed:
            computed.append(pipeline.pixel_statistics(split, FLAGS.image_size))
        return computed[0][0 if name == "mean_pixel" else 1]

    return statistic


def build_model(train, strategy):
    """The --method model (for multi-stage methods, the stage its flags ask for), built in ``strategy``'s scope."""
    method = get_method(FLAGS.method)
    arguments = dict(
        num_classes=train.num_classes,
        backbone=FLAGS.backbone,
        image_size=FLAGS.image_size,
        head_channels=FLAGS.head_channels,
        weights=FLAGS.weights,
        backbone_lr_multiplier=backbone_lr_multiplier(),
        **wsol_settings.method_arguments(FLAGS.method),
    )
    statistics = dataset_statistics(train)
    given = FLAGS["input_normalization"].present
    dataset_normalized = FLAGS.backbone in DATASET_NORMALIZED
    if given and not dataset_normalized:
        raise app.UsageError(
            f"--input_normalization is for --backbone={' or '.join(DATASET_NORMALIZED)}, not {FLAGS.backbone}"
        )
    if FLAGS.input_normalization == "dataset" and dataset_normalized:
        if train.indexable:
            arguments["input_statistics"] = (statistics("mean_pixel"), statistics("std_pixel"))
        elif given:
            raise app.UsageError("--input_normalization=dataset needs an indexable training split, not a stream")
        else:  # a stream's statistics are unknown before it is read: ImageNet's, as the hide fill's default
            logging.info("Training split is a stream: the small backbone standardizes with ImageNet's mean and std")
            arguments["input_statistics"] = (IMAGENET_MEAN_RGB, IMAGENET_STD_RGB)
    if train.indexable:  # a stream keeps the declared default (e.g. the ImageNet mean pixel)
        for argument, statistic in wsol_settings.dataset_statistics(FLAGS.method).items():
            arguments[argument] = statistics(statistic)
    parameters = {p.name: p for p in method.hyperparameters}

    def load(name: str):
        return load_checkpoint(flag_name(FLAGS.method, parameters[name]))

    with strategy.scope():
        try:
            return method.from_arguments(arguments, load)
        except ValueError as error:
            raise app.UsageError(f"--method={FLAGS.method}: {error}") from None


def training_data(model, train, strategy):
    """``(dataset, steps per epoch)`` for ``fit``."""

    replicas = strategy.num_replicas_in_sync
    try:
        if model.uses_class_sets:
            # N classes x S images a batch; --batch_size is for evaluation only.
            if FLAGS.sets_per_batch % replicas:
                raise ValueError(
                    f"--sets_per_batch={FLAGS.sets_per_batch} must be a multiple of the {replicas} "
                    "replicas, so each replica gets whole class sets"
                )
            batch = FLAGS.set_size * FLAGS.sets_per_batch
            ds = pipeline.class_set_dataset(train, FLAGS.set_size, FLAGS.sets_per_batch, FLAGS.image_size, FLAGS.seed)
        else:
            if FLAGS.batch_size % replicas:
                raise ValueError(
                    f"--batch_size={FLAGS.batch_size} (global) must be a multiple of the {replicas} replicas"
                )
            batch = FLAGS.batch_size
            ds = pipeline.training_dataset(train, batch, FLAGS.image_size, FLAGS.seed, cache=_cache("train", train))
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    steps = len(train) // batch
    if steps == 0:
        raise app.UsageError(f"the training batch ({batch} images) is larger than the training split ({len(train)})")
    options = tf.data.Options()
    # Indexable sources: every worker runs the pipeline and keeps its share of each global batch.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA if train.indexable else tf.data.experimental.AutoShardPolicy.AUTO
    )
    return ds.with_options(options), steps


def _cache(name: str, split) -> str | None:
    """The --cache value for one split: 'memory', or the file prefix with the split's name and its data's hash.

    The hash (:func:`keras_wsol.data.splits.fingerprint`) keeps a cache of
    other data, or of the same files before they changed, from being read.
    """
    if not FLAGS.cache or FLAGS.cache == "memory":
        return FLAGS.cache
    return f"{FLAGS.cache}_{name}_{fingerprint(split, FLAGS.image_size)}"


class TrainingRun:
    """One ``train.py`` run: its settings resolved from the flags, its data, state, model and callbacks.

    :meth:`execute` runs the steps in order; each step is one method. Errors
    in the flags or data stop the run before anything is written or trained.
    """

    def __init__(self) -> None:
        if FLAGS.weights not in ("none", "imagenet", "") and not os.path.isfile(FLAGS.weights):
            raise app.UsageError(f"--weights={FLAGS.weights}: no such file (use none, imagenet or a .weights.h5 path)")
        keras.utils.set_random_seed(FLAGS.seed)
        if FLAGS.mixed_precision != "none":
            keras.mixed_precision.set_global_policy(FLAGS.mixed_precision)
        try:
            self.strategy = distribute.build_strategy(FLAGS.strategy, FLAGS.tpu)
        except ValueError as error:
            raise app.UsageError(f"--strategy={FLAGS.strategy}: {error}") from None
        self.chief = distribute.is_chief(self.strategy)
        # Other workers of a multi-worker run write to a scratch folder of their own, removed at the end.
        self.workdir = FLAGS.workdir if self.chief else os.path.join(FLAGS.workdir, f".worker{distribute.worker_id()}")
        self.data = {split: wsol_settings.load_split(split) for split in synthetic.SPLITS}
        wsol_settings.check_data(self.data)  # before anything is written or trained
        self.identity = workdirs.run_identity(self.data)
        self.model = None

    def execute(self) -> None:
        """Train (or resume, or only evaluate, or do nothing for a finished run), then evaluate the best epoch."""
        if FLAGS.overwrite and self.chief:
            workdirs.remove_run(FLAGS.workdir)
        state = workdirs.previous_run(FLAGS.workdir, self.identity)
        if state == "evaluated" or (state == "trained" and not FLAGS.evaluate):
            done = "trained and evaluated" if FLAGS.evaluate else "trained"
            print(
                f"--workdir={FLAGS.workdir} already holds this run, {done} (checkpoints/, eval_test/): nothing to "
                "do. Pass --overwrite to train it again."
            )
            return
        if state == "trained":  # training finished, its final evaluation did not: no model to build
            if self.chief:
                print(f"--workdir={FLAGS.workdir}: trained already; evaluating checkpoints/best.keras")
                evaluate_test(self.data["test"], self.identity)
            return
        self.announce(resuming=state == "training")
        self.build_and_compile()
        callbacks = self.callbacks()
        # Written once the model is built and compiled: a command that fails before leaves nothing behind.
        os.makedirs(self.workdir, exist_ok=True)
        if self.chief:
            workdirs.write_flagfile(os.path.join(self.workdir, "flags.txt"))
            if state is None:
                workdirs.mark_run(FLAGS.workdir, self.identity, "training")
        self.fit(callbacks)
        if not self.chief:
            shutil.rmtree(self.workdir, ignore_errors=True)
            return
        workdirs.mark_run(FLAGS.workdir, self.identity, "trained")
        if FLAGS.evaluate:
            evaluate_test(self.data["test"], self.identity)

    def announce(self, resuming: bool) -> None:
        """One paragraph on the data and model before training (chief only)."""
        if not self.chief:
            return
        train = self.data["train"]
        sizes = ", ".join(f"{name} {len(split)}" for name, split in self.data.items())
        print(
            f"Data: {wsol_settings.data_source()}: {train.num_classes} classes; images {sizes} (checked: metadata, "
            f"every image decoded). Model: --method={FLAGS.method} --backbone={FLAGS.backbone} --weights="
            f"{FLAGS.weights} --image_size={FLAGS.image_size}; {FLAGS.epochs} epochs"
            + (" (resuming from the last finished epoch in backup/)" if resuming else "")
        )

    def build_and_compile(self) -> None:
        """The model, its training and validation data, and ``compile`` with the run's optimizer."""
        self.model = build_model(self.data["train"], self.strategy)
        if self.strategy.num_replicas_in_sync > 1 and FLAGS.sync_batchnorm:
            distribute.synchronize_batch_norm(self.model)
        self.train_ds, self.steps_per_epoch = training_data(self.model, self.data["train"], self.strategy)
        val = self.data["val"]
        self.val_ds = pipeline.eval_dataset(val, FLAGS.batch_size, FLAGS.image_size, cache=_cache("val", val))
        with self.strategy.scope():
            steps = FLAGS.epochs * self.steps_per_epoch
            try:
                settings = optimizer_settings(self.model)
            except ValueError as error:
                raise app.UsageError(f"--method={FLAGS.method}: {error}") from None
            self.model.compile(
                optimizer=build_optimizer(steps * self.model.optimizer_steps_per_batch, settings),
                make_optimizer=functools.partial(build_optimizer, steps, settings),
                jit_compile="auto" if FLAGS.jit_compile is None else FLAGS.jit_compile,
            )

    def callbacks(self) -> list:
        """Non-finite stop, backup, epoch selection (--select_checkpoint), checkpoints, logs, CAM overlays."""
        ckpt, monitor, selection = os.path.join(self.workdir, "checkpoints"), FLAGS.select_checkpoint, []
        if monitor == "val_localization":
            try:
                selection = [ValidationLocalization(self.data["val"], wsol_settings.protocol(), FLAGS.batch_size)]
            except ValueError as error:
                if FLAGS["select_checkpoint"].present:
                    raise app.UsageError(f"--select_checkpoint=val_localization: {error}") from None
                logging.info("checkpoints/best.keras keeps the lowest val_loss: %s", error)
                monitor = "val_loss"
        overlays = pipeline.first_images(self.data["val"], 8, FLAGS.image_size), self.data["val"].labels[:8]
        return [
            StopOnNonFiniteLoss(ckpt),  # first: nothing saves NaN weights
            keras.callbacks.BackupAndRestore(os.path.join(self.workdir, "backup")),
            *selection,  # before the checkpoint and the logs that read val_localization
            AtomicCheckpoint(
                os.path.join(ckpt, "best.keras"), monitor=monitor, mode="min" if monitor == "val_loss" else "max"
            ),
            AtomicCheckpoint(os.path.join(ckpt, "last.keras")),
            keras.callbacks.CSVLogger(os.path.join(self.workdir, "log.csv"), append=True),
            keras.callbacks.TensorBoard(os.path.join(self.workdir, "tensorboard")),
            CAMOverlayLogger(os.path.join(self.workdir, "tensorboard"), *overlays),
        ]

    def fit(self, callbacks: list) -> None:
        """``model.fit`` over the epochs; a non-finite loss or Ctrl-C ends the command with a message."""
        try:
            self.model.fit(
                self.train_ds,
                validation_data=self.val_ds,
                epochs=FLAGS.epochs,
                callbacks=callbacks,
                verbose="auto" if sys.stdout.isatty() else 2,  # a progress bar in a terminal, a line an epoch in logs
                steps_per_epoch=self.steps_per_epoch if self.model.uses_class_sets else None,  # class sets never end
                shuffle=False,  # the dataset shuffles itself; Keras would warn that it ignores shuffle=True
            )
        except FloatingPointError as error:
            sys.exit(f"train.py: {error}")
        except KeyboardInterrupt:
            sys.exit("\ntrain.py: interrupted. Run the same command again to resume from the last finished epoch.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    TrainingRun().execute()


def evaluate_test(test, identity: dict[str, str]) -> None:
    """The final evaluation: the run's best checkpoint on the test split; the run is then ``evaluated``."""
    best = keras.models.load_model(os.path.join(FLAGS.workdir, "checkpoints", "best.keras"))
    out = os.path.join(FLAGS.workdir, "eval_test")
    results = reporting.evaluate_split(best, test, out, wsol_settings.protocol(), progress="Test split")
    print(f"\nTest split ({len(test)} images), {FLAGS.method} / {FLAGS.backbone}:")
    print(evaluation.format_table(results))
    print(f"\nmetrics and pictures: {out}")
    workdirs.mark_run(FLAGS.workdir, identity, "evaluated")


def run(argv: list[str] | None = None) -> None:
    """The train command: define the flags (every registered method's included), parse ``argv``, train."""
    wsol_flags.define_train_flags()
    parsing.show_in_help(__name__, wsol_flags.__name__)
    app.run(parsing.command_main(main), argv=argv, flags_parser=parsing.parse_flags)


if __name__ == "__main__":
    run()
