"""Training callbacks: atomic checkpoints and CAM overlays in TensorBoard.

Example:
    >>> cb = AtomicCheckpoint("/tmp/best.keras", monitor="val_loss", mode="min")
    >>> cb.best
    inf
"""

from __future__ import annotations

import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_wsol import visualize


class AtomicCheckpoint(keras.callbacks.Callback):
    """Save the whole model at epoch end, to a temporary file renamed into place.

    A run killed mid-save leaves the previous checkpoint intact. Without
    ``monitor`` it saves every epoch (the last checkpoint); with it, only on
    improvement (the best). A non-finite loss stops training and keeps the
    last good checkpoint.
    """

    def __init__(self, path: str, monitor: str | None = None, mode: str = "min"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.sign = 1.0 if mode == "min" else -1.0
        self.best = math.inf

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not math.isfinite(float(logs.get("loss", 0.0))):
            self.model.stop_training = True
            raise FloatingPointError(
                f"epoch {epoch + 1}: training loss is {logs.get('loss')}; stopped, last good checkpoint kept at {self.path}"
            )
        if self.monitor is not None:
            value = self.sign * float(logs[self.monitor])
            if not value < self.best:
                return
            self.best = value
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = self.path + ".tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, self.path)


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
