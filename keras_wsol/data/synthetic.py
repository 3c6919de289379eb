"""The offline synthetic WSOL benchmark ("badge on body").

Every image holds one object: a large elliptical body whose striped look is
shared by all classes, carrying a small badge whose colour and shape alone
tell the class. Backgrounds are smooth colour fields with noise and muted
distractor shapes, some of them striped like bodies. Position, scale and
aspect are random. The ground truth is the whole object (body and badge), so
a classifier that looks only at the badge localizes poorly: the WSOL
difficulty in miniature.

Generation is deterministic for ``(seed, split)`` and needs no network.

Example:
    >>> split = generate("val", num_classes=4, images_per_class=2, image_size=64)
    >>> split.images.shape, split.labels.tolist()
    ((8, 64, 64, 3), [0, 0, 1, 1, 2, 2, 3, 3])
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from keras_wsol.data import metadata

SPLITS = ("train", "val", "test")
# Saturated badge colours (RGB), one per class up to 12 classes, then reused
# with another shape.
_BADGE_COLOURS = np.array(
    [
        (230, 25, 25),
        (25, 200, 40),
        (30, 60, 230),
        (240, 220, 20),
        (230, 30, 220),
        (20, 220, 230),
        (250, 130, 0),
        (140, 40, 250),
        (255, 255, 255),
        (0, 0, 0),
        (120, 200, 0),
        (255, 120, 170),
    ],
    np.float32,
)
_BADGE_SHAPES = ("disk", "square", "diamond")
_BODY_COLOUR = np.array((150, 120, 95), np.float32)
_BODY_STRIPE = np.array((95, 75, 60), np.float32)


@dataclasses.dataclass
class SyntheticSplit:
    """One split in memory: uint8 images, labels, inclusive boxes and masks."""

    images: np.ndarray  # [N, S, S, 3] uint8
    labels: np.ndarray  # [N] int64
    boxes: np.ndarray  # [N, 4] int64, x0, y0, x1, y1 inclusive
    masks: np.ndarray  # [N, S, S] bool
    image_ids: list[str]

    def as_split(self, num_classes: int | None = None):
        """This split as a :class:`~keras_wsol.data.splits.Split` (what the pipeline and evaluators take)."""
        from keras_wsol.data.splits import Split

        return Split.from_arrays(self.images, self.labels, self.boxes, self.masks, self.image_ids, num_classes)


def badge_of(label: int) -> tuple[np.ndarray, str]:
    """The (colour, shape) that tells class ``label``."""
    n = len(_BADGE_COLOURS)
    return _BADGE_COLOURS[label % n], _BADGE_SHAPES[(label % n + label // n) % len(_BADGE_SHAPES)]


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    if shape == "disk":
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    if shape == "square":
        return (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    return np.abs(yy - cy) + np.abs(xx - cx) <= r * 1.2


def _stripes(yy: np.ndarray, xx: np.ndarray, angle: float, period: float, phase: float) -> np.ndarray:
    return np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period + phase) > 0


def render(rng: np.random.Generator, label: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one sample; returns ``(image, background, object_mask)``.

    ``image`` equals ``background`` outside ``object_mask`` and the object's
    own pixels inside it.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    field = rng.uniform(40, 215, (3, 3, 3)).astype(np.float32)
    background = cv2.resize(field, (size, size), interpolation=cv2.INTER_CUBIC)
    background += rng.normal(0, 12, background.shape).astype(np.float32)
    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.04, 0.14, 2) * size
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if rng.random() < 0.4:  # a fragment that looks like a body
            stripe = _stripes(yy, xx, rng.uniform(0, np.pi), size / 12, rng.uniform(0, 6.3))
            background[blob] = np.where(stripe[blob, None], _BODY_STRIPE, _BODY_COLOUR)
        else:  # muted colours only, so no distractor looks like a badge
            grey = rng.uniform(60, 200)
            background[blob] = grey + rng.uniform(-25, 25, 3)
    # The body: an ellipse with shared stripes.
    ry = rng.uniform(0.16, 0.32) * size
    rx = float(np.clip(ry * rng.uniform(0.6, 1.6), 0.14 * size, 0.4 * size))
    cy = rng.uniform(ry, size - 1 - ry)
    cx = rng.uniform(rx, size - 1 - rx)
    body = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    stripe = _stripes(yy, xx, rng.uniform(0, np.pi), size / 12, rng.uniform(0, 6.3))
    obj = np.where(stripe[..., None], _BODY_STRIPE, _BODY_COLOUR) + rng.normal(0, 6, (size, size, 3))
    # The badge: a small class-coloured shape well inside the body.
    colour, shape = badge_of(label)
    r = max(2.5, 0.3 * min(ry, rx))
    angle = rng.uniform(0, 2 * np.pi)
    dist = rng.uniform(0, 0.45)
    by, bx = cy + dist * (ry - r) * np.sin(angle), cx + dist * (rx - r) * np.cos(angle)
    badge = _shape_mask(shape, yy, xx, by, bx, r) & body
    obj[badge] = colour
    image = np.where(body[..., None], obj, background)
    return (
        np.clip(image, 0, 255).astype(np.uint8),
        np.clip(background, 0, 255).astype(np.uint8),
        body,
    )


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight inclusive ``[x0, y0, x1, y1]`` of a non-empty boolean mask."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.int64)


def generate(
    split: str = "train",
    num_classes: int = 8,
    images_per_class: int = 120,
    image_size: int = 96,
    seed: int = 0,
) -> SyntheticSplit:
    """Generate one split deterministically from ``(seed, split)``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    if not 2 <= num_classes <= 2 * len(_BADGE_COLOURS):
        raise ValueError(f"num_classes must be in [2, {2 * len(_BADGE_COLOURS)}], got {num_classes}")
    if image_size < 32:
        raise ValueError(f"image_size must be at least 32, got {image_size}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    labels = np.repeat(np.arange(num_classes, dtype=np.int64), images_per_class)
    images, masks = [], []
    for label in labels:
        image, _, mask = render(rng, int(label), image_size)
        images.append(image)
        masks.append(mask)
    ids = [f"{split}/class_{int(c):03d}/{i:05d}.png" for i, c in enumerate(labels)]
    masks = np.stack(masks)
    return SyntheticSplit(np.stack(images), labels, np.stack([mask_to_box(m) for m in masks]), masks, ids)


def write_metadata_folder(split: SyntheticSplit, root: str, split_name: str) -> None:
    """Write a split as a benchmark folder (the format of docs/DATA.md).

    Layout under ``root``: ``images/<id>`` (PNG), ``masks/<id>`` (PNG, 255 =
    object), ``metadata/<split>/`` with box ``localization.txt`` and
    ``metadata_masks/<split>/`` with mask ``localization.txt`` (paths relative
    to ``root/masks``), both with ``image_ids.txt``, ``class_labels.txt`` and
    ``image_sizes.txt``.
    """
    box_dir = os.path.join(root, "metadata", split_name)
    mask_dir = os.path.join(root, "metadata_masks", split_name)
    size = split.images.shape[1]
    for image_id, image, mask in zip(split.image_ids, split.images, split.masks):
        for sub, pixels in (("images", image[..., ::-1]), ("masks", mask.astype(np.uint8) * 255)):
            path = os.path.join(root, sub, image_id)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not cv2.imwrite(path, pixels):
                raise OSError(f"could not write {path}")
    ids = split.image_ids
    sizes = [(size, size)] * len(ids)
    boxes = [f"{i},{b[0]},{b[1]},{b[2]},{b[3]}" for i, b in zip(ids, split.boxes)]
    masks = [f"{i},{i}," for i in ids]
    for folder, localization in ((box_dir, boxes), (mask_dir, masks)):
        metadata.write_split(folder, ids, split.labels, sizes, localization)
