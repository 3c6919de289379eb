"""Boxes from score maps by the protocol's rules: uint8 maps, integer thresholds, OpenCV contours, IoU.

The protocol of Choe et al. thresholds ``floor(255 s)`` at ``int(tau * max)``,
traces every contour with ``cv2.findContours`` (hole contours included), takes
each contour's bounding box one pixel wider, and compares boxes by
inclusive-pixel IoU. A uint8 map has at most 256 distinct foregrounds, so
:class:`ContourBoxes` traces each distinct foreground once, for every tau at
once; :func:`best_ious` and :func:`boxes_at_threshold` are the two questions
the evaluators and the box outputs ask of it (``keras_wsol.evaluation``).

Example:
    >>> m = np.zeros((8, 8), np.float32); m[2:5, 2:5] = 1.0
    >>> boxes_at_threshold(m, 0.5).tolist(), best_ious(m, np.array([0.5]), np.array([[2, 2, 5, 5]]))[1].tolist()
    ([[2, 2, 5, 5]], [1.0])
"""

from __future__ import annotations

import cv2
import numpy as np


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of inclusive-pixel boxes, ``[A, 4] x [B, 4] -> [A, B]``.

    A non-positive union gives 0, so two ``[0, 0, 0, 0]`` boxes (one pixel
    each) have IoU 1.

    >>> box_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0], [0, 0, 1, 1]])).tolist()
    [[1.0, 0.25]]
    """
    a = np.asarray(boxes_a, dtype=np.int64)[:, None, :]
    b = np.asarray(boxes_b, dtype=np.int64)[None, :, :]
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    degenerate = union <= 0
    iou = inter / np.where(degenerate, 1, union)
    iou[degenerate] = 0.0
    return iou


def scoremap_to_uint8(scoremap: np.ndarray) -> np.ndarray:
    """``floor(s * 255)`` as uint8, in the map's own dtype like the reference."""
    return (scoremap * 255).astype(np.uint8)


def integer_thresholds(taus: np.ndarray, max_value: int) -> np.ndarray:
    """``int(tau * m)`` for every tau, with ``m`` the uint8 map's maximum."""
    return (np.asarray(taus, dtype=np.float64) * np.float64(max_value)).astype(np.int64)


