"""Training callbacks: atomic checkpoints, a stop on NaN losses, and CAM overlays in TensorBoard.

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
                self.best = self.sign * float(json.load(f)[self.monitor])
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


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stop at the first step whose loss is NaN or infinite, with an error naming the last good checkpoint.

    Put it first among the callbacks: it raises before any of them
    (backups, checkpoints) can save the broken weights.
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
            self.model.stop_training = True
            raise FloatingPointError(
                f"epoch {self.epoch + 1}, step {batch + 1}: the training loss is {loss}; stopped. The checkpoints in "
                f"{self.checkpoint_dir} and the resume backup are from the last good epoch (try a lower "
                "--learning_rate)."
            )


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
