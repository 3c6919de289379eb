"""tf.data pipelines: decode-free batches from in-memory splits, with the field's augmentation.

Images stay RGB in [0, 255] (float32); each backbone's preprocessing is a
layer inside the model.

Example:
    >>> import numpy as np
    >>> ds = eval_dataset(np.zeros((5, 32, 32, 3), np.uint8), np.arange(5), batch_size=2)
    >>> [tuple(x.shape) for x, _ in ds]
    [(2, 32, 32, 3), (2, 32, 32, 3), (1, 32, 32, 3)]
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Resize to 8/7 of the side, random crop back, random flip (224 -> 256 -> 224, scaled)."""
    size = tf.shape(image)[0]
    enlarged = tf.cast(tf.math.round(tf.cast(size, tf.float32) * 256.0 / 224.0), tf.int32)
    image = tf.image.resize(image, (enlarged, enlarged))
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = tf.image.stateless_random_crop(image, (size, size, 3), seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seeds[1])


def training_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0, augmented: bool = True
) -> tf.data.Dataset:
    """Shuffled, augmented ``(image, label)`` batches; the last partial batch is dropped."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    counter = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
    ds = tf.data.Dataset.zip((ds, counter))
    ds = ds.map(
        lambda pair, s: (augment(tf.cast(pair[0], tf.float32), s) if augmented else tf.cast(pair[0], tf.float32), pair[1]),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """``(image, label)`` batches in order, no augmentation."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