def _trace_tiles(
    u: np.ndarray, levels: np.ndarray, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One findContours call over the crops ``u[y0:y1+1, x0:x1+1] >= level`` stacked vertically.

    Returns per contour: the tile it belongs to, its box in map pixels and
    twice its polygon area, in OpenCV's order within each tile.
    """
    height, width = u.shape
    tile_heights = y1 - y0 + 1
    # One empty separator row after every tile keeps tiles apart.
    tile_starts = np.concatenate([[0], np.cumsum(tile_heights + 1)[:-1]])
    canvas = np.zeros((int(np.sum(tile_heights + 1)), int((x1 - x0 + 1).max())), np.uint8)
    for i, level in enumerate(levels):
        top = tile_starts[i]
        canvas[top : top + tile_heights[i], : x1[i] - x0[i] + 1] = u[y0[i] : y1[i] + 1, x0[i] : x1[i] + 1] >= level
    contours = cv2.findContours(canvas, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    lengths = np.fromiter((len(c) for c in contours), np.int64, len(contours))
    points = np.concatenate(contours, axis=0).reshape(-1, 2).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    px, py = points[:, 0], points[:, 1]
    tile = np.searchsorted(tile_starts, py[starts], side="right") - 1
    # Shoelace with each contour closed on itself, exactly as contourArea
    # (integer terms, so the sum is exact).
    prev = np.arange(len(points)) - 1
    prev[starts] = starts + lengths - 1
    twice_area = np.abs(np.add.reduceat(px[prev] * py - py[prev] * px, starts))
    shift_x = x0[tile]
    shift_y = y0[tile] - tile_starts[tile]
    boxes = np.stack(
        [
            np.minimum.reduceat(px, starts) + shift_x,
            np.minimum.reduceat(py, starts) + shift_y,
            # boundingRect's x + w is one past the last pixel, clipped at R - 1.
            np.minimum(np.maximum.reduceat(px, starts) + 1 + shift_x, width - 1),
            np.minimum(np.maximum.reduceat(py, starts) + 1 + shift_y, height - 1),
        ],
        axis=1,
    )
    order = np.argsort(tile, kind="stable")
    return tile[order], boxes[order], twice_area[order]


class ContourBoxes:
    """All boxes of one uint8 map at a set of foreground levels.

    ``levels`` are uint8 values present in the map; level ``v`` stands for the
    foreground ``u >= v`` (that is ``u > T`` for every ``T`` from the next
    lower present value up to ``v - 1``). Each level's foreground is cropped
    to its bounding rows and columns plus one pixel (inside the image), which
    contour tracing cannot tell apart from the whole image, and the crops are
    traced in stacks of up to 16 map areas, fewer once a call returns more
    than ``CONTOURS_PER_CALL`` contours: OpenCV's tree building grows faster
    than linearly with the contours of one call.

    Attributes, one row per contour, grouped by level in OpenCV's own order
    within a level:

    - ``level_index``: which level the contour belongs to;
    - ``boxes``: ``[x0, y0, min(x+w, R-1), min(y+h, R-1)]`` in map pixels;
    - ``twice_area``: twice ``cv2.contourArea``, an exact integer.
    """

    CONTOURS_PER_CALL = 2048

    def __init__(self, u: np.ndarray, levels: np.ndarray):
        height, width = u.shape
        levels = np.asarray(levels, dtype=np.uint8)
        rows = u.max(axis=1)[None, :] >= levels[:, None]
        cols = u.max(axis=0)[None, :] >= levels[:, None]
        y0 = np.maximum(rows.argmax(axis=1) - 1, 0)
        y1 = np.minimum(height - rows[:, ::-1].argmax(axis=1), height - 1)
        x0 = np.maximum(cols.argmax(axis=1) - 1, 0)
        x1 = np.minimum(width - cols[:, ::-1].argmax(axis=1), width - 1)
        crop_pixels = (y1 - y0 + 2) * (x1 - x0 + 1)
        budget = 16 * height * width
        parts = []
        begin = 0
        while begin < len(levels):
            end = begin + max(1, int(np.searchsorted(np.cumsum(crop_pixels[begin:]), budget, side="right")))
            idx = np.arange(begin, end)
            tile, boxes, area = _trace_tiles(u, levels[idx], y0[idx], y1[idx], x0[idx], x1[idx])
            parts.append((idx[tile], boxes, area))
            if len(boxes) > self.CONTOURS_PER_CALL:
                budget = max(height * width // 4, budget // 4)
            begin = end
        self.level_index = np.concatenate([p[0] for p in parts])
        self.boxes = np.concatenate([p[1] for p in parts])
        self.twice_area = np.concatenate([p[2] for p in parts])
        self.num_levels = len(levels)

    def largest(self) -> np.ndarray:
        """Index of each level's largest contour (first in OpenCV's order on ties)."""
        position = np.arange(len(self.level_index))
        order = np.lexsort((position, -self.twice_area, self.level_index))
        first = np.concatenate([[True], self.level_index[order][1:] != self.level_index[order][:-1]])
        return order[first]


def best_ious(scoremap: np.ndarray, taus: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best IoU with any GT box at each tau, single- and multi-contour modes.

    Args:
        scoremap: ``[R, R]`` float map in [0, 1].
        taus: thresholds (the protocol's ``arange``, float64).
        gt_boxes: ``[G, 4]`` inclusive boxes in map pixels.

    Returns:
        ``(single, multi)``, each ``[len(taus)]`` float64.

    Example:
        >>> m = np.zeros((8, 8), np.float32); m[2:5, 2:5] = 1.0
        >>> best_ious(m, np.array([0.0, 0.5]), np.array([[2, 2, 5, 5]]))[0].tolist()
        [1.0, 1.0]
    """
    u = scoremap_to_uint8(scoremap)
    return best_ious_uint8(u, integer_thresholds(taus, int(u.max())), gt_boxes)


def best_ious_uint8(u: np.ndarray, thresholds: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`best_ious` on ``u = floor(255 s)`` at integer thresholds ``T``."""
    present = np.flatnonzero(np.bincount(u.ravel(), minlength=256))
    # The foreground u > T is u >= (smallest present value above T); beyond
    # the maximum it is empty.
    key = np.searchsorted(present, thresholds, side="right")
    keys, inverse = np.unique(key, return_inverse=True)
    filled = keys < len(present)
    gt = np.asarray(gt_boxes, dtype=np.int64).reshape(-1, 4)
    empty_iou = box_iou(np.zeros((1, 4), np.int64), gt).max()
    single = np.full(len(keys), empty_iou)
    multi = np.full(len(keys), empty_iou)
    if filled.any():
        found = ContourBoxes(u, present[keys[filled]].astype(np.uint8))
        contour_iou = box_iou(found.boxes, gt).max(axis=1)
        level_starts = np.flatnonzero(np.concatenate([[True], found.level_index[1:] != found.level_index[:-1]]))
        multi[filled] = np.maximum.reduceat(contour_iou, level_starts)
        single[filled] = contour_iou[found.largest()]
    return single[inverse], multi[inverse]


def boxes_at_threshold(scoremap: np.ndarray, tau: float, multi_contour: bool = False) -> np.ndarray:
    """The protocol's boxes ``[K, 4]`` of one ``[R, R]`` map at one tau.

    >>> m = np.zeros((8, 8), np.float32); m[2:5, 2:5] = 1.0
    >>> boxes_at_threshold(m, 0.5).tolist()
    [[2, 2, 5, 5]]
    """
    u = scoremap_to_uint8(scoremap)
    present = np.flatnonzero(np.bincount(u.ravel(), minlength=256))
    key = int(np.searchsorted(present, integer_thresholds([tau], int(u.max()))[0], side="right"))
    if key == len(present):
        return np.zeros((1, 4), np.int64)
    found = ContourBoxes(u, present[key : key + 1].astype(np.uint8))
    return found.boxes if multi_contour else found.boxes[found.largest()]
