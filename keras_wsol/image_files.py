"""Localize objects in image files: top-5 classes, a box and an overlay picture per file.

Each file (JPEG, PNG, GIF or BMP; any size; grayscale, RGBA and palette
images become RGB) is resized to the model's input side, the localizer's map
is computed for the top-1 class, upsampled bilinearly to the file's own size
and min-max normalized, and the box is the protocol's largest-contour box at
``threshold`` (:func:`keras_wsol.evaluation.boxes_at_threshold`) in the
file's pixels.

Example:
    >>> import os, tempfile, numpy as np, tensorflow as tf
    >>> from keras_wsol.methods import CAM
    >>> from keras_wsol.localizers import get_localizer
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "a.png")
    >>> tf.io.write_file(path, tf.io.encode_png(np.zeros((40, 50, 3), "uint8")))
    >>> model = CAM(num_classes=3, backbone="small", image_size=32)
    >>> [found] = localize_files(get_localizer(model, "cam"), [path], ["a", "b", "c"], 0.2, folder)
    >>> found.box.shape, len(found.top), os.path.isfile(found.overlay)
    ((4,), 3, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_wsol import visualize
from keras_wsol.data.pipeline import read_image
from keras_wsol.evaluation import boxes_at_threshold
from keras_wsol.localizers import Localizer
from keras_wsol.maps import upsample_normalized


@dataclass
class Localization:
    """What one file gave: ``top`` = ``[(class id, name, probability), ...]``, ``box`` = ``x0, y0, x1, y1``."""

    path: str
    top: list[tuple[int, str, float]]
    box: np.ndarray
    threshold: float
    overlay: str


def read_rgb(path: str) -> np.ndarray:
    """``uint8 [H, W, 3]`` of an image file; an unreadable file raises ``ValueError`` naming it."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file")
    try:
        return read_image(tf.constant(path)).numpy()
    except tf.errors.OpError as error:
        raise ValueError(f"{path}: cannot decode it as an image ({error.message.splitlines()[0]})") from None


def _model_side(localizer: Localizer) -> int:
    """The square input side of the localizer's model (a WSOLModel's ``image_size``, else its input shape)."""
    model = localizer.model
    side = getattr(model, "image_size", None) or model.input_shape[1]
    if not side:
        raise ValueError(f"{model.name} takes images of any size; build it for a fixed square input")
    return int(side)


def localize_files(
    localizer: Localizer,
    paths: list[str],
    class_names: list[str] | None,
    threshold: float,
    output_dir: str,
    top_k: int = 5,
) -> list[Localization]:
    """Localize the top-1 class in each file; writes ``<output_dir>/<file stem>_<localizer>.png`` overlays.

    ``class_names`` ``None`` names classes ``class K``. Every file is read
    before any model work, so a bad file fails at once.
    """
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold={threshold}: must be in [0, 1)")
    images = {path: read_rgb(path) for path in paths}
    side = _model_side(localizer)
    os.makedirs(output_dir, exist_ok=True)
    found = []
    for path, image in images.items():
        batch = tf.image.resize(tf.cast(image[None], tf.float32), (side, side))
        maps, logits = localizer.raw_maps(batch)
        scoremap = upsample_normalized(maps, image.shape[:2]).numpy()[0]
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()[0]
        order = np.argsort(-probabilities)[: min(top_k, len(probabilities))]
        top = [(int(k), class_names[k] if class_names else f"class {k}", float(probabilities[k])) for k in order]
        box = boxes_at_threshold(scoremap, threshold)[0]
        stem = os.path.splitext(os.path.basename(path))[0]
        overlay = os.path.join(output_dir, f"{stem}_{localizer.name}.png")
        title = f"{top[0][1]} ({100 * top[0][2]:.1f}%)\n{localizer.name} at {localizer.layer}"
        visualize.plot_overlays(
            image[None], scoremap[None], [box[None]], [np.zeros((0, 4))], [title], overlay, threshold, "--box_threshold"
        )
        found.append(Localization(path, top, box, threshold, overlay))
    return found
