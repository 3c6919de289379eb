"""Benchmark metadata folders (the WSOL protocol's plain-text format).

One folder per split: ``image_ids.txt``, ``class_labels.txt``,
``image_sizes.txt`` and ``localization.txt`` (boxes ``path,x0,y0,x1,y1`` or
masks ``path,mask_png,ignore_png``). Every malformed line is an error naming
the file and line number; nothing is skipped.

Example:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> for name, text in {"image_ids.txt": "a.jpg", "class_labels.txt": "a.jpg,3",
    ...                    "image_sizes.txt": "a.jpg,100,50", "localization.txt": "a.jpg,1,2,30,40"}.items():
    ...     _ = open(os.path.join(d, name), "w").write(text)
    >>> meta = read_metadata(d)
    >>> meta.labels["a.jpg"], meta.boxes["a.jpg"]
    (3, [(1.0, 2.0, 30.0, 40.0)])
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import cv2
import numpy as np

#: How far past the image's width or height a box corner may lie: inclusive pixel coordinates reach it.
BOX_MARGIN = 1


class MetadataError(ValueError):
    """A metadata file or line that does not follow the format."""


@dataclasses.dataclass
class Metadata:
    """One split's annotations, keyed by image id (in ``image_ids`` order)."""

    image_ids: list[str]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]] | None  # (width, height); None when read without localization
    boxes: dict[str, list[tuple[float, float, float, float]]] | None  # box datasets
    mask_paths: dict[str, list[str]] | None  # mask datasets
    ignore_paths: dict[str, str] | None

    @property
    def is_mask_dataset(self) -> bool:
        return self.mask_paths is not None


def _lines(path: str, fields: tuple[int, ...]) -> list[tuple[int, list[str]]]:
    """``(line_number, fields)`` of each line, checking the field count."""
    if not os.path.isfile(path):
        raise MetadataError(f"{path}: file not found")
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark, if any, is not part of the first id
        text = f.read()
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split(",") if line else []
        if len(parts) not in fields:
            raise MetadataError(
                f"{path}:{number}: expected {' or '.join(map(str, fields))} comma-separated fields, got {line!r}"
            )
        out.append((number, parts))
    return out


