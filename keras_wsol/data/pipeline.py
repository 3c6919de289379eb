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
from absl import logging


def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Resize to 8/7 of the side, random crop back, random flip (224 -> 256 -> 224, scaled)."""
    size = tf.shape(image)[0]
    enlarged = tf.cast(tf.math.round(tf.cast(size, tf.float32) * 256.0 / 224.0), tf.int32)
    image = tf.image.resize(image, (enlarged, enlarged))
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = tf.image.stateless_random_crop(image, (size, size, 3), seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seeds[1])


def _examples(images: np.ndarray, labels: np.ndarray, indices: tf.data.Dataset, seed: int, augmented: bool) -> tf.data.Dataset:
    """``(image, label)`` for each index of ``indices``, augmented with a per-example stateless seed."""
    images = tf.constant(images)
    labels = tf.constant(labels.astype(np.int32))
    counter = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))

    def load(index, example_seed):
        image = tf.cast(tf.gather(images, index), tf.float32)
        return (augment(image, example_seed) if augmented else image), tf.gather(labels, index)

    return tf.data.Dataset.zip((indices, counter)).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def training_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int = 0, augmented: bool = True
) -> tf.data.Dataset:
    """Shuffled, augmented ``(image, label)`` batches; the last partial batch is dropped."""
    indices = tf.data.Dataset.range(len(images)).shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = _examples(images, labels, indices, seed, augmented)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def class_set_indices(labels: np.ndarray, set_size: int, sets_per_batch: int, seed: int = 0) -> tf.data.Dataset:
    """An endless stream of index vectors ``[sets_per_batch * set_size]`` (int64), one per batch.

    Each holds ``sets_per_batch`` distinct classes, drawn uniformly, and
    ``set_size`` distinct images of each, consecutive. A class with fewer
    than ``set_size`` images is sampled with replacement (its images repeat
    within the set; a warning names it). Only the labels are needed, so this
    works for any dataset source. Draws are stateless functions of
    ``(seed, batch number)``: reproducible, and no Python in the loop.

    Example:
        >>> ds = class_set_indices(np.array([0, 0, 1, 1, 2, 2]), set_size=2, sets_per_batch=2)
        >>> batch = next(iter(ds)).numpy()
        >>> len(batch), len({int(c) for c in np.array([0, 0, 1, 1, 2, 2])[batch]})
        (4, 2)
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if set_size < 2:
        raise ValueError(f"--set_size={set_size}: a class set needs at least 2 images")
    if len(classes) < sets_per_batch:
        raise ValueError(f"--sets_per_batch={sets_per_batch}, but the training split has only {len(classes)} classes")
    short = classes[counts < set_size]
    if len(short):
        logging.warning("%d classes have fewer than --set_size=%d images and are sampled with replacement: %s",
                        len(short), set_size, ", ".join(str(c) for c in short[:20]) + (" ..." if len(short) > 20 else ""))
    table = np.zeros((len(classes), counts.max()), np.int64)
    for row, c in enumerate(classes):
        table[row, : counts[row]] = np.flatnonzero(labels == c)
    table, counts = tf.constant(table), tf.constant(counts.astype(np.int32))
    width = table.shape[1]

    def draw(batch_seed):
        class_seed, image_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
        rows = tf.argsort(tf.random.stateless_uniform([len(classes)], class_seed))[:sets_per_batch]
        available = tf.gather(counts, rows)
        scores = tf.random.stateless_uniform([sets_per_batch, width], image_seed)
        scores = tf.where(tf.range(width)[None, :] < available[:, None], scores, 2.0)  # padding sorts last
        shuffled = tf.argsort(scores, axis=1)
        slots = tf.gather(shuffled, tf.range(set_size)[None, :] % available[:, None], batch_dims=1)
        return tf.reshape(tf.gather(tf.gather(table, rows), slots, batch_dims=1), [-1])

    return tf.data.Dataset.counter().map(lambda i: draw(tf.stack([tf.cast(seed, tf.int64), i])))


def class_set_dataset(
    images: np.ndarray, labels: np.ndarray, set_size: int, sets_per_batch: int, seed: int = 0, augmented: bool = True
) -> tf.data.Dataset:
    """Endless augmented batches of ``sets_per_batch`` classes x ``set_size`` images (MinMaxCAM, CAMs2i).

    Pass ``steps_per_epoch`` to ``fit``. Under ``tf.distribute`` the batch is
    split into contiguous chunks, so each replica gets whole sets when
    ``sets_per_batch`` is a multiple of the number of replicas.
    """
    indices = class_set_indices(labels, set_size, sets_per_batch, seed).unbatch()
    ds = _examples(images, labels, indices, seed, augmented)
    return ds.batch(set_size * sets_per_batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """``(image, label)`` batches in order, no augmentation."""
    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    return ds.map(lambda x, y: (tf.cast(x, tf.float32), y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
