"""Deletion and insertion scores of maps (Petsiuk et al., RISE, BMVC 2018): does the model need what the map shows?

The pixels of each image are ranked by its map, highest first (ties in
row-major order). **Deletion** replaces them, ``1/steps`` of the image at a
time, by a fill, and records the model's softmax probability of the class
after each step; **insertion** starts from the fill and reveals them in the
same order. The score is the area under the probability curve over the
fraction of pixels changed (trapezoids, ``steps + 1`` points from 0 to 1):
low deletion and high insertion mean the map points at what the classifier
uses. Fills: ``"blur"`` (a Gaussian blur of the image, sigma = side / 16, as
RISE's insertion starts from a blurred image) or ``"mean"`` (the image's mean
colour). Batched: one compiled forward pass per step and batch.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((8, 8, 3))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs)))
    >>> x = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    >>> deletion, insertion = curves(model, x, np.random.default_rng(1).random((2, 8, 8)), np.array([0, 1]), steps=4)
    >>> deletion.shape, insertion.shape, bool(np.allclose(deletion[:, 0], insertion[:, -1]))
    ((2, 5), (2, 5), True)
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

FILLS = ("blur", "mean")


def fill_images(images: np.ndarray, fill: str) -> np.ndarray:
    """What a removed pixel shows: the blurred image or its mean colour, ``[B, H, W, 3]``."""
    images = np.asarray(images, np.float32)
    if fill == "mean":
        return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).astype(np.float32)
    if fill != "blur":
        raise ValueError(f"fill={fill!r}; choose one of {', '.join(FILLS)}")
    sigma = max(images.shape[1], images.shape[2]) / 16.0
    radius = int(np.ceil(3 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    rows = sum(w * padded[:, i : i + images.shape[1]] for i, w in enumerate(taps))
    return sum(w * rows[:, :, i : i + images.shape[2]] for i, w in enumerate(taps)).astype(np.float32)


def pixel_order(maps: np.ndarray) -> np.ndarray:
    """Rank of every pixel ``[B, H, W]`` (0 = the map's highest), ties in row-major order."""
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    order = np.argsort(-flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks.reshape(np.shape(maps))


def curves(model, images, maps, class_ids, steps: int = 16, fill: str = "blur") -> tuple[np.ndarray, np.ndarray]:
    """``(deletion, insertion)`` probability curves ``[B, steps + 1]`` of ``class_ids`` (maps at the input size)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: at least 1")
    images = np.asarray(images, np.float32)
    if np.shape(maps) != images.shape[:3]:
        raise ValueError(f"maps {np.shape(maps)} must be at the input size {images.shape[:3]}")
    base = fill_images(images, fill)
    ranks = pixel_order(maps)[..., None]
    pixels = images.shape[1] * images.shape[2]
    ids = tf.constant(np.asarray(class_ids, np.int32))
    deletion, insertion = [], []
    for k in range(steps + 1):
        changed = (ranks < round(k * pixels / steps)).astype(np.float32)
        for out, batch in (
            (deletion, images * (1 - changed) + base * changed),
            (insertion, base * (1 - changed) + images * changed),
        ):
            out.append(_probabilities(model, tf.constant(batch), ids).numpy())
    return np.stack(deletion, axis=1), np.stack(insertion, axis=1)


def auc(curve: np.ndarray) -> np.ndarray:
    """Area under curves ``[..., steps + 1]`` sampled evenly on [0, 1] (trapezoids)."""
    curve = np.asarray(curve, np.float64)
    return (curve.sum(axis=-1) - (curve[..., 0] + curve[..., -1]) / 2) / (curve.shape[-1] - 1)


@tf.function(reduce_retracing=True)
def _probabilities(model, images, class_ids) -> tf.Tensor:
    """The softmax probability of each image's class: one compiled forward pass."""
    probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
    return tf.gather(probabilities, class_ids, batch_dims=1)
