"""Reusable layers.

Example:
    >>> import numpy as np
    >>> Preprocess("tf")(np.full((1, 2, 2, 3), 255.0, "float32")).numpy().max()
    1.0
"""

from __future__ import annotations

import keras
from keras import ops

# keras.applications "caffe" preprocessing: RGB -> BGR, ImageNet mean subtracted.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="keras_wsol")
class Preprocess(keras.layers.Layer):
    """Map RGB pixels in [0, 255] to a backbone's input range, inside the graph.

    Modes: ``"tf"`` ([-1, 1], MobileNetV2/InceptionV3), ``"caffe"`` (BGR minus
    the ImageNet mean, VGG16/ResNet50), ``"unit"`` ([0, 1], the small backbone).
    """

    MODES = ("tf", "caffe", "unit")

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode

    @property
    def zero_point(self) -> tuple[float, float, float]:
        """The RGB pixel value this layer maps to 0.

        Preprocessing is affine per channel, so
        ``preprocess(z + (I - z) * H) == preprocess(I) * H``: masking an image
        around ``z`` is masking the tensor the network sees (MinMaxCAM's I * H
        on normalized inputs).
        """
        if self.mode == "tf":
            return (127.5, 127.5, 127.5)
        if self.mode == "unit":
            return (0.0, 0.0, 0.0)
        return tuple(reversed(_CAFFE_MEAN_BGR))

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "unit":
            return images / 255.0
        return images[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}
