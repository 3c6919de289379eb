"""The WSOL evaluation protocol of Choe et al. (CVPR 2020), to the last count.

Every rule of ``PROTOCOL.md`` lives here or in :mod:`keras_wsol.contours`
(the integer thresholds of a uint8 map, boxes from OpenCV contours, hole
contours included, one-pixel-wider boxes, inclusive-pixel IoU): score-map
normalization, truncated ground-truth boxes, MaxBoxAcc / MaxBoxAccV2, PxAP and
pIoU. The evaluators keep counts and
histograms only, so memory does not grow with the number of images.

Speed: a uint8 map has at most 256 distinct foregrounds ``u > T``, so the box
evaluator thresholds each distinct foreground once (not once per tau), crops
it to its bounding rows and columns, stacks all of them into one image
separated by empty rows and calls ``cv2.findContours`` once per map. Boxes,
polygon areas and IoUs of all contours are then computed with vectorized
integer arithmetic, which is exact, so the counts equal those of the
straightforward per-tau loop (``keras_wsol.protocol_reference``).

Example:
    >>> import numpy as np
    >>> ev = BoxEvaluator(Protocol(cam_curve_interval=0.01, resize_length=8))
    >>> m = np.zeros((1, 8, 8), np.float32); m[0, 2:5, 2:5] = 1.0
    >>> ev.update(m, [np.array([[2, 2, 5, 5]])])
    >>> ev.result()["MaxBoxAcc"]
    100.0
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import cv2
import numpy as np

if TYPE_CHECKING:
    from keras_wsol.data.splits import Split

from keras_wsol.contours import best_ious_uint8, integer_thresholds, scoremap_to_uint8
from keras_wsol.data.metadata import resize_box  # noqa: F401  (the protocol's box rule, used with the evaluators)

IOU_THRESHOLDS = (30, 50, 70)
DEFAULT_RESIZE_LENGTH = 224


@dataclass(frozen=True)
class Protocol:
    """The protocol's settings, one value for every evaluation of a run.

    Attributes:
        cam_curve_interval: spacing of the taus (0.01, or 0.001 in the field).
        resize_length: ``R``; score maps and boxes are evaluated at ``R x R``.
        fixed_threshold: a tau also reported on its own (older papers: 0.2); None for none.

    >>> Protocol().resize_length, Protocol(cam_curve_interval=0.001).taus()[:2].tolist()
    (224, [0.0, 0.001])
    """

    cam_curve_interval: float = 0.01
    resize_length: int = DEFAULT_RESIZE_LENGTH
    fixed_threshold: float | None = 0.2

    def taus(self) -> np.ndarray:
        """The thresholds ``0, interval, ...`` below 1."""
        return threshold_list(self.cam_curve_interval)


def threshold_list(cam_curve_interval: float) -> np.ndarray:
    """The protocol's taus: ``numpy.arange(0, 1, interval)`` in float64.

    >>> len(threshold_list(0.01)), len(threshold_list(0.001))
    (100, 1000)
    """
    if not 0 < cam_curve_interval < 1:
        raise ValueError(f"cam_curve_interval must be in (0, 1), got {cam_curve_interval}")
    return np.arange(0, 1, cam_curve_interval)


def normalize_scoremap(scoremap: np.ndarray) -> np.ndarray:
    """Min-max normalize one map; all zeros if it has a NaN or is constant.

    The arithmetic order is the reference's (subtract the min, then divide by
    the new max), in the map's own dtype.

    >>> normalize_scoremap(np.array([[1.0, 3.0]])).tolist()
    [[0.0, 1.0]]
    """
    cam = np.array(scoremap, copy=True)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam -= cam.min()
    cam /= cam.max()
    return cam


def resize_scoremap(scoremap: np.ndarray, resize_length: int = DEFAULT_RESIZE_LENGTH) -> np.ndarray:
    """Bicubic resize to ``R x R`` (OpenCV), then :func:`normalize_scoremap`.

    >>> resize_scoremap(np.eye(4, dtype=np.float32), 8).shape
    (8, 8)
    """
    cam = np.asarray(scoremap)
    if cam.dtype not in (np.float32, np.float64):
        cam = cam.astype(np.float32)
    cam = cv2.resize(cam, (resize_length, resize_length), interpolation=cv2.INTER_CUBIC)
    return normalize_scoremap(cam)


def check_scoremap(scoremap: np.ndarray, resize_length: int, where: str = "score map") -> None:
    """Raise ``ValueError`` naming ``where`` unless the map is R x R, finite, in [0, 1]."""
    if scoremap.ndim != 2 or scoremap.shape != (resize_length, resize_length):
        raise ValueError(
            f"{where}: expected a 2-D {resize_length}x{resize_length} score map, got shape {scoremap.shape}"
        )
    if not np.issubdtype(scoremap.dtype, np.floating):
        raise ValueError(f"{where}: expected a float score map, got dtype {scoremap.dtype}")
    if np.isnan(scoremap).any():
        raise ValueError(f"{where}: score map contains NaN")
    if scoremap.min() < 0 or scoremap.max() > 1:
        raise ValueError(f"{where}: score map values must lie in [0, 1], got [{scoremap.min()}, {scoremap.max()}]")


@functools.lru_cache(maxsize=1)
def _thread_pool() -> ThreadPoolExecutor:
    """One pool of a thread per core, made on first use and shared by every evaluator."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="box_evaluator")


