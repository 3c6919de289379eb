"""SavedModel export for TF Serving: classify-and-localize signatures, versioned, written atomically.

:func:`export_model` writes ``<export_dir>/<model_name>/<version>/`` (TF
Serving's layout; the next free version by default) with two signatures
whose names and keys are a public contract:

``serving_default``
    input ``images``: float32 ``[batch, H, W, 3]``, RGB in 0-255, any
    ``H, W`` (resized to the model's side ``S`` in the graph, bilinear, as
    the training pipeline does). Outputs: ``probabilities`` ``[batch, C]``,
    ``classes`` int64 ``[batch]`` (top-1), ``scoremaps`` float32
    ``[batch, H, W]`` in ``[0, 1]`` (the predicted class's map, bilinear,
    min-max normalized), ``boxes`` int32 ``[batch, 4]`` ``x0, y0, x1, y1`` in
    input pixels.
``localize_encoded``
    input ``image_bytes``: string ``[batch]`` of encoded JPEG or PNG (TF
    Serving's REST API takes them as ``{"b64": ...}``); the same outputs,
    with ``scoremaps`` ``[batch, S, S]`` (images of one request may differ in
    size) and ``boxes`` in each image's own pixels.

Boxes are the protocol's single-contour box (largest ``cv2.contourArea``,
``x1 = min(x + w, S - 1)``) of the ``S x S`` map at the threshold stored in
the export (chosen on the validation split by :func:`validation_threshold`),
computed with graph ops (:mod:`keras_wsol.graph_boxes`), then scaled to input
pixels by ``int(x * W / S)``, ``int(y * H / S)``. The score maps come from the
localizer baked in (CAM by default, or any :mod:`keras_wsol.localizers`
variant at any layer); the backbone's preprocessing is part of the model.
The export needs only TensorFlow to load: no import of keras_wsol.

``assets.extra/keras_wsol.json`` records the method, localizer, layer,
threshold, side and where the weights came from.

The version folder appears atomically: the version is first claimed by
creating a hidden ``.incomplete-<version>`` folder (an exclusive ``mkdir``,
so two exports running at once never pick the same version: with a default
version the second takes the next one, with an explicit one it fails at
once), everything is written inside it, then renamed to the version folder.
An interrupted export leaves no version folder (TF Serving only loads
numeric folders), and the next export removes the claims of processes that
no longer run.

Example:
    >>> import tempfile
    >>> from keras_wsol.methods import CAM
    >>> model = CAM(num_classes=2, backbone="small", image_size=32)
    >>> path = export_model(model, tempfile.mkdtemp(), "demo", threshold=0.5)  # doctest: +SKIP
    >>> os.path.basename(path)  # doctest: +SKIP
    '1'
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import time

import keras
import tensorflow as tf

from keras_wsol import localizers
from keras_wsol.evaluation import Protocol
from keras_wsol.graph_boxes import largest_contour_boxes
from keras_wsol.maps import upsample_normalized

SIGNATURES = ("serving_default", "localize_encoded")
METADATA_FILE = os.path.join("assets.extra", "keras_wsol.json")
_INCOMPLETE = re.compile(r"^\.incomplete-(\d+)$")
_OWNER = "owner.pid"  # inside a claim: the exporting process
_UNOWNED_GRACE_SECONDS = 60  # a claim whose owner file is not written yet is young
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def validation_threshold(
    localizer: localizers.Localizer, split, cam_curve_interval: float = 0.01, batch_size: int = 64
) -> tuple[float, float]:
    """The tau the export's boxes use: MaxBoxAcc's (single contour, IoU 0.5) on a labelled split.

    The maps are scored exactly as the export makes them: the ground-truth
    class's map at the model's side ``S`` (bilinear, min-max), boxes scaled
    from each original image to ``S`` the protocol's way. Returns
    ``(tau, MaxBoxAcc at tau)``.

    Args:
        localizer: the localizer the export bakes in.
        split: a :class:`keras_wsol.data.splits.Split` with boxes (the val split).
    """
    from keras_wsol import reporting

    if not split.has_boxes:
        raise ValueError("the box threshold is chosen on a split with boxes; this one has none")
    protocol = Protocol(cam_curve_interval, resize_length=int(localizer.model.image_size))
    result = reporting.score(localizer, split, protocol, batch_size, served=True, masks=False)[0]["model"].result()
    return float(result["MaxBoxAcc_threshold"]), float(result["MaxBoxAcc"])


def scale_boxes(boxes: tf.Tensor, from_side, heights: tf.Tensor, widths: tf.Tensor) -> tf.Tensor:
    """Boxes ``[B, 4]`` on an ``S x S`` map -> each image's pixels: ``int(x * W / S)``, ``int(y * H / S)``."""
    boxes = tf.cast(boxes, tf.float64)
    side = tf.cast(from_side, tf.float64)
    w = tf.cast(widths, tf.float64)[:, None]
    h = tf.cast(heights, tf.float64)[:, None]
    scale = tf.concat([w, h, w, h], axis=1) / side
    return tf.cast(tf.floor(boxes * scale), tf.int32)


