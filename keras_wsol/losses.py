"""Method losses as pure functions of tensors, each citing its paper's equation.

They return per-example (or per-set) values in float32; a method averages
them over the global batch with :func:`keras_wsol.methods.base.replica_mean`.

Example:
    >>> import numpy as np
    >>> f = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 5.0]], "float32")
    >>> crr_per_set(f, set_size=2).numpy().tolist()   # ||(2, 0)||^2 / 2 channels; identical pair
    [2.0, 0.0]
    >>> frr_per_image(f, f + 1.0).numpy().tolist()
    [1.0, 1.0, 1.0, 1.0]
"""

from __future__ import annotations

import tensorflow as tf
from keras import ops


def crr_per_set(features, set_size: int) -> tf.Tensor:
    """Common Region Regularization, MinMaxCAM Eq. 2, one value per class set.

    ``features`` ``[N * S, K]`` holds N sets of S consecutive same-class
    images. ``CRR = 1 / (S (S - 1)) * sum_{i, j} ||f_i - f_j||^2`` over the
    ordered pairs of a set, i.e. the mean over distinct pairs. The squared
    distance is divided by the feature width K, as the official code's
    ``MSELoss`` does, so its loss weights keep their meaning.
    """
    features = ops.cast(features, "float32")
    width = ops.shape(features)[-1]
    sets = ops.reshape(features, (-1, set_size, width))
    diffs = sets[:, :, None, :] - sets[:, None, :, :]
    pair_sums = ops.sum(ops.mean(ops.square(diffs), axis=-1), axis=(1, 2))
    return pair_sums / float(set_size * (set_size - 1))


def frr_per_image(features, original_features) -> tf.Tensor:
    """Full Region Regularization, MinMaxCAM Eq. 3, one value per image.

    ``||f_i - f_i^o||^2`` (divided by the feature width, as for CRR), with the
    features of the unmasked image ``f^o`` held constant. Averaging over the S
    images of a set and then over sets is the mean over images.
    """
    features = ops.cast(features, "float32")
    original = tf.stop_gradient(ops.cast(original_features, "float32"))
    return ops.mean(ops.square(features - original), axis=-1)