class BoxEvaluator:
    """Streaming MaxBoxAcc / MaxBoxAccV2 (and Top-1 / GT-known Loc) over score maps.

    Both box modes are counted from the same contours: single-contour
    (largest ``contourArea``) for MaxBoxAcc, Top-1 Loc and GT-known Loc, and
    multi-contour (every contour, hole contours included) for MaxBoxAccV2.

    Args:
        protocol: the taus' spacing, ``R`` (maps must be ``R x R``, boxes in
            ``R`` pixels) and the fixed tau also reported on its own.
        iou_thresholds: IoU levels in percent (MaxBoxAccV2 averages them).

    Example:
        >>> ev = BoxEvaluator(Protocol(resize_length=8, fixed_threshold=0.2))
        >>> m = np.zeros((1, 8, 8), np.float32); m[0, 1:4, 1:4] = 1.0
        >>> ev.update(m, [np.array([[1, 1, 4, 4]])], labels=[0], logits=[[2.0, 1.0]])
        >>> r = ev.result(); r["Top-1 Loc"], r["GT-known Loc@0.2"]
        (100.0, 100.0)
    """

    def __init__(self, protocol: Protocol = Protocol(), iou_thresholds: Iterable[int] = IOU_THRESHOLDS):
        self.cam_curve_interval = protocol.cam_curve_interval
        self.taus = protocol.taus()
        self.iou_thresholds = tuple(int(t) for t in iou_thresholds)
        if 50 not in self.iou_thresholds:
            raise ValueError("iou_thresholds must contain 50 (MaxBoxAcc and GT-known Loc use it)")
        self.resize_length = protocol.resize_length
        fixed_threshold = protocol.fixed_threshold
        if fixed_threshold is not None and not 0 <= fixed_threshold < 1:
            raise ValueError(f"fixed_threshold must be in [0, 1), got {fixed_threshold}")
        self.fixed_threshold = fixed_threshold
        n = len(self.taus) + (fixed_threshold is not None)
        # correct[mode][iou] counts images whose best IoU clears the level, per tau.
        self.correct = {m: {t: np.zeros(n, np.int64) for t in self.iou_thresholds} for m in ("single", "multi")}
        self.top1_loc = np.zeros(n, np.int64)
        self.top1_cls = 0
        self.top5_cls = 0
        self.num_images = 0
        self.num_classified = 0

    def update(
        self,
        scoremaps: np.ndarray,
        gt_boxes: Sequence[np.ndarray],
        labels: Sequence[int] | None = None,
        logits: np.ndarray | None = None,
    ) -> None:
        """Count a batch.

        Args:
            scoremaps: ``[B, R, R]`` floats in [0, 1] (see :func:`resize_scoremap`).
            gt_boxes: ``B`` arrays ``[G, 4]`` of boxes in ``R`` pixels.
            labels: ground-truth classes, with ``logits`` ``[B, C]`` for the
                classification-aware metrics (Top-1/5 Cls, Top-1 Loc).
        """
        scoremaps = np.asarray(scoremaps)
        if len(scoremaps) != len(gt_boxes):
            raise ValueError(f"{len(scoremaps)} score maps but {len(gt_boxes)} box lists")
        for i, s in enumerate(scoremaps):
            check_scoremap(s, self.resize_length, where=f"score map {self.num_images + i}")
        taus = self.taus if self.fixed_threshold is None else np.append(self.taus, self.fixed_threshold)
        items = []
        for s, gt in zip(scoremaps, gt_boxes):
            u = scoremap_to_uint8(s)
            items.append((u, integer_thresholds(taus, int(u.max())), np.asarray(gt, np.int64).reshape(-1, 4)))
        # OpenCV and numpy release the GIL: the maps of a batch run in threads, as many as cores.
        results = list(_thread_pool().map(lambda item: best_ious_uint8(*item), items))
        top1 = None
        if logits is not None:
            if labels is None:
                raise ValueError("logits were given without labels")
            logits = np.asarray(logits, dtype=np.float64)
            labels = np.asarray(labels, dtype=np.int64)
            top1 = logits.argmax(axis=1) == labels
            k = min(5, logits.shape[1])
            top5 = (np.argsort(-logits, axis=1, kind="stable")[:, :k] == labels[:, None]).any(axis=1)
            self.top1_cls += int(top1.sum())
            self.top5_cls += int(top5.sum())
            self.num_classified += len(labels)
        for i, (single, multi) in enumerate(results):
            for mode, best in (("single", single), ("multi", multi)):
                for t in self.iou_thresholds:
                    self.correct[mode][t] += best >= t / 100
            if top1 is not None and top1[i]:
                self.top1_loc += single >= 0.5
        self.num_images += len(items)

    def curves(self) -> dict[str, dict[int, np.ndarray]]:
        """BoxAcc (percent) per tau for each mode and IoU level."""
        n = len(self.taus)
        return {
            mode: {t: 100.0 * c[:n] / max(self.num_images, 1) for t, c in per_iou.items()}
            for mode, per_iou in self.correct.items()
        }

    def result(self) -> dict[str, float]:
        """The protocol's numbers, accuracies in percent; thresholds are taus in [0, 1)."""
        if self.num_images == 0:
            raise ValueError("BoxEvaluator.result() called before any update()")
        n = len(self.taus)
        curves = self.curves()
        single50 = curves["single"][50]
        best = int(np.argmax(single50))
        out: dict[str, float] = {
            "num_images": self.num_images,
            "cam_curve_interval": self.cam_curve_interval,
            "MaxBoxAcc": float(single50[best]),
            "MaxBoxAcc_threshold": float(self.taus[best]),
            "GT-known Loc": float(single50[best]),
        }
        for t in self.iou_thresholds:
            out[f"MaxBoxAccV2@{t}"] = float(curves["multi"][t].max())
            out[f"MaxBoxAccV2@{t}_threshold"] = float(self.taus[int(np.argmax(curves["multi"][t]))])
        out["MaxBoxAccV2"] = float(np.mean([out[f"MaxBoxAccV2@{t}"] for t in self.iou_thresholds]))
        if self.num_classified:
            top1_loc = 100.0 * self.top1_loc[:n] / self.num_images
            out["Top-1 Cls"] = 100.0 * self.top1_cls / self.num_classified
            out["Top-5 Cls"] = 100.0 * self.top5_cls / self.num_classified
            out["Top-1 Loc"] = float(top1_loc.max())
            out["Top-1 Loc_threshold"] = float(self.taus[int(np.argmax(top1_loc))])
        if self.fixed_threshold is not None:
            tau = f"@{self.fixed_threshold:g}"
            out["GT-known Loc" + tau] = 100.0 * float(self.correct["single"][50][n]) / self.num_images
            if self.num_classified:
                out["Top-1 Loc" + tau] = 100.0 * float(self.top1_loc[n]) / self.num_images
        return out


