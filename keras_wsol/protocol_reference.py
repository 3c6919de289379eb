"""The straightforward per-tau box protocol, kept as the oracle for the fast evaluator.

It thresholds and traces contours once for every tau, exactly as the
reference code does, and is deliberately slow: tests check that
``keras_wsol.evaluation.BoxEvaluator`` gives the same counts, and
``benchmarks/evaluator_speed.py`` times the two side by side.

Example:
    >>> import numpy as np
    >>> m = np.zeros((8, 8), np.float32); m[2:5, 2:5] = 1.0
    >>> boxes_at_tau(m, 0.5, multi_contour=False)
    [[2, 2, 5, 5]]
"""

from __future__ import annotations

import cv2
import numpy as np

from keras_wsol.contours import box_iou
from keras_wsol.evaluation import threshold_list


def boxes_at_tau(scoremap: np.ndarray, tau: float, multi_contour: bool) -> list[list[int]]:
    """Boxes of one ``[R, R]`` map in [0, 1] at one tau (PROTOCOL.md, steps 1-6)."""
    height, width = scoremap.shape
    image = np.expand_dims((scoremap * 255).astype(np.uint8), 2)
    _, binary = cv2.threshold(image, int(tau * np.max(image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return [[0, 0, 0, 0]]
    if not multi_contour:
        contours = [max(contours, key=cv2.contourArea)]
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    return boxes


def box_counts(
    scoremaps: list[np.ndarray],
    gt_boxes: list[np.ndarray],
    cam_curve_interval: float,
    iou_thresholds: tuple[int, ...] = (30, 50, 70),
) -> dict[str, dict[int, np.ndarray]]:
    """Correct-image counts per tau for each mode and IoU level, one tau at a time."""
    taus = threshold_list(cam_curve_interval)
    counts = {m: {t: np.zeros(len(taus), np.int64) for t in iou_thresholds} for m in ("single", "multi")}
    for scoremap, gt in zip(scoremaps, gt_boxes):
        for mode, multi in (("single", False), ("multi", True)):
            best = np.array([box_iou(np.array(boxes_at_tau(scoremap, tau, multi)), gt).max() for tau in taus])
            for t in iou_thresholds:
                counts[mode][t] += best >= t / 100
    return counts
