"""Method losses as pure functions of tensors, each citing its paper's equation.

They return per-example (or per-set) values in float32; a method averages
them over the global batch with :func:`keras_wsol.distribute.replica_mean`.

Example:
    >>> import numpy as np
    >>> f = np.array([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0], [5.0, 5.0]], "float32")
    >>> crr_per_set(f, set_size=2).numpy().tolist()   # ||(2, 0)||^2 / 2 channels; identical pair
    [2.0, 0.0]
    >>> frr_per_image(f, f + 1.0).numpy().tolist()
    [1.0, 1.0, 1.0, 1.0]
    >>> confidence_mask(np.array([[[0.0, 0.0, 2.0, 4.0]]], "float32")).numpy().tolist()  # mu0 1.5, mu1 1.5
    [[[1.5, 1.5, -0.5, 2.5]]]
    >>> round(float(weighted_entropy_per_image(np.full((1, 2, 2), 0.5, "float32"))[0]), 4)  # gamma 1, H = log 2
    0.6931
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


def confidence_mask(maps) -> tf.Tensor:
    """The per-pixel adversarial/cooperative mask of CAMs2i Eq. 3, ``[B, h, w]`` -> ``[B, h, w]``.

    ``mu0`` is the mean of each map, ``|S - mu0|`` the distance of each pixel
    to it and ``mu1`` the mean distance; the mask is the distance, negated
    where it is below ``mu1`` (``(-1)^(mu1 > mask)``): positive on confident
    pixels (far from the mean), negative on ambiguous ones.
    """
    maps = ops.cast(maps, "float32")
    distance = ops.abs(maps - ops.mean(maps, axis=(1, 2), keepdims=True))
    mu1 = ops.mean(distance, axis=(1, 2), keepdims=True)
    return ops.where(mu1 > distance, -distance, distance)


#: How a loss summed over map positions is reduced: ``reference`` (the sum the paper's own map size gives, for the
#: same picture at any map size), ``sum`` (over the run's positions) or ``mean`` (over the run's positions).
POSITION_REDUCTIONS = ("reference", "sum", "mean")
#: CAMs2i's map size: VGG16 at 224 px with pool4 and pool5 at stride 1 (Sec. 4.1 builds on ACoL, whose
#: models/vgg/vgg_v1.py cfg 'D1' runs both pools at stride 1): 28 x 28 positions.
CAMS2I_REFERENCE_POSITIONS = 28 * 28
#: Babar & Das's map size: VGG16 at 224 px cut after conv5-3 (Sec. 4, "we remove the layers after conv5-3"):
#: 14 x 14 positions.
COMPLEMENTARY_REFERENCE_POSITIONS = 14 * 14


def _reduce_positions(values, reduction: str, reference_positions: int, paper_sum_is_mean: bool) -> tf.Tensor:
    """Reduce ``[B, P]`` per-position values to ``[B]`` (:data:`POSITION_REDUCTIONS`).

    ``paper_sum_is_mean``: the per-position values shrink as positions grow
    (unit vectors), so the sum is already size-independent and the paper's
    value is the sum; otherwise the values keep their size and the paper's
    sum is the mean times its position count.
    """
    if reduction not in POSITION_REDUCTIONS:
        raise ValueError(f"reduction={reduction!r}: choose one of {', '.join(POSITION_REDUCTIONS)}")
    if reduction == "mean":
        return ops.mean(values, axis=-1)
    if reduction == "sum":
        return ops.sum(values, axis=-1)
    if paper_sum_is_mean:
        return ops.sum(values, axis=-1) / float(reference_positions)
    return ops.mean(values, axis=-1) * float(reference_positions)


def interaction_per_image(
    maps_1, maps_2, mask, reduction: str = "reference", reference_positions: int = CAMS2I_REFERENCE_POSITIONS
) -> tf.Tensor:
    """L_int of CAMs2i Eq. 4, one value per image: ``sum over pixels of (S1 - S2)^2 * mask``.

    Eq. 4 sums over the map's pixels. ``reduction="reference"`` (default)
    gives that sum at the paper's map size (28 x 28, ``reference_positions``)
    for the same picture at any map size: the mean over pixels times 784, so
    ``int_weight = 1`` means at 8 x 8 what it means in the paper. ``sum`` is
    Eq. 4 at the run's own size (it grows with the map); ``mean`` the
    earlier reading, 1/784 of the paper's size at 28 x 28.

    Example:
        >>> import numpy as np
        >>> s1, s2, m = np.ones((1, 2, 2)), np.zeros((1, 2, 2)), np.full((1, 2, 2), 0.5)
        >>> [float(interaction_per_image(s1, s2, m, r, reference_positions=9)[0]) for r in POSITION_REDUCTIONS]
        [4.5, 2.0, 0.5]
    """
    diff = ops.cast(maps_1, "float32") - ops.cast(maps_2, "float32")
    values = ops.square(diff) * ops.cast(mask, "float32")
    flat = ops.reshape(values, (ops.shape(values)[0], -1))
    return _reduce_positions(flat, reduction, reference_positions, paper_sum_is_mean=False)


def adn_per_image(logits_1, logits_2) -> tf.Tensor:
    """L_adn of CAMs2i Eq. 6, one value per image: ``sum_c (softmax(y1) - softmax(y2))^2``.

    ``y1`` (the final classifier) supervises ``y2``: its softmax is a constant.
    """
    teacher = tf.stop_gradient(ops.softmax(ops.cast(logits_1, "float32"), axis=-1))
    return ops.sum(ops.square(teacher - ops.softmax(ops.cast(logits_2, "float32"), axis=-1)), axis=-1)


def inter_sample_per_image(foreground, background, labels) -> tf.Tensor:
    """L_inter of CAMs2i Eq. 9-10, one value per image ``i``: ``-sum_{j > i, y_j = y_i} log p_ij``.

    ``foreground`` and ``background`` ``[B, c]`` are ``f`` of the foreground-
    and background-weighted images (Eq. 8). With
    ``d+_ij = (||f^f_i - f^f_j||^2 + ||f^b_i - f^b_j||^2) / 2c`` (same class,
    pulled together) and ``d-_ij = (||f^f_i - f^b_i||^2 + ||f^f_j - f^b_j||^2) / 2c``
    (foreground against background, pushed apart),
    ``p_ij = 1 / (1 + exp(d+ - d-))``, so ``-log p_ij = softplus(d+ - d-)``.
    The sum over images is Eq. 10's sum over pairs.
    """
    fg = ops.cast(foreground, "float32")
    bg = ops.cast(background, "float32")
    width = ops.cast(ops.shape(fg)[-1], "float32")

    def pairwise(a):
        return ops.sum(ops.square(a[:, None, :] - a[None, :, :]), axis=-1)

    d_pos = (pairwise(fg) + pairwise(bg)) / (2.0 * width)
    own = ops.sum(ops.square(fg - bg), axis=-1)
    d_neg = (own[:, None] + own[None, :]) / (2.0 * width)
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    size = ops.shape(labels)[0]
    later = ops.arange(size)[None, :] > ops.arange(size)[:, None]
    pairs = ops.logical_and(labels[:, None] == labels[None, :], later)
    return ops.sum(ops.where(pairs, ops.softplus(d_pos - d_neg), 0.0), axis=1)


def linear_ramp(step, ramp_steps: int) -> tf.Tensor:
    """CAMs2i's ``w0`` (Eq. 7): ``step / ramp_steps``, capped at 1; 1 throughout when ``ramp_steps`` is 0.

    Eq. 7 writes ``1 / w0`` with ``w0`` rising from 0 to 1 "to keep the extra
    losses out early"; only a weight that *multiplies* them does that (1 / w0
    would start infinite), so this is the multiplier.
    """
    if ramp_steps <= 0:
        return ops.convert_to_tensor(1.0, "float32")
    return ops.minimum(ops.cast(step, "float32") / float(ramp_steps), 1.0)


def attention_fusion_per_image(
    maps_x,
    maps_complement,
    reduction: str = "reference",
    reference_positions: int = COMPLEMENTARY_REFERENCE_POSITIONS,
) -> tf.Tensor:
    """Attention-based Fusion Loss of Babar & Das Eq. 14, one value per image.

    ``(V_x / ||V_x||_2 - V_x~ / ||V_x~||_2)^2`` with ``V`` the vectorized
    localization map ``[B, h, w]`` of the ground-truth class from each branch
    (Eq. 13). The paper writes no reduction and builds on attention transfer
    (Zagoruyko & Komodakis), whose code averages over positions; at the
    paper's 14 x 14 maps that is the sum over positions divided by 196.
    The sum of squared differences of two unit vectors (at most 4) does not
    grow with the map size, so ``reduction="reference"`` (default), the sum
    divided by 196 (``reference_positions``), is the paper's mean at 14 x 14
    and weighs ``beta`` at every map size as at the paper's: ``beta = 50``
    is ``50 / 196 = 0.26`` per unit of summed squared difference, at 8 x 8 as
    at 28 x 28. ``mean`` (the earlier default) weighs ``beta / (h w)``
    instead, ``sum`` ``beta``. Maps equal up to a positive scale give 0, and
    so do two all-zero maps (their unit vectors are 0): the two
    cross-entropy terms of Eq. 15 keep the maps from that trivial optimum.

    Example:
        >>> import numpy as np
        >>> a, b = np.array([[[1.0, 0.0]]]), np.array([[[0.0, 1.0]]])
        >>> [float(attention_fusion_per_image(a, b, r, reference_positions=4)[0]) for r in POSITION_REDUCTIONS]
        [0.5, 2.0, 1.0]
    """

    def unit(maps):
        flat = ops.reshape(ops.cast(maps, "float32"), (ops.shape(maps)[0], -1))
        return flat * ops.rsqrt(ops.maximum(ops.sum(ops.square(flat), axis=-1, keepdims=True), 1e-12))

    squared = ops.square(unit(maps_x) - unit(maps_complement))
    return _reduce_positions(squared, reduction, reference_positions, paper_sum_is_mean=True)


ENTROPY_EPS = 1e-6


def weighted_entropy_per_image(maps, mu: float = 0.5, sigma: float = 0.1) -> tf.Tensor:
    """ORNet's weighted entropy loss L_w, Eq. 14-15 (pixel entropy Eq. 12), one value per map.

    ``maps`` ``[B, h, w]`` holds p^a in [0, 1]; each pixel's binary entropy
    ``H = -p log p - (1 - p) log(1 - p)`` is weighted by
    ``gamma = exp(-(p - mu)^2 / (2 sigma^2))`` and averaged over the pixels.
    ``gamma`` is part of the loss, not a constant: the paper does not detach
    it. ``p`` is clipped to ``[1e-6, 1 - 1e-6]`` inside the logarithms, so
    saturated pixels give 0, not NaN. ``sigma = inf`` (``gamma = 1``) is the
    plain mean entropy L_h of Eq. 13.
    """
    p = ops.cast(maps, "float32")
    q = ops.clip(p, ENTROPY_EPS, 1.0 - ENTROPY_EPS)
    entropy = -q * ops.log(q) - (1.0 - q) * ops.log(1.0 - q)
    gamma = ops.exp(-ops.square(p - mu) / (2.0 * sigma**2))
    return ops.mean(gamma * entropy, axis=(1, 2))


def area_per_image(maps) -> tf.Tensor:
    """ORNet's area loss L_a, Eq. 16, one value per map: the mean of p^a over its pixels."""
    return ops.mean(ops.cast(maps, "float32"), axis=(1, 2))
