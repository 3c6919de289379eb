"""Evaluate a model (or precomputed maps) on a split with the protocol; tables, baselines, pictures.

Data flows one way: model -> raw class maps -> protocol resize -> evaluators
-> numbers and pictures. The evaluators see only score maps and ground truth.

Example:
    >>> maps = baseline_maps("center_gaussian", 2, 16)
    >>> maps.shape, float(maps.max())
    ((2, 16, 16), 1.0)
"""

from __future__ import annotations

import os
import sys

import cv2
import numpy as np

from keras_wsol import contours, evaluation, localizers, visualize
from keras_wsol import faithfulness as rise
from keras_wsol.atomic import write_json
from keras_wsol.data import pipeline
from keras_wsol.data.splits import Split
from keras_wsol.evaluation import Protocol, SplitEvaluation
from keras_wsol.maps import upsample_normalized

BASELINES = ("full_image", "center_gaussian")


def baseline_maps(kind: str, count: int, resize_length: int) -> np.ndarray:
    """Trivial score maps: ``full_image`` (ones, one corner pixel 0 so the
    constant-map rule does not blank it) or ``center_gaussian`` (sigma R/4)."""
    r = resize_length
    if kind == "full_image":
        single = np.ones((r, r), np.float32)
        single[0, 0] = 0.0
    elif kind == "center_gaussian":
        yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
        c, sigma = (r - 1) / 2, r / 4
        single = evaluation.normalize_scoremap(np.exp(-((yy - c) ** 2 + (xx - c) ** 2) / (2 * sigma**2)))
    else:
        raise ValueError(f"unknown baseline {kind!r}; choose one of {BASELINES}")
    return np.broadcast_to(single, (count, r, r))


def model_scoremaps(localizer, split: Split, resize_length: int, batch_size: int = 64, served: bool = False):
    """Yield ``(maps [B, R, R], logits [B, C])`` for the ground-truth class, batch by batch.

    ``localizer`` is a :class:`keras_wsol.localizers.Localizer`; the split's
    images are resized to its model's side. Its raw maps (feature resolution)
    get the protocol's resize to ``R`` (OpenCV), as CAMs do; ``served=True``
    gives instead the maps an export serves: bilinear to ``R``, min-max.
    """
    for images, labels in pipeline.eval_dataset(split, batch_size, int(localizer.model.image_size)):
        raw, logits = localizer.raw_maps(images.numpy(), labels.numpy())
        if served:
            maps = np.asarray(upsample_normalized(raw, (resize_length, resize_length)))
        else:
            maps = np.stack([evaluation.resize_scoremap(m, resize_length) for m in np.asarray(raw)])
        yield maps, np.asarray(logits)


def score(
    localizer,
    split: Split,
    protocol: Protocol = Protocol(),
    batch_size: int = 64,
    baselines: tuple = (),
    keep: int = 0,
    served: bool = False,
    masks: bool = True,
    progress: str = "",
) -> tuple[dict[str, SplitEvaluation], np.ndarray]:
    """The one scoring loop: ``localizer``'s maps (and ``baselines``' trivial maps) through the evaluators.

    Returns ``({"model": run, **baselines}, the first ``keep`` maps)``; see
    :func:`model_scoremaps` for ``served``. With a ``progress`` title and a
    terminal on standard output, a progress bar counts the images.
    """
    runs = {name: SplitEvaluation(split, protocol, masks) for name in ("model", *baselines)}
    kept = []
    bar = progress_bar(progress, len(split))
    for maps, logits in model_scoremaps(localizer, split, protocol.resize_length, batch_size, served):
        if bar is not None:
            bar.add(len(maps))
        runs["model"].update(maps, logits)
        for name in baselines:
            runs[name].update(baseline_maps(name, len(maps), protocol.resize_length), logits)
        if sum(len(m) for m in kept) < keep:
            kept.append(maps)
    r = protocol.resize_length
    return runs, (np.concatenate(kept)[:keep] if kept else np.zeros((0, r, r), np.float32))


def progress_bar(title: str, images: int):
    """A Keras progress bar over ``images`` under ``title`` when standard output is a terminal, else None.

    Example:
        >>> progress_bar("test split", 10) is None  # not a terminal here
        True
    """
    if not (title and sys.stdout.isatty()):
        return None
    import keras

    print(title)
    return keras.utils.Progbar(images, unit_name="image")


def evaluate_split(
    model,
    split: Split,
    output_dir: str | None = None,
    protocol: Protocol = Protocol(),
    batch_size: int = 64,
    num_pictures: int = 8,
    localizer=None,
    progress: str = "",
    faithfulness_settings: dict | None = None,
) -> dict[str, dict]:
    """The model and both trivial baselines on ``split``: ``{"model": ..., "full_image": ..., ...}``.

    The model's maps come from ``localizer`` (default: CAM at the classifier
    layer). With ``output_dir``, writes ``metrics.json`` and the pictures there.
    ``progress``: a title for a progress bar on a terminal (:func:`score`).
    ``faithfulness_settings`` (``steps``, ``fill``): add the model's deletion
    and insertion AUC (:func:`faithfulness`).
    """
    localizer = localizer or localizers.get_localizer(model, "cam")
    runs, kept = score(localizer, split, protocol, batch_size, baselines=BASELINES, keep=64, progress=progress)
    results = {name: run.result() for name, run in runs.items()}
    if faithfulness_settings is not None:
        results["model"].update(faithfulness(localizer, split, batch_size=batch_size, **faithfulness_settings))
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        write_json(results, os.path.join(output_dir, "metrics.json"))
        write_pictures(
            runs["model"], results["model"], kept, output_dir, num_pictures, runs, int(localizer.model.image_size)
        )
    return results


