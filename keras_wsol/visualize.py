"""Pictures (PNG, matplotlib): BoxAcc curves, precision-recall, map overlays.

Example:
    >>> import numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "curve.png")
    >>> plot_box_acc_curves(np.arange(0, 1, 0.1), {50: np.linspace(0, 90, 10)}, path)
    >>> os.path.getsize(path) > 0
    True
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def overlay(image: np.ndarray, scoremap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 blend of an image and a [0, 1] map coloured with jet."""
    heat = plt.get_cmap("jet")(np.clip(scoremap, 0, 1))[..., :3] * 255
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


def plot_box_acc_curves(
    taus: np.ndarray,
    curves: dict[int, np.ndarray],
    path: str,
    title: str = "BoxAcc vs threshold",
    extra: dict | None = None,
) -> None:
    """BoxAcc per tau for each IoU level, the best tau of each marked; ``extra`` adds labelled curves."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for iou, acc in curves.items():
        best = int(np.argmax(acc))
        (line,) = ax.plot(taus, acc, label=f"IoU {iou}")
        ax.plot(taus[best], acc[best], "o", color=line.get_color())
    for name, acc in (extra or {}).items():
        ax.plot(taus, acc, "--", label=name)
    ax.set(xlabel="CAM threshold tau", ylabel="BoxAcc (%)", title=title, ylim=(0, 100))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pr_curve(precision: np.ndarray, recall: np.ndarray, path: str, pxap: float) -> None:
    """Pixel precision-recall curve with its PxAP."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision)
    ax.set(xlabel="recall", ylabel="precision", title=f"PxAP {pxap:.1f}", xlim=(0, 1), ylim=(0, 1.05))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_overlays(
    images: np.ndarray,
    scoremaps: np.ndarray,
    predicted_boxes: list[np.ndarray],
    gt_boxes: list[np.ndarray],
    titles: list[str],
    path: str,
    threshold: float | None = None,
    threshold_source: str = "",
    panel: tuple[float, float] = (3.0, 3.0),
) -> None:
    """A grid of map overlays with predicted (red) and ground-truth (green) boxes, all in map pixels.

    A legend under the grid says what the colours are and the box
    threshold tau (with ``threshold_source``, where it came from).
    ``panel`` is each picture's ``(width, height)`` in inches (100 pixels
    an inch).
    """
    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    width, height = panel
    fig, axes = plt.subplots(rows, cols, figsize=(max(width * cols, 5), height * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, scoremap, pred, gt, title in zip(axes.ravel(), images, scoremaps, predicted_boxes, gt_boxes, titles):
        ax.imshow(overlay(image, scoremap))
        for boxes, colour in ((gt, "lime"), (pred, "red")):
            for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
                ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.5))
        ax.set_title(title, fontsize=8)
    legend = box_legend(threshold, threshold_source, any(len(np.asarray(g).reshape(-1, 4)) for g in gt_boxes))
    handles = [plt.Rectangle((0, 0), 1, 1, fill=False, color=colour, lw=1.5) for colour, _ in legend]
    lines = 1 if cols > 1 else len(legend)  # one row of entries, or one entry a row under a single image
    fig.legend(handles, [label for _, label in legend], loc="lower center", ncol=len(legend) // lines, fontsize=8)
    fig.tight_layout(rect=(0, 0.22 * lines / (height * rows), 1, 1))  # room for the legend
    fig.savefig(path, dpi=100)
    plt.close(fig)


def box_legend(threshold: float | None, source: str = "", ground_truth: bool = True) -> list[tuple[str, str]]:
    """``[(colour, label)]`` of an overlay's boxes: the predicted box at tau, and the ground truth if shown.

    >>> box_legend(0.23, "MaxBoxAcc's on this split")
    [('red', "predicted box (tau = 0.23, MaxBoxAcc's on this split)"), ('lime', 'ground truth')]
    """
    at = "" if threshold is None else f" (tau = {threshold:.2f}{f', {source}' if source else ''})"
    entries = [("red", f"predicted box{at}")]
    return entries + [("lime", "ground truth")] if ground_truth else entries
