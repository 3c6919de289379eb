"""Score-map utilities shared by the methods, the localizers and the export.

Example:
    >>> import numpy as np
    >>> m = np.array([[[0.0, 2.0], [4.0, 4.0]]], "float32")
    >>> minmax_normalize(m).numpy().tolist()
    [[[0.0, 0.5], [1.0, 1.0]]]
    >>> tuple(upsample_normalized(m, (4, 4)).shape)
    (1, 4, 4)
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops


def minmax_normalize(maps: tf.Tensor) -> tf.Tensor:
    """Per-map ``(x - min) / (max - min)`` over the last two axes; constant or NaN maps give zeros."""
    maps = ops.cast(maps, "float32")
    low = ops.min(maps, axis=(-2, -1), keepdims=True)
    high = ops.max(maps, axis=(-2, -1), keepdims=True)
    span = high - low
    out = ops.where(span > 0, (maps - low) / ops.where(span > 0, span, 1.0), 0.0)
    return ops.where(ops.isnan(high), 0.0, out)


def predicted_where_negative(class_ids, logits) -> tf.Tensor:
    """``class_ids`` as int32, with ``None`` or negative entries replaced by the argmax of ``logits``."""
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    if class_ids is None:
        return predicted
    class_ids = ops.cast(class_ids, "int32")
    return ops.where(class_ids < 0, predicted, class_ids)


def class_channel(maps: tf.Tensor, class_ids) -> tf.Tensor:
    """The map of one class per image: ``[B, h, w, C]`` -> ``[B, h, w]``."""
    return ops.take_along_axis(maps, ops.reshape(ops.cast(class_ids, "int32"), (-1, 1, 1, 1)), axis=-1)[..., 0]


def upsample_normalized(maps: tf.Tensor, size) -> tf.Tensor:
    """Raw maps ``[B, h, w]`` -> ``[B, H, W]``: bilinear (half-pixel centres), then per-map min-max.

    ``size`` may hold tensors (sizes known only when the graph runs).
    """
    maps = ops.cast(maps, "float32")[..., None]
    return minmax_normalize(tf.image.resize(maps, size, method="bilinear")[..., 0])