def faithfulness(localizer, split: Split, steps: int = 16, fill: str = "blur", batch_size: int = 64) -> dict:
    """Mean deletion and insertion AUC (:mod:`keras_wsol.faithfulness`) of ``localizer``'s maps on ``split``.

    The maps and probabilities are those of each image's ground-truth class,
    as the box scores'; the images at the model's input size.
    """
    deletion, insertion = [], []
    for images, labels in pipeline.eval_dataset(split, batch_size, int(localizer.model.image_size)):
        raw, _ = localizer.raw_maps(images.numpy(), labels.numpy())
        maps = np.asarray(upsample_normalized(raw, images.shape[1:3]))
        d, i = rise.curves(localizer.model, images.numpy(), maps, labels.numpy(), steps, fill)
        deletion.append(rise.auc(d))
        insertion.append(rise.auc(i))
    return {
        "Deletion AUC": 100 * float(np.concatenate(deletion).mean()),
        "Insertion AUC": 100 * float(np.concatenate(insertion).mean()),
    }


def sweep_localizers(
    model,
    split: Split,
    localizer_names: list[str],
    layers: list[str],
    protocol: Protocol = Protocol(),
    batch_size: int = 64,
    progress: bool = False,
    faithfulness_settings: dict | None = None,
    **options,
) -> dict[str, dict]:
    """Every localizer at every layer on ``split``: ``{"bagcams@low": {...}, ...}`` (Tables 4-6 of BagCAMs).

    A localizer is left out at a layer where it is not defined
    (``Localizer.supports``: CAM exists only at the classifier's input).
    ``progress``: a progress bar per localizer on a terminal;
    ``faithfulness_settings`` as :func:`evaluate_split`.
    """
    results = {}
    for layer in layers:
        for localizer_name in localizer_names:
            if not localizers.LOCALIZERS[localizer_name].supports(model, layer):
                continue
            localizer = localizers.get_localizer(model, localizer_name, layer, **options)
            name = f"{localizer_name}@{layer}"
            total = len(localizer_names) * len(layers)
            title = f"{name} ({len(results) + 1} of {total} at most)" if progress else ""
            results[name] = score(localizer, split, protocol, batch_size, progress=title)[0]["model"].result()
            if faithfulness_settings is not None:
                results[name].update(faithfulness(localizer, split, batch_size=batch_size, **faithfulness_settings))
    return results


def threshold_curves(
    models: dict[str, object], split: Split, protocol: Protocol = Protocol(), batch_size: int = 64
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(taus, {name: BoxAcc per tau})``: single-contour BoxAcc at IoU 0.5 of each model's own maps.

    How much a model's localization depends on the threshold (ORNet's
    claim, Fig. 11 of its paper), side by side.
    """
    if not split.has_boxes:
        raise ValueError("BoxAcc curves need a split with boxes")
    curves = {}
    for name, model in models.items():
        run = score(localizers.get_localizer(model, "cam"), split, protocol, batch_size, masks=False)[0]["model"]
        curves[name] = run.boxes.curves()["single"][50]
    return protocol.taus(), curves


def threshold_span(taus: np.ndarray, curve: np.ndarray, within: float = 5.0) -> tuple[float, float]:
    """The lowest and highest tau whose BoxAcc is within ``within`` points of the curve's best.

    >>> threshold_span(np.array([0.1, 0.2, 0.3, 0.4]), np.array([50.0, 80.0, 78.0, 60.0]))
    (0.2, 0.3)
    """
    near = np.flatnonzero(np.asarray(curve) >= np.max(curve) - within)
    return float(taus[near[0]]), float(taus[near[-1]])


def write_pictures(
    run: SplitEvaluation, result: dict, maps: np.ndarray, output_dir: str, count: int, runs: dict, image_size: int
) -> None:
    """BoxAcc curves (model, with the baselines dashed), PR curve, best and worst overlays."""
    if run.masks is not None:
        precision, recall = run.masks.pr_curve()
        visualize.plot_pr_curve(precision, recall, os.path.join(output_dir, "pr_curve.png"), result["PxAP"])
    if run.boxes is None:
        return
    taus = run.boxes.taus
    curves = run.boxes.curves()
    extra = {f"{name} (single, IoU 50)": r.boxes.curves()["single"][50] for name, r in runs.items() if r is not run}
    visualize.plot_box_acc_curves(
        taus,
        curves["multi"],
        os.path.join(output_dir, "box_acc_multi_contour.png"),
        "MaxBoxAccV2 curves (multi-contour)",
    )
    visualize.plot_box_acc_curves(
        taus,
        {50: curves["single"][50]},
        os.path.join(output_dir, "box_acc_single_contour.png"),
        "MaxBoxAcc curve (single-contour)",
        extra,
    )
    tau = result["MaxBoxAcc_threshold"]
    r = run.resize_length
    boxes = [contours.boxes_at_threshold(m, tau) for m in maps]
    ious = np.array([contours.box_iou(b, g).max() for b, g in zip(boxes, run.gt_boxes)])
    order = np.argsort(-ious, kind="stable")
    picks = np.concatenate([order[: count // 2], order[::-1][: count - count // 2]])
    shown = pipeline.first_images(run.split, len(maps), image_size).astype(np.uint8)
    images = np.stack([cv2.resize(shown[i], (r, r), interpolation=cv2.INTER_LINEAR) for i in picks])
    titles = [f"{'good' if k < count // 2 else 'bad'}: IoU {ious[i]:.2f}" for k, i in enumerate(picks)]
    visualize.plot_overlays(
        images,
        maps[picks],
        [boxes[i] for i in picks],
        [run.gt_boxes[i] for i in picks],
        titles,
        os.path.join(output_dir, "overlays.png"),
        tau,
        "MaxBoxAcc's threshold on this split",
    )
