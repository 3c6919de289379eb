"""Training callbacks: atomic checkpoints, validation localization, a stop on NaN losses, CAM overlays.

Example:
    >>> cb = AtomicCheckpoint("/tmp/best.keras", monitor="val_loss", mode="min")
    >>> cb.best
    inf
"""

from __future__ import annotations

import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_wsol import visualize
from keras_wsol.atomic import replacing, write_json


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the whole model at epoch end, to a temporary file renamed into place.

    A run killed mid-save leaves the previous checkpoint intact. Without
    ``monitor`` it saves every epoch (the last checkpoint); with it, only on
    improvement (the best), writing the best value to ``PATH.json`` so a
    resumed run (its first epoch is not 0) still compares against it.
    """

    def __init__(self, path: str, monitor: str | None = None, mode: str = "min"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf
        self._first_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        record = self.path + ".json"
        if self._first_epoch and epoch > 0 and self.monitor and os.path.isfile(record) and os.path.isfile(self.path):
            with open(record) as f:
                kept = json.load(f).get(self.monitor)
            if kept is not None:  # a record of another criterion does not count
                self.best = self.sign * float(kept)
        self._first_epoch = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor is not None:
            value = self.sign * float(logs[self.monitor])
            if not value < self.best:
                return
            self.best = value
        with replacing(self.path, ".keras") as tmp:  # Keras saves only to names ending in .keras
            self.model.save(tmp)
        if self.monitor is not None:
            write_json({"epoch": epoch + 1, self.monitor: float(logs[self.monitor])}, self.path + ".json")


class ValidationLocalization(keras.callbacks.Callback):
    """Score the model's own maps on a labelled split at each epoch end: ``logs["val_localization"]``.

    MaxBoxAccV2 on a box split, PxAP on a mask-only split, under the run's
    protocol settings (the localizer is CAM at the classifier, i.e. each
    method's own maps). Put it before the callbacks that read the value (a
    checkpoint monitoring ``val_localization``, the CSV and TensorBoard logs).
    Selecting the checkpoint by it is what the protocol's code
    (wsolevaluation main.py: the "best" checkpoint is the best validation
    localization) and the official MinMaxCAM code (train.py: mean MaxBoxAcc at
    IoU 30/50/70 on the validation split) do.
    """

    def __init__(self, split, protocol, batch_size: int = 64):
        super().__init__()
        if not (split.has_boxes or split.masks is not None):
            raise ValueError("validation localization needs a split with boxes or masks")
        self.split, self.protocol, self.batch_size = split, protocol, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        from keras_wsol import localizers, reporting

        localizer = localizers.get_localizer(self.model, "cam")
        result = reporting.score(localizer, self.split, self.protocol, self.batch_size)[0]["model"].result()
        value = result["MaxBoxAccV2"] if self.split.has_boxes else result["PxAP"]
        if logs is not None:
            logs["val_localization"] = float(value)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first NaN or infinite loss, with an error saying which checkpoints are still good.

    A training step's loss is checked after each step; at the epoch end every
    logged value (``val_loss`` included) is checked before the checkpoints
    and the backup save the epoch. Put it first among the callbacks: it
    raises before any of them can save the broken weights.
    """

    def __init__(self, checkpoint_dir: str):
        super().__init__()
        self.checkpoint_dir = checkpoint_dir
        self.epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = float((logs or {}).get("loss", 0.0))
        if not math.isfinite(loss):
            self._stop(f"epoch {self.epoch + 1}, step {batch + 1}: the training loss is {loss}")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        broken = [f"{k} is {v}" for k, v in (logs or {}).items() if isinstance(v, float) and not math.isfinite(v)]
        if broken:
            self._stop(f"epoch {epoch + 1}: {', '.join(broken)}")

    def _stop(self, what: str) -> None:
        self.model.stop_training = True
        kept = (
            f"The checkpoints in {self.checkpoint_dir} and the resume backup are from epoch {self.epoch} or before"
            if self.epoch
            else "No epoch finished, so there is no checkpoint"
        )
        raise FloatingPointError(f"{what}; stopped. {kept} (try a lower --learning_rate).")


class CAMOverlayLogger(keras.callbacks.Callback):
    """Log the localization maps of a fixed batch as TensorBoard images every epoch."""

    def __init__(self, logdir: str, images: np.ndarray, labels: np.ndarray):
        super().__init__()
        self.writer = tf.summary.create_file_writer(os.path.join(logdir, "cams"))
        self.images = images.astype(np.float32)
        self.labels = labels

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        maps = np.asarray(self.model.localization_maps(self.images, self.labels))
        blended = np.stack([visualize.overlay(i.astype(np.uint8), m) for i, m in zip(self.images, maps)])
        with self.writer.as_default():
            tf.summary.image("cam_overlays", blended, step=epoch, max_outputs=len(blended))
        self.writer.flush()