class ServingFunctions:
    """The graph behind both signatures, for one model, localizer and threshold.

    Args:
        localizer: a :class:`keras_wsol.localizers.Localizer` of the model
            (its ``model.image_size`` is the side ``S``).
        threshold: tau in ``[0, 1)`` for the boxes.
        classify_only: serve ``probabilities`` and ``classes`` alone (the
            baseline of ``benchmarks/serving_latency.py``).
    """

    def __init__(self, localizer: localizers.Localizer, threshold: float, classify_only: bool = False):
        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.localizer = localizer
        self.model = localizer.model
        self.side = int(self.model.image_size)
        self.threshold = float(threshold)
        self.classify_only = classify_only

    def _outputs(self, resized: tf.Tensor, heights: tf.Tensor, widths: tf.Tensor, map_size) -> dict:
        """All outputs for images already at ``S x S``; ``heights``/``widths`` are the originals."""
        if self.classify_only:
            logits = self.model(resized, training=False)
        else:
            raw, logits = self.localizer.raw_maps(resized)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
        out = {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}
        if not self.classify_only:
            on_model_grid = upsample_normalized(raw, (self.side, self.side))
            boxes = largest_contour_boxes(on_model_grid, self.threshold)
            out["boxes"] = scale_boxes(boxes, self.side, heights, widths)
            same = tf.logical_and(tf.equal(map_size[0], self.side), tf.equal(map_size[1], self.side))
            out["scoremaps"] = tf.cond(same, lambda: on_model_grid, lambda: upsample_normalized(raw, map_size))
        return out

    def serve_images(self, images: tf.Tensor) -> dict:
        """``serving_default``: float ``[B, H, W, 3]`` RGB 0-255."""
        shape = tf.shape(images)
        checks = [
            tf.debugging.Assert(
                tf.size(shape) == 4, ["images must be [batch, height, width, 3], got shape", shape], summarize=8
            ),
            tf.debugging.Assert(shape[-1] == 3, ["images must have 3 (RGB) channels, got shape", shape], summarize=8),
            tf.debugging.Assert(
                tf.reduce_all(shape[1:3] > 0), ["images must be at least 1x1 pixels, got shape", shape], summarize=8
            ),
        ]
        with tf.control_dependencies(checks):
            images = tf.ensure_shape(images, (None, None, None, 3))
            shape = tf.shape(images)
        resized = tf.image.resize(tf.cast(images, tf.float32), (self.side, self.side))
        batch = shape[:1]
        return self._outputs(resized, tf.fill(batch, shape[1]), tf.fill(batch, shape[2]), (shape[1], shape[2]))

    def serve_encoded(self, image_bytes: tf.Tensor) -> dict:
        """``localize_encoded``: string ``[B]`` of encoded JPEG or PNG."""
        jpeg = tf.strings.substr(image_bytes, 0, len(_JPEG_MAGIC)) == _JPEG_MAGIC
        png = tf.strings.substr(image_bytes, 0, len(_PNG_MAGIC)) == _PNG_MAGIC
        not_image = tf.where(~(jpeg | png))[:, 0]
        check = tf.debugging.Assert(
            tf.size(not_image) == 0,
            ["image_bytes: these items are not JPEG or PNG data (batch indices):", not_image],
            summarize=16,
        )
        with tf.control_dependencies([check]):
            image_bytes = tf.identity(image_bytes)

        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            size = tf.shape(image)[:2]
            resized = tf.image.resize(tf.cast(image, tf.float32), (self.side, self.side))
            return resized, size

        resized, sizes = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=(tf.TensorSpec((self.side, self.side, 3), tf.float32), tf.TensorSpec((2,), tf.int32)),
        )
        return self._outputs(resized, sizes[:, 0], sizes[:, 1], (self.side, self.side))


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_abandoned(model_dir: str) -> None:
    """Delete the hidden ``.incomplete-<version>`` claims whose exporting process is gone."""
    for name in os.listdir(model_dir):
        if not _INCOMPLETE.match(name):
            continue
        claim = os.path.join(model_dir, name)
        try:
            with open(os.path.join(claim, _OWNER)) as f:
                abandoned = not _pid_running(int(f.read().strip() or 0))
        except (OSError, ValueError):
            try:
                abandoned = time.time() - os.path.getmtime(claim) > _UNOWNED_GRACE_SECONDS
            except OSError:  # removed meanwhile
                continue
        if abandoned:
            shutil.rmtree(claim, ignore_errors=True)


