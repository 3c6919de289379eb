"""One split of any dataset source, as the pipeline and the evaluators see it.

A :class:`Split` keeps the annotations in memory (ids, labels, original
sizes, boxes, a mask reader) and says where the pixels are: an in-memory
array (the synthetic benchmark), image files (benchmark metadata folders,
CUB exported from TFDS) or a stream (TFDS ImageNet training images, which
carry no boxes). :mod:`keras_wsol.data.pipeline` turns any of them into
``tf.data`` batches.

Example:
    >>> import numpy as np
    >>> split = Split.from_arrays(np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 0, 1]))
    >>> len(split), split.num_classes, split.sizes[0].tolist()
    (4, 2, [32, 32])
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np

from keras_wsol.data import metadata as metadata_lib
from keras_wsol.data.metadata import resize_box

MaskReader = Callable[[int, int], "tuple[np.ndarray, np.ndarray]"]


@dataclasses.dataclass
class Split:
    """Annotations of one split and the place its pixels come from (exactly one of
    ``arrays``, ``paths``, ``stream``)."""

    image_ids: list[str]
    labels: np.ndarray  # [N] int64
    num_classes: int
    sizes: np.ndarray | None = None  # [N, 2] (width, height) of the original images
    boxes: list[np.ndarray] | None = None  # per image [K, 4] inclusive x0, y0, x1, y1 in original pixels
    masks: MaskReader | None = None  # (index, R) -> (foreground, ignore) boolean R x R masks
    arrays: np.ndarray | None = None  # [N, S, S, 3] uint8
    paths: list[str] | None = None  # image files, in image_ids order
    stream: Callable[[int], object] | None = None  # seed -> tf.data.Dataset of (uint8 image, label), shuffled
    stream_size: int = 0  # images in the stream (its ids and labels are not listed)

    def __post_init__(self):
        if sum(x is not None for x in (self.arrays, self.paths, self.stream)) != 1:
            raise ValueError("a Split needs exactly one of arrays, paths or stream")
        self.labels = np.asarray(self.labels, np.int64)
        if self.paths is not None and len(self.paths) != len(self.image_ids):
            raise ValueError(f"{len(self.image_ids)} image ids but {len(self.paths)} paths")
        if len(self.labels) != len(self.image_ids):
            raise ValueError(f"{len(self.image_ids)} image ids but {len(self.labels)} labels")
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < self.num_classes:
            raise ValueError(f"labels must be in [0, {self.num_classes}), got {self.labels.min()}..{self.labels.max()}")

    def __len__(self) -> int:
        return self.stream_size if self.stream is not None else len(self.image_ids)

    def head(self, count: int) -> Split:
        """The first ``count`` images (of an indexable split)."""
        if not self.indexable:
            raise ValueError("a streamed split has no first images")
        cut = lambda x: None if x is None else x[:count]  # noqa: E731
        return dataclasses.replace(
            self,
            image_ids=self.image_ids[:count],
            labels=self.labels[:count],
            sizes=cut(self.sizes),
            boxes=cut(self.boxes),
            arrays=cut(self.arrays),
            paths=cut(self.paths),
        )

    @property
    def indexable(self) -> bool:
        """Whether image ``i`` can be read on its own (class-set batches need it)."""
        return self.stream is None

    @property
    def has_boxes(self) -> bool:
        return self.boxes is not None and self.sizes is not None

    def resized_boxes(self, resize_length: int) -> list[np.ndarray]:
        """Each image's boxes ``[K, 4]`` scaled from its original size to ``R x R`` the protocol's way."""
        return [
            np.array([resize_box(b, size, resize_length) for b in boxes], np.int64)
            for boxes, size in zip(self.boxes, self.sizes)
        ]

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        boxes: np.ndarray | None = None,
        masks: np.ndarray | None = None,
        image_ids: list[str] | None = None,
        num_classes: int | None = None,
    ) -> Split:
        """An in-memory split of square ``[N, S, S, 3]`` images; ``boxes [N, 4]`` and ``masks [N, S, S]`` optional."""
        labels = np.asarray(labels, np.int64)
        side = images.shape[1]
        mask_reader = None
        if masks is not None:

            def mask_reader(index: int, resize_length: int):
                mask = metadata_lib.resize_mask(masks[index], resize_length)
                return mask, np.zeros_like(mask)

        return cls(
            image_ids=image_ids or [str(i) for i in range(len(labels))],
            labels=labels,
            num_classes=num_classes or int(labels.max()) + 1,
            sizes=np.tile([images.shape[2], side], (len(labels), 1)),
            boxes=None if boxes is None else [np.asarray(b, np.float64).reshape(-1, 4) for b in boxes],
            masks=mask_reader,
            arrays=images,
        )


def fingerprint(split: Split, image_size: int) -> str:
    """A short hash of what a cache of ``split``'s decoded images holds: ids, labels, pixels or files, size.

    Files enter by path, size and modification time (not contents: fast on
    thousands of files); arrays by their bytes. A cache named with it is
    not reused once the data changes.

    Example:
        >>> import numpy as np
        >>> a = Split.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
        >>> b = Split.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 0]))
        >>> fingerprint(a, 8) == fingerprint(a, 8) != fingerprint(b, 8) and fingerprint(a, 8) != fingerprint(a, 16)
        True
    """
    import hashlib

    digest = hashlib.sha1(f"{image_size}\n".encode())
    digest.update("\n".join(split.image_ids).encode())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    if split.arrays is not None:
        digest.update(np.ascontiguousarray(split.arrays).tobytes())
    for path in split.paths or ():
        stat = os.stat(path)
        digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    if split.stream is not None:
        digest.update(f"stream:{split.stream_size}".encode())
    return digest.hexdigest()[:12]


def content_digest(split: Split) -> str:
    """A short hash of a split's annotations: ids, labels, sizes and boxes (a stream: its size).

    A run records it, so that a split rewritten at the same path (another
    draw, other labels) is not scored with a checkpoint trained on the old one.

    Example:
        >>> import numpy as np
        >>> a = Split.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
        >>> b = Split.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([1, 0]))
        >>> content_digest(a) == content_digest(a) != content_digest(b)
        True
    """
    import hashlib

    digest = hashlib.sha1("\n".join(split.image_ids).encode())
    digest.update(np.ascontiguousarray(split.labels).tobytes())
    if split.sizes is not None:
        digest.update(np.ascontiguousarray(split.sizes, np.int64).tobytes())
    for boxes in split.boxes or ():
        digest.update(np.ascontiguousarray(boxes, np.float64).tobytes() + b";")
    digest.update(f"stream:{split.stream_size}".encode())
    return digest.hexdigest()[:12]


def check_image_files(split: Split, name: str, limit: int = 5) -> None:
    """Every image file of ``split`` exists, decodes as the pipeline decodes it, and has the size its metadata says.

    Raises :class:`~keras_wsol.data.metadata.MetadataError` listing up to
    ``limit`` problems, each naming its file, before any training starts.
    Each file is decoded in full by :func:`keras_wsol.data.pipeline.read_image`
    (a JPEG cut short fails here, not after training): first all of them in
    one parallel tf.data pass; only when a file fails is each decoded on its
    own, so that every bad file is named. docs/BENCHMARKS.md has the time on
    10,000 photos. Splits in memory or streamed pass.

    Example:
        >>> import numpy as np
        >>> check_image_files(Split.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1])), "train")
    """
    if split.paths is None:
        return
    from concurrent.futures import ThreadPoolExecutor

    import tensorflow as tf

    from keras_wsol.data.pipeline import read_image

    def decoded_size(path: str) -> tuple[int, int] | str:
        """``(width, height)`` of the decoded file, or why it cannot be decoded."""
        try:
            height, width = read_image(tf.constant(path)).shape[:2]
        except tf.errors.OpError as error:
            reason = error.message.splitlines()[0] if error.message else type(error).__name__
            return f"not a readable image ({reason.split('[[')[0].strip()})"
        return width, height

    missing = {i for i, path in enumerate(split.paths) if not os.path.isfile(path)}
    present = [path for i, path in enumerate(split.paths) if i not in missing]
    try:  # every file at once; the per-file pass below only runs to name the files that fail
        shapes = tf.data.Dataset.from_tensor_slices(tf.constant(present, tf.string)).map(
            lambda p: tf.shape(read_image(p))[:2], num_parallel_calls=tf.data.AUTOTUNE
        )
        sizes = iter([(int(w), int(h)) for h, w in shapes.batch(256).unbatch().as_numpy_iterator()])
    except tf.errors.OpError:
        with ThreadPoolExecutor(8) as pool:
            sizes = iter(pool.map(decoded_size, present))
    problems = []
    for index, path in enumerate(split.paths):
        size = "no such file" if index in missing else next(sizes)
        if isinstance(size, str):
            problems.append(f"{path}: {size}")
        elif split.sizes is not None and tuple(split.sizes[index]) != size:
            w, h = split.sizes[index]
            problems.append(f"{path}: the file is {size[0]}x{size[1]}, image_sizes.txt says {w}x{h}")
    if problems:
        more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
        raise metadata_lib.MetadataError(
            f"{name} split: {len(problems)} image file(s) with problems{more}:\n  " + "\n  ".join(problems[:limit])
        )


def pixel_boxes(split: Split, name: str, normalized: bool) -> Split:
    """``split`` with its boxes in pixels: scaled from fractions when ``normalized``; refused when they look normalized.

    Boxes whose every coordinate lies in [0, 1] on images larger than 2 px
    are almost surely fractions of the image (YOLO, some exports): scored as
    pixels they give every method, ``full_image`` included, 0. Refused with
    a message naming the way out, ``--boxes_normalized``.

    Example:
        >>> import numpy as np
        >>> split = Split.from_arrays(np.zeros((1, 10, 10, 3), np.uint8), np.array([0]), boxes=[[0.1, 0.2, 0.5, 1.0]])
        >>> pixel_boxes(split, "test", normalized=True).boxes[0].tolist()
        [[1.0, 2.0, 4.0, 9.0]]
    """
    if not split.has_boxes or not len(split.boxes):
        return split
    if normalized:
        scale = [np.array([w, h, w, h], np.float64) * b - [0, 0, 1, 1] for b, (w, h) in zip(split.boxes, split.sizes)]
        return dataclasses.replace(split, boxes=[np.maximum(s, 0.0) for s in scale])
    largest = max(float(np.max(b)) for b in split.boxes if len(b))
    if largest <= 1.0 and int(split.sizes.min()) > 2:
        raise metadata_lib.MetadataError(
            f"{name} split: every box coordinate lies in [0, 1] (largest {largest:g}) on images of "
            f"{int(split.sizes.min())} px and more: these look like fractions of the image, and boxes are pixels "
            "(docs/DATA.md). Give --boxes_normalized to scale them, or convert the source (convert.py)"
        )
    return split


def check_splits(splits: dict[str, Split]) -> None:
    """The splits of one run agree: none empty, every training class has images, no other split has a class beyond.

    Raises ``ValueError`` naming the split, image and label (a stray
    training label of 99 would otherwise build a 100-class head; a test
    label outside the model's classes would crash after training).

    Example:
        >>> import numpy as np
        >>> train = Split.from_arrays(np.zeros((2, 8, 8, 3), np.uint8), np.array([0, 1]))
        >>> check_splits({"train": train, "test": Split.from_arrays(np.zeros((1, 8, 8, 3), np.uint8), np.array([2]))})
        Traceback (most recent call last):
        ...
        ValueError: test split: image '0' has label 2, but the training split has classes 0..1 only
    """
    for name, split in splits.items():
        if split.indexable and not len(split):
            raise ValueError(f"{name} split: no images")
    train = splits.get("train")
    if train is None or not train.indexable:
        return
    present = np.unique(train.labels)
    # Classes inferred from the largest label (metadata folders) must all have images; a dataset that
    # declares its class count (CUB's 200) may be given a subset of them.
    if train.num_classes == int(present[-1]) + 1 and len(present) != train.num_classes:
        missing = sorted(set(range(train.num_classes)) - set(present.tolist()))
        top = int(np.argmax(train.labels))
        raise ValueError(
            f"train split: classes {_ranges(missing)} have no training image, so the model would have "
            f"{train.num_classes} classes; image {train.image_ids[top]!r} has label {train.labels[top]}. "
            "Labels must be 0..C-1, each with training images"
        )
    for name, split in splits.items():
        if name == "train" or not split.indexable or not len(split):
            continue
        beyond = np.flatnonzero(split.labels >= train.num_classes)
        if len(beyond):
            i = beyond[0]
            raise ValueError(
                f"{name} split: image {split.image_ids[i]!r} has label {split.labels[i]}, but the training split "
                f"has classes 0..{train.num_classes - 1} only"
            )


def _ranges(values: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1..3, 7"``."""
    parts, start = [], None
    for i, v in enumerate(values):
        start = v if start is None else start
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(v) if v == start else f"{start}..{v}")
            start = None
    return ", ".join(parts)