def _number(path: str, number: int, text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise MetadataError(f"{path}:{number}: {text!r} is not a valid {kind.__name__}") from None


def read_metadata(metadata_root: str, localization: bool = True) -> Metadata:
    """Read one split's metadata folder; raises :class:`MetadataError` naming file and line.

    ``localization=False`` reads ``image_ids.txt`` and ``class_labels.txt``
    only (a training split needs no boxes or sizes).
    """
    join = lambda name: os.path.join(metadata_root, name)  # noqa: E731
    image_ids, first_line = [], {}
    for number, (image_id,) in _lines(join("image_ids.txt"), (1,)):
        if image_id in first_line:
            raise MetadataError(
                f"{join('image_ids.txt')}:{number}: image {image_id!r} is listed twice (first on line "
                f"{first_line[image_id]})"
            )
        first_line[image_id] = number
        image_ids.append(image_id)

    def keyed(name: str, fields: tuple[int, ...], once: bool = True):
        seen = {}
        for number, parts in _lines(join(name), fields):
            if parts[0] not in first_line:
                raise MetadataError(f"{join(name)}:{number}: image {parts[0]!r} is not in image_ids.txt")
            if once and parts[0] in seen:
                raise MetadataError(
                    f"{join(name)}:{number}: a second line for image {parts[0]!r} (first on line {seen[parts[0]]})"
                )
            seen[parts[0]] = number
            yield number, parts

    labels = {}
    for n, p in keyed("class_labels.txt", (2,)):
        labels[p[0]] = int(_number(join("class_labels.txt"), n, p[1], int))
        if labels[p[0]] < 0:
            raise MetadataError(f"{join('class_labels.txt')}:{n}: class label must be >= 0, got {labels[p[0]]}")
    if not localization:
        _check_complete(join, image_ids, {"class_labels.txt": labels})
        return Metadata(image_ids, labels, None, None, None, None)
    sizes = {}
    for n, p in keyed("image_sizes.txt", (3,)):
        w, h = (int(_number(join("image_sizes.txt"), n, v, int)) for v in p[1:])
        if w <= 0 or h <= 0:
            raise MetadataError(f"{join('image_sizes.txt')}:{n}: image size must be positive, got {w}x{h}")
        sizes[p[0]] = (w, h)
    boxes: dict | None = None
    mask_paths: dict | None = None
    ignore_paths: dict | None = None
    for n, p in keyed("localization.txt", (3, 5), once=False):
        if len(p) == 5:
            if mask_paths is not None:
                raise MetadataError(f"{join('localization.txt')}:{n}: box line in a mask localization file")
            boxes = boxes if boxes is not None else {}
            x0, y0, x1, y1 = (float(_number(join("localization.txt"), n, v, float)) for v in p[1:])
            if x1 < x0 or y1 < y0:
                raise MetadataError(f"{join('localization.txt')}:{n}: box must have x0 <= x1 and y0 <= y1")
            w, h = sizes.get(p[0], (np.inf, np.inf))
            if x0 < 0 or y0 < 0 or x1 > w + BOX_MARGIN or y1 > h + BOX_MARGIN:
                raise MetadataError(
                    f"{join('localization.txt')}:{n}: box ({p[1]}, {p[2]}, {p[3]}, {p[4]}) is outside image "
                    f"{p[0]!r} of {w}x{h} (image_sizes.txt)"
                )
            boxes.setdefault(p[0], []).append((x0, y0, x1, y1))
        else:
            if boxes is not None:
                raise MetadataError(f"{join('localization.txt')}:{n}: mask line in a box localization file")
            mask_paths = mask_paths if mask_paths is not None else {}
            ignore_paths = ignore_paths if ignore_paths is not None else {}
            if p[0] in mask_paths:
                if p[2]:
                    raise MetadataError(
                        f"{join('localization.txt')}:{n}: only the first line of an image may name an ignore mask"
                    )
            else:
                ignore_paths[p[0]] = p[2]
            mask_paths.setdefault(p[0], []).append(p[1])
    _check_complete(
        join,
        image_ids,
        {"class_labels.txt": labels, "image_sizes.txt": sizes, "localization.txt": boxes or mask_paths or {}},
    )
    return Metadata(image_ids, labels, sizes, boxes, mask_paths, ignore_paths)


def _check_complete(join, image_ids: list[str], tables: dict[str, dict]) -> None:
    """Every image has a line in each file."""
    for name, table in tables.items():
        missing = [i for i in image_ids if i not in table]
        if missing:
            raise MetadataError(f"{join(name)}: no line for {len(missing)} image(s), first {missing[0]!r}")


def resize_box(box: Sequence[float], image_size: tuple[int, int], resize_length: int) -> tuple[int, int, int, int]:
    """Scale an inclusive ``x0, y0, x1, y1`` box of a ``(width, height)`` image to ``R x R``.

    Float division, then truncation (not rounding), as the reference does.

    >>> resize_box((10, 10, 99, 49), (100, 50), 224)
    (22, 44, 221, 219)
    """
    x0, y0, x1, y1 = map(float, box)
    width, height = map(float, image_size)
    r = float(resize_length)
    return int(x0 * r / width), int(y0 * r / height), int(x1 * r / width), int(y1 * r / height)


def resize_mask(mask: np.ndarray, resize_length: int) -> np.ndarray:
    """The protocol's mask rule: as float, nearest-neighbour resize to ``R x R``, then ``> 0.5``.

    >>> int(resize_mask(np.array([[0, 255], [0, 0]], np.uint8), 4).sum())
    4
    """
    return cv2.resize(mask.astype(np.float32), (resize_length, resize_length), interpolation=cv2.INTER_NEAREST) > 0.5


def _read_mask(path: str, resize_length: int) -> np.ndarray:
    mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise MetadataError(f"{path}: missing or not an image")
    return resize_mask(mask, resize_length)


def write_split(folder: str, image_ids: list[str], labels, sizes, localization: list[str]) -> None:
    """Write one split's metadata folder, the inverse of :func:`read_metadata`.

    ``sizes`` are ``(width, height)``; ``localization`` holds the
    ``localization.txt`` lines (boxes or masks) after the image id.
    """
    os.makedirs(folder, exist_ok=True)
    files = {
        "image_ids.txt": list(image_ids),
        "class_labels.txt": [f"{i},{int(c)}" for i, c in zip(image_ids, labels)],
        "image_sizes.txt": [f"{i},{int(w)},{int(h)}" for i, (w, h) in zip(image_ids, sizes)],
        "localization.txt": list(localization),
    }
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write("".join(line + "\n" for line in lines))  # an empty split is an empty file


def load_masks(meta: Metadata, image_id: str, mask_root: str, resize_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(foreground, ignore)`` boolean ``R x R`` masks of one image, as the protocol reads them.

    Instances are resized with nearest neighbour, ``> 0.5`` and OR-ed; the
    ignore region excludes the foreground. An empty ignore path means no
    ignore region.
    """
    foreground = np.zeros((resize_length, resize_length), bool)
    for path in meta.mask_paths[image_id]:
        foreground |= _read_mask(os.path.join(mask_root, path), resize_length)
    ignore_path = meta.ignore_paths[image_id]
    ignore = np.zeros_like(foreground)
    if ignore_path:
        ignore = _read_mask(os.path.join(mask_root, ignore_path), resize_length) & ~foreground
    return foreground, ignore