def _claim_version(model_dir: str, version: int | None) -> tuple[str, int]:
    """``(claim folder, version)``: ``version`` (or the next free one) claimed with an exclusive ``mkdir``.

    Raises FileExistsError when an explicit ``version`` exists or another
    process is exporting it; a default version moves on to the next one.
    """
    requested = version
    version = version or next_version(model_dir)
    while True:
        final = os.path.join(model_dir, str(version))
        claim = os.path.join(model_dir, f".incomplete-{version}")
        taken = os.path.exists(final)
        if not taken:
            try:
                os.mkdir(claim)
            except FileExistsError:
                taken = True
            else:
                with open(os.path.join(claim, _OWNER), "w") as f:
                    f.write(str(os.getpid()))
                if not os.path.exists(final):  # not finished by another process meanwhile
                    return claim, version
                shutil.rmtree(claim, ignore_errors=True)
        if requested:
            raise FileExistsError(
                f"{final} exists already or is being exported; pick another version or leave it out for the next "
                "free one"
            )
        version += 1


def next_version(model_dir: str) -> int:
    """One past the largest numeric version folder in ``model_dir`` (1 for none).

    >>> import tempfile; d = tempfile.mkdtemp(); os.makedirs(os.path.join(d, "3"))
    >>> next_version(d)
    4
    """
    if not os.path.isdir(model_dir):
        return 1
    names = os.listdir(model_dir)
    versions = [int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(model_dir, n))]
    versions += [int(m.group(1)) for m in map(_INCOMPLETE.match, names) if m]  # claimed by running exports
    return max(versions, default=0) + 1


def check_model_name(model_name: str) -> str:
    """``model_name`` if it is a usable folder name (letters, digits, ``_.-``, not starting with a dot)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", model_name or ""):
        raise ValueError(f"model name {model_name!r}: use letters, digits, '_', '.', '-', not starting with '.'")
    return model_name


def export_model(
    model,
    export_dir: str,
    model_name: str,
    threshold: float,
    localizer: localizers.Localizer | None = None,
    version: int | None = None,
    metadata: dict | None = None,
    classify_only: bool = False,
) -> str:
    """Write a TF Serving SavedModel of ``model`` to ``export_dir/model_name/version``; returns its path.

    Args:
        model: a trained :class:`~keras_wsol.methods.base.WSOLModel`.
        export_dir: the TF Serving model base (``saved_models``).
        model_name: folder name of the model.
        threshold: box threshold tau in ``[0, 1)`` (see :func:`validation_threshold`).
        localizer: the score maps' localizer; default CAM at the classifier.
        version: a positive version number that must not exist yet; default
            the next free one.
        metadata: extra entries for ``assets.extra/keras_wsol.json``.
        classify_only: export ``probabilities`` and ``classes`` only.

    Raises:
        ValueError: a bad name, version or threshold.
        FileExistsError: the version folder exists already.
    """
    check_model_name(model_name)
    localizer = localizer or localizers.get_localizer(model, "cam")
    functions = ServingFunctions(localizer, threshold, classify_only)
    model_dir = os.path.join(export_dir, model_name)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise NotADirectoryError(f"{model_dir} exists and is not a folder")
    os.makedirs(model_dir, exist_ok=True)
    _remove_abandoned(model_dir)
    if version is not None and not (isinstance(version, int) and version > 0):
        raise ValueError(f"version must be a positive integer, got {version!r}")
    claim, version = _claim_version(model_dir, version)
    final = os.path.join(model_dir, str(version))
    try:
        _write_version(model, functions, metadata, claim, final)
    finally:
        shutil.rmtree(claim, ignore_errors=True)
    return final


def _write_version(model, functions: ServingFunctions, metadata: dict | None, claim: str, final: str) -> None:
    """Trace the signatures, write the SavedModel inside ``claim``, rename it to ``final``."""
    localizer, classify_only = functions.localizer, functions.classify_only
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", functions.serve_images, input_signature=[tf.TensorSpec(None, tf.float32, name="images")]
    )
    if not classify_only:
        archive.add_endpoint(
            "localize_encoded",
            functions.serve_encoded,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )
    record = {
        "format": 1,
        "signatures": list(SIGNATURES if not classify_only else SIGNATURES[:1]),
        "method": type(model).__name__,
        "localizer": localizer.name,
        "layer": localizer.layer,
        "threshold": functions.threshold,
        "image_size": functions.side,
        "num_classes": int(model.num_classes),
        "classify_only": classify_only,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(metadata or {}),
    }
    temporary = os.path.join(claim, "savedmodel")
    archive.write_out(temporary, verbose=False)
    os.makedirs(os.path.join(temporary, "assets.extra"), exist_ok=True)
    with open(os.path.join(temporary, METADATA_FILE), "w") as f:
        json.dump(record, f, indent=2)
    os.rename(temporary, final)