def metadata_split(
    data_root: str,
    split_root: str,
    mask_root: str | None = None,
    mask_split_root: str | None = None,
    num_classes: int | None = None,
    localization: bool = True,
) -> Split:
    """A split of a benchmark metadata folder (docs/DATA.md): images under ``data_root``.

    ``localization=False`` reads only ``image_ids.txt`` and
    ``class_labels.txt`` (training splits need no boxes). A mask split
    (OpenImages) needs ``mask_root``; a box split may add masks from a
    second metadata folder of the same images, ``mask_split_root`` (CUB's
    segmentations). Errors name the file and line.
    """
    meta = metadata_lib.read_metadata(split_root, localization=localization)
    labels = np.array([meta.labels[i] for i in meta.image_ids], np.int64)
    masks = None
    mask_meta = meta if meta.is_mask_dataset else None
    if localization and mask_split_root:
        mask_meta = metadata_lib.read_metadata(mask_split_root)
        if mask_meta.image_ids != meta.image_ids or not mask_meta.is_mask_dataset:
            raise metadata_lib.MetadataError(
                f"{mask_split_root}: must list masks for the images of {split_root}, in the same order"
            )
    if mask_meta is not None:
        if not mask_root:
            raise metadata_lib.MetadataError(
                f"{mask_split_root or split_root}/localization.txt lists masks: a mask root is needed"
            )
        masks = lambda index, r: metadata_lib.load_masks(mask_meta, meta.image_ids[index], mask_root, r)  # noqa: E731
    boxes = None if meta.boxes is None else [np.array(meta.boxes[i], np.float64) for i in meta.image_ids]
    return Split(
        image_ids=meta.image_ids,
        labels=labels,
        num_classes=num_classes or (int(labels.max()) + 1 if len(labels) else 0),
        sizes=None if meta.sizes is None else np.array([meta.sizes[i] for i in meta.image_ids], np.int64),
        boxes=boxes,
        masks=masks,
        paths=[os.path.join(data_root, i) for i in meta.image_ids],
    )
