"""Maps, boxes and classes for a batch of images in one call: :func:`localize`.

Each image (a numpy array or tensor ``[H, W, 3]`` of any size, or a batch
``[B, H, W, 3]``) is resized to the model's square input, the localizer's
map is computed for the predicted class (or the class asked for), upsampled
bilinearly to the image's own size and min-max normalized; the boxes are the
protocol's (:func:`keras_wsol.contours.boxes_at_threshold`): every
contour's box and the largest contour's, in the image's pixels
(``x0, y0, x1, y1`` as the protocol writes them: ``x0 + w`` and ``y0 + h`` of
the contour's bounding rectangle, clipped to the last pixel).

Thresholds (``threshold``), per image on its normalized map:

* a number ``tau`` in ``[0, 1)``: CAM's fixed rule (Zhou et al. 2016 use
  0.2); a run's own best tau is ``MaxBoxAcc_threshold`` in its
  ``eval_val/metrics.json``.
* ``"otsu"``: Otsu's threshold (Otsu 1979) of the map's 256-level histogram,
  which separates the map's two modes without a tuned number.
* ``"percentile:P"``: the map's P-th percentile, so a fixed share of the image
  (100 - P percent) is kept.

Example:
    >>> import numpy as np
    >>> from keras_wsol.methods import CAM
    >>> model = CAM(num_classes=3, backbone="small", image_size=32)
    >>> images = [np.zeros((40, 50, 3), "uint8"), np.zeros((32, 32, 3), "uint8")]
    >>> found = localize(model, images, localizer="gradcam", layer="mid", threshold="otsu")
    >>> found[0].map.shape, found[0].box.shape, found[1].map.shape
    ((40, 50), (4,), (32, 32))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_wsol.contours import boxes_at_threshold, scoremap_to_uint8
from keras_wsol.localizers import cached_localizer
from keras_wsol.maps import upsample_normalized


@dataclass
class Localized:
    """One image's result: ``map`` ``[H, W]`` in [0, 1], ``box`` the largest contour's, ``boxes`` every contour's."""

    map: np.ndarray
    box: np.ndarray
    boxes: np.ndarray
    threshold: float
    class_id: int
    probability: float


def otsu_threshold(scoremap: np.ndarray) -> float:
    """Otsu's threshold of a map in [0, 1]: the level that maximizes the between-class variance of its histogram.

    Example:
        >>> m = np.zeros((4, 4)); m[:2] = 1.0
        >>> 0 <= otsu_threshold(m) < 1
        True
    """
    counts = np.bincount(scoremap_to_uint8(scoremap).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    below = np.cumsum(counts)  # pixels at or below each level
    above = below[-1] - below
    mean_below = np.cumsum(counts * levels) / np.maximum(below, 1)
    mean_above = ((counts * levels).sum() - np.cumsum(counts * levels)) / np.maximum(above, 1)
    between = below * above * (mean_below - mean_above) ** 2
    return float(np.argmax(between)) / 255.0  # a box takes the pixels above tau


def resolve_threshold(threshold: float | str, scoremap: np.ndarray) -> float:
    """``threshold`` (a number, ``"otsu"`` or ``"percentile:P"``) as a tau in [0, 1) for ``scoremap``."""
    if isinstance(threshold, str):
        if threshold == "otsu":
            return otsu_threshold(scoremap)
        kind, _, value = threshold.partition(":")
        if kind == "percentile":
            try:
                percentile = float(value)
            except ValueError:
                percentile = -1.0
            if not 0 <= percentile < 100:
                raise ValueError(f"threshold={threshold!r}: percentile:P with P in [0, 100)")
            return min(float(np.percentile(scoremap, percentile)), 0.999)
        raise ValueError(f"threshold={threshold!r}: a number in [0, 1), 'otsu' or 'percentile:P'")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold={threshold}: must be in [0, 1)")
    return float(threshold)


def model_side(localizer) -> int:
    """The square input side of a localizer's model (a WSOLModel's ``image_size``, else its input shape)."""
    model = localizer.model
    side = getattr(model, "image_size", None) or model.input_shape[1]
    if not side:
        raise ValueError(f"{model.name} takes images of any size; build it for a fixed square input")
    return int(side)


def _as_images(images) -> list[np.ndarray]:
    """A batch array/tensor or a list of ``[H, W, 3]`` images as a list of float32 arrays."""
    if isinstance(images, (list, tuple)):
        arrays = [np.asarray(image, np.float32) for image in images]
    else:
        batch = np.asarray(images, np.float32)
        arrays = list(batch) if batch.ndim == 4 else [batch]
    for index, image in enumerate(arrays):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image {index} has shape {image.shape}; give [height, width, 3] RGB images")
    return arrays


def localize(
    model,
    images,
    localizer: str = "cam",
    layer: str | None = None,
    threshold: float | str = 0.2,
    class_ids=None,
    **options,
) -> list[Localized]:
    """Maps, boxes and classes of ``images`` from ``model`` (a WSOLModel or any Keras classifier).

    ``localizer`` and ``layer`` as :func:`keras_wsol.localizers.get_localizer`
    (several comma-separated layers are fused; ``options``: ``score``,
    ``guided``, ``fusion``); ``class_ids`` one per image, or None for the
    predicted class.
    """
    arrays = _as_images(images)
    resolve_threshold(threshold, np.zeros((2, 2)))  # a bad threshold fails before any model work
    ids = [-1] * len(arrays) if class_ids is None else list(np.broadcast_to(np.asarray(class_ids), (len(arrays),)))
    found = cached_localizer(model, localizer, layer, **options)
    side = model_side(found)
    if not arrays:
        return []
    batch = tf.stack([tf.image.resize(image, (side, side)) for image in arrays])
    maps, logits = found.raw_maps(batch, np.asarray(ids, np.int64))
    probabilities = tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()
    chosen = np.where(np.asarray(ids) < 0, probabilities.argmax(axis=1), np.asarray(ids))
    results = []
    for index, image in enumerate(arrays):
        scoremap = upsample_normalized(maps[index : index + 1], image.shape[:2]).numpy()[0]
        tau = resolve_threshold(threshold, scoremap)
        every = boxes_at_threshold(scoremap, tau, multi_contour=True)
        largest = boxes_at_threshold(scoremap, tau)[0]
        k = int(chosen[index])
        results.append(Localized(scoremap, largest, every, tau, k, float(probabilities[index, k])))
    return results