class MaskEvaluator:
    """Streaming PxAP and pIoU from summed score histograms (mask datasets).

    Example:
        >>> ev = MaskEvaluator(Protocol(resize_length=4))
        >>> gt = np.zeros((1, 4, 4), bool); gt[0, :2] = True
        >>> ev.update(gt.astype(np.float32), gt)
        >>> ev.result()["PxAP"]
        100.0
    """

    def __init__(self, protocol: Protocol = Protocol()):
        self.cam_curve_interval = protocol.cam_curve_interval
        self.taus = protocol.taus()
        self.resize_length = protocol.resize_length
        # Bins [0, bw), ..., [1 - bw, 1), [1, 2), [2, 3]: a score of 1.0 lands in [1, 2).
        self.bin_edges = np.append(self.taus, [1.0, 2.0, 3.0])
        self.positive_hist = np.zeros(len(self.bin_edges) - 1, np.float64)
        self.negative_hist = np.zeros(len(self.bin_edges) - 1, np.float64)
        self.num_images = 0

    def update(self, scoremaps: np.ndarray, gt_masks: np.ndarray, ignore_masks: np.ndarray | None = None) -> None:
        """Add ``[B, R, R]`` maps with boolean foreground masks (and optional ignore masks)."""
        scoremaps = np.asarray(scoremaps)
        for i, s in enumerate(scoremaps):
            check_scoremap(s, self.resize_length, where=f"score map {self.num_images + i}")
            fg = np.asarray(gt_masks[i], bool)
            bg = ~fg
            if ignore_masks is not None:
                bg &= ~np.asarray(ignore_masks[i], bool)
            self.positive_hist += np.histogram(s[fg], bins=self.bin_edges)[0]
            self.negative_hist += np.histogram(s[bg], bins=self.bin_edges)[0]
        self.num_images += len(scoremaps)

    def counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tp, fp, fn)`` pixel counts from the highest threshold bin down."""
        tp = self.positive_hist[::-1].cumsum()
        fp = self.negative_hist[::-1].cumsum()
        fn = self.positive_hist.sum() - tp
        if ((tp + fn) <= 0).all():
            raise ValueError("No positive ground-truth pixels in the evaluated masks.")
        if ((tp + fp) <= 0).all():
            raise ValueError("No positive predictions in the evaluated score maps.")
        return tp, fp, fn

    def pr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(precision, recall)`` from the highest threshold down (NaN where nothing is predicted)."""
        tp, fp, fn = self.counts()
        with np.errstate(invalid="ignore", divide="ignore"):
            return tp / (tp + fp), tp / (tp + fn)

    def result(self) -> dict[str, float]:
        """PxAP and pIoU in percent."""
        tp, fp, fn = self.counts()
        precision, recall = self.pr_curve()
        predicted = (tp + fp) != 0
        pxap = 100.0 * float((precision[1:] * np.diff(recall))[predicted[1:]].sum())
        return {
            "num_images": self.num_images,
            "cam_curve_interval": self.cam_curve_interval,
            "PxAP": pxap,
            "pIoU": 100.0 * float((tp / (tp + fp + fn)).max()),
        }


