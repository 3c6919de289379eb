"""tf.data pipelines for any :class:`~keras_wsol.data.splits.Split`: decode, resize, augment, batch.

Images come out RGB in [0, 255] (float32) at ``image_size x image_size``;
each backbone's preprocessing is a layer inside the model. Training follows
the field (resize to 256, random crop 224, flip), scaled to ``image_size``;
evaluation resizes the whole image (no crop), as the protocol does. A
missing, unknown or truncated image file is an error naming the file:
nothing is skipped.

Example:
    >>> import numpy as np
    >>> from keras_wsol.data.splits import Split
    >>> ds = eval_dataset(Split.from_arrays(np.zeros((5, 32, 32, 3), np.uint8), np.arange(5)), batch_size=2)
    >>> [tuple(x.shape) for x, _ in ds]
    [(2, 32, 32, 3), (2, 32, 32, 3), (1, 32, 32, 3)]
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf
from absl import logging

from keras_wsol.data.splits import Split

AUTOTUNE = tf.data.AUTOTUNE
# Shuffle buffer (images) behind a cache, where the order of indices cannot be shuffled.
CACHED_SHUFFLE_BUFFER = 10000


def _contains(data: tf.Tensor, pattern: bytes, start: int) -> tf.Tensor:
    """Whether the uint8 vector ``data`` holds ``pattern`` at some offset >= ``start``."""
    count = tf.maximum(tf.size(data) - start - len(pattern) + 1, 0)
    hits = tf.ones([count], tf.bool)
    for k, byte in enumerate(pattern):
        hits &= tf.equal(data[start + k : start + k + count], byte)
    return tf.reduce_any(hits)


def decode_image(contents: tf.Tensor, name: tf.Tensor) -> tf.Tensor:
    """``uint8 [H, W, 3]`` RGB from encoded JPEG, PNG, GIF or BMP bytes.

    Unknown formats and JPEG/PNG files cut short (no end marker) fail with
    ``name`` in the message; TensorFlow's decoder would not name the file.
    """
    head = tf.strings.substr(contents, 0, 8)
    is_jpeg = tf.equal(tf.strings.substr(head, 0, 3), b"\xff\xd8\xff")
    is_png = tf.equal(head, b"\x89PNG\r\n\x1a\n")
    known = (
        is_jpeg
        | is_png
        | tf.equal(tf.strings.substr(head, 0, 4), b"GIF8")
        | tf.equal(tf.strings.substr(head, 0, 2), b"BM")
    )
    data = tf.io.decode_raw(contents, tf.uint8)
    complete = tf.cond(
        is_jpeg,
        lambda: _contains(data, b"\xff\xd9", 3),
        lambda: tf.cond(is_png, lambda: _contains(data, b"IEND", 8), lambda: tf.constant(True)),
    )
    checks = [
        tf.debugging.Assert(known, [tf.strings.join([name, ": not a JPEG, PNG, GIF or BMP image"])]),
        tf.debugging.Assert(complete, [tf.strings.join([name, ": truncated image (no end marker)"])]),
    ]
    with tf.control_dependencies(checks):
        image = tf.io.decode_image(contents, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def read_image(path: tf.Tensor) -> tf.Tensor:
    """:func:`decode_image` of a file; a missing file is TensorFlow's NotFoundError, which names it."""
    return decode_image(tf.io.read_file(path), path)


def image_loader(split: Split) -> Callable[[tf.Tensor], tf.Tensor]:
    """``index -> uint8 [H, W, 3]`` for an indexable split."""
    if split.arrays is not None:
        images = tf.constant(split.arrays)
        return lambda index: tf.gather(images, index)
    if split.paths is not None:
        paths = tf.constant(split.paths)
        return lambda index: read_image(tf.gather(paths, index))
    raise ValueError("this split is a stream (TFDS training images): it cannot be read by index")


def training_side(image_size: int) -> int:
    """The side images are resized to before the random crop: 256 for 224, scaled."""
    return int(round(image_size * 256.0 / 224.0))


def resize(image: tf.Tensor, side: int) -> tf.Tensor:
    """Bilinear resize to ``side x side`` (aspect not kept, as the field does), float32."""
    return tf.image.resize(tf.cast(image, tf.float32), (side, side))


def augment(image: tf.Tensor, image_size: int, seed: tf.Tensor) -> tf.Tensor:
    """Resize to :func:`training_side`, random ``image_size`` crop, random flip; stateless in ``seed``."""
    image = resize(image, training_side(image_size))
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = tf.image.stateless_random_crop(image, (image_size, image_size, 3), seeds[0])
    return tf.image.stateless_random_flip_left_right(image, seeds[1])


def _side(split: Split, image_size: int | None) -> int:
    if image_size:
        return image_size
    if split.arrays is None:
        raise ValueError("image_size is needed for images read from files")
    return split.arrays.shape[1]