TABLE_KEYS = (
    "Top-1 Cls",
    "Top-1 Loc",
    "GT-known Loc",
    "MaxBoxAcc",
    "MaxBoxAccV2",
    "PxAP",
    "Deletion AUC",
    "Insertion AUC",
)


class SplitEvaluation:
    """Box evaluators (where the split has boxes) and mask evaluators (where it has masks) for one split.

    The one way score maps become metrics: the TensorFlow paths
    (:mod:`keras_wsol.reporting`) and evaluator-only mode (maps on disk) both
    feed it. ``masks=False`` leaves masks out (the export's threshold search
    needs boxes only). ``logits`` with the maps add the classification and
    Top-1 Loc numbers.

    Example:
        >>> from keras_wsol.data.splits import Split
        >>> split = Split(image_ids=["a"], labels=np.array([0]), num_classes=2, sizes=np.array([[8, 8]]),
        ...               boxes=[np.array([[2.0, 2.0, 4.0, 4.0]])], paths=["a.jpg"])
        >>> run = SplitEvaluation(split, Protocol(resize_length=8))
        >>> m = np.zeros((1, 8, 8), np.float32); m[0, 2:5, 2:5] = 1.0
        >>> run.update(m); run.result()["MaxBoxAcc"]
        100.0
    """

    def __init__(self, split: Split, protocol: Protocol = Protocol(), masks: bool = True):
        if not (split.has_boxes or split.masks is not None):
            raise ValueError("the split has neither boxes nor masks to evaluate against")
        self.split = split
        self.resize_length = protocol.resize_length
        self.gt_boxes = None
        self.boxes = None
        if split.has_boxes:
            self.gt_boxes = split.resized_boxes(protocol.resize_length)
            self.boxes = BoxEvaluator(protocol)
        self.masks = None
        if masks and split.masks is not None:
            self.masks = MaskEvaluator(protocol)
        self.seen = 0

    def update(self, scoremaps: np.ndarray, logits: np.ndarray | None = None) -> None:
        """Add ``[B, R, R]`` protocol maps for the next ``B`` images of the split."""
        lo, hi = self.seen, self.seen + len(scoremaps)
        if self.boxes is not None:
            labels = self.split.labels[lo:hi]
            self.boxes.update(
                scoremaps, self.gt_boxes[lo:hi], labels=labels if logits is not None else None, logits=logits
            )
        if self.masks is not None:
            foreground, ignore = zip(*(self.split.masks(i, self.resize_length) for i in range(lo, hi)))
            self.masks.update(scoremaps, np.stack(foreground), np.stack(ignore))
        self.seen = hi

    def result(self) -> dict:
        out = self.boxes.result() if self.boxes is not None else {}
        if self.masks is not None:
            out.update({k: v for k, v in self.masks.result().items() if k not in out})
        return out


def format_table(results: dict[str, dict]) -> str:
    """A fixed-width table: one row per run, the protocol's headline numbers.

    Example:
        >>> print(format_table({"cam": {"MaxBoxAccV2": 74.06, "PxAP": 81.66}}))
                             MaxBoxAccV2          PxAP
        cam                        74.06         81.66
    """
    keys = [k for k in TABLE_KEYS if any(k in r for r in results.values())]
    header = f"{'':18s}" + "".join(f"{k:>14s}" for k in keys)
    rows = [header]
    for name, r in results.items():
        rows.append(f"{name:18s}" + "".join(f"{r[k]:14.2f}" if k in r else f"{'-':>14s}" for k in keys))
    return "\n".join(rows)