def _with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Pair each element with a stateless per-example seed ``[seed, position]``."""
    counter = tf.data.Dataset.counter().map(lambda i: tf.stack([tf.cast(seed, tf.int64), i]))
    return tf.data.Dataset.zip((ds, counter))


def _cached(ds: tf.data.Dataset, cache: str | None) -> tf.data.Dataset:
    """``cache``: None (off), ``"memory"`` or a file prefix for :meth:`tf.data.Dataset.cache`."""
    if not cache:
        return ds
    return ds.cache("" if cache == "memory" else cache)


def _pairs(split: Split, indices: tf.data.Dataset) -> tf.data.Dataset:
    """``(uint8 image, label)`` for each index of ``indices``, in order."""
    load = image_loader(split)
    labels = tf.constant(split.labels.astype(np.int32))
    return indices.map(lambda i: (load(i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE, deterministic=True)


def _examples(pairs: tf.data.Dataset, image_size: int, seed: int, augmented: bool) -> tf.data.Dataset:
    """``(image, label)`` pairs augmented with a per-example stateless seed, or resized to ``image_size``."""

    def example(pair, example_seed):
        image, label = pair
        return (augment(image, image_size, example_seed) if augmented else resize(image, image_size)), label

    return _with_seeds(pairs, seed).map(example, num_parallel_calls=AUTOTUNE, deterministic=True)


def training_dataset(
    split: Split,
    batch_size: int,
    image_size: int | None = None,
    seed: int = 0,
    augmented: bool = True,
    cache: str | None = None,
) -> tf.data.Dataset:
    """Shuffled, augmented ``(image, label)`` batches, reshuffled each epoch; the last partial batch is dropped.

    With ``cache``, the decoded images (resized to :func:`training_side`)
    are cached once and shuffled through a buffer of
    ``CACHED_SHUFFLE_BUFFER`` images; crops and flips stay fresh each epoch.
    A stream split (TFDS) arrives shuffled by its source.
    """
    side = _side(split, image_size)
    if split.stream is not None:
        pairs = split.stream(seed)
    elif cache:
        stored = training_side(side) if augmented else side
        pairs = _pairs(split, tf.data.Dataset.range(len(split))).map(
            lambda image, label: (tf.cast(tf.round(resize(image, stored)), tf.uint8), label),
            num_parallel_calls=AUTOTUNE,
        )
        pairs = _cached(pairs, cache).shuffle(min(len(split), CACHED_SHUFFLE_BUFFER), seed=seed)
    else:
        pairs = _pairs(
            split, tf.data.Dataset.range(len(split)).shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
        )
    return _examples(pairs, side, seed, augmented).batch(batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def class_set_indices(labels: np.ndarray, set_size: int, sets_per_batch: int, seed: int = 0) -> tf.data.Dataset:
    """An endless stream of index vectors ``[sets_per_batch * set_size]`` (int64), one per batch.

    Each holds ``sets_per_batch`` distinct classes, drawn uniformly, and
    ``set_size`` distinct images of each, consecutive. A class with fewer
    than ``set_size`` images is sampled with replacement (its images repeat
    within the set; a warning names it). Only the labels are needed, so this
    works for any indexable source. Draws are stateless functions of
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
        logging.warning(
            "%d classes have fewer than --set_size=%d images and are sampled with replacement: %s",
            len(short),
            set_size,
            ", ".join(str(c) for c in short[:20]) + (" ..." if len(short) > 20 else ""),
        )
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
    split: Split,
    set_size: int,
    sets_per_batch: int,
    image_size: int | None = None,
    seed: int = 0,
    augmented: bool = True,
) -> tf.data.Dataset:
    """Endless augmented batches of ``sets_per_batch`` classes x ``set_size`` images (MinMaxCAM, CAMs2i).

    Pass ``steps_per_epoch`` to ``fit``. Under ``tf.distribute`` the batch is
    split into contiguous chunks, so each replica gets whole sets when
    ``sets_per_batch`` is a multiple of the number of replicas. The split
    must be indexable (files or arrays).
    """
    if not split.indexable:
        raise ValueError(
            "class-set batches read images by index: a streamed TFDS split cannot give them; "
            "use --dataset=folder with the benchmark's train metadata"
        )
    indices = class_set_indices(split.labels, set_size, sets_per_batch, seed).unbatch()
    ds = _examples(_pairs(split, indices), _side(split, image_size), seed, augmented)
    return ds.batch(set_size * sets_per_batch, drop_remainder=True).prefetch(AUTOTUNE)


def eval_dataset(
    split: Split, batch_size: int, image_size: int | None = None, cache: str | None = None
) -> tf.data.Dataset:
    """``(image, label)`` batches in order: each whole image resized to ``image_size``, no augmentation."""
    side = _side(split, image_size)
    ds = _pairs(split, tf.data.Dataset.range(len(split))).map(
        lambda image, label: (resize(image, side), label), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    return _cached(ds, cache).batch(batch_size).prefetch(AUTOTUNE)


def first_images(split: Split, count: int, image_size: int | None = None) -> np.ndarray:
    """The first ``count`` images as evaluation sees them, ``[count, S, S, 3]`` float32 (pictures, overlays)."""
    batches = eval_dataset(split.head(count), batch_size=max(count, 1), image_size=image_size)
    return np.concatenate([images.numpy() for images, _ in batches])


def pixel_statistics(
    split: Split, image_size: int | None = None, count: int = 1000, batch_size: int = 100
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` per RGB channel of the first ``count`` images at ``image_size``, in [0, 255] units."""
    total, squares, pixels = np.zeros(3), np.zeros(3), 0
    for images, _ in eval_dataset(split.head(count), batch_size, image_size):
        values = images.numpy().reshape(-1, 3).astype(np.float64)
        total += values.sum(axis=0)
        squares += np.square(values).sum(axis=0)
        pixels += len(values)
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - np.square(mean), 0.0))
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
