"""Localize objects in image files: top-5 classes, a box and an overlay picture per file.

Each file (JPEG, PNG, GIF or BMP; any size; grayscale, RGBA and palette
images become RGB) is resized to the model's input side, the localizer's map
is computed for the top-1 class, upsampled bilinearly to the file's own size
and min-max normalized, and the box is the protocol's largest-contour box at
``threshold`` (:func:`keras_wsol.contours.boxes_at_threshold`) in the
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
from keras_wsol.contours import boxes_at_threshold
from keras_wsol.data.pipeline import read_image
from keras_wsol.localization import model_side
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


def expand_paths(entries: list[str]) -> list[str]:
    """Files named by ``entries``: a file, a folder (its image files, sorted) or a glob pattern; each entry must
    name at least one file (``ValueError`` names the entry).

    >>> import os, tempfile
    >>> folder = tempfile.mkdtemp()
    >>> for name in ("b.png", "a.JPG", "notes.txt"):
    ...     _ = open(os.path.join(folder, name), "w").write("x")
    >>> [os.path.basename(p) for p in expand_paths([folder])]
    ['a.JPG', 'b.png']
    """
    import glob

    suffixes = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
    paths = []
    for entry in entries:
        if os.path.isdir(entry):
            found = sorted(os.path.join(entry, n) for n in os.listdir(entry) if n.lower().endswith(suffixes))
        else:
            found = [entry] if os.path.isfile(entry) else sorted(glob.glob(entry))
        if not found:
            raise ValueError(f"{entry}: no such image file, folder with images, or matching pattern")
        paths += found
    return paths


def _overlay_names(paths: list[str], output_dir: str, suffix: str) -> list[str]:
    """``<output_dir>/<stem>_<suffix>.png`` per path; a stem already used gets ``_2``, ``_3``... (no overwrite)."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        unique = stem if seen[stem] == 1 else f"{stem}_{seen[stem]}"
        names.append(os.path.join(output_dir, f"{unique}_{suffix}.png"))
    return names


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
    side = model_side(localizer)
    os.makedirs(output_dir, exist_ok=True)
    found = []
    for (path, image), overlay in zip(images.items(), _overlay_names(list(images), output_dir, localizer.name)):
        batch = tf.image.resize(tf.cast(image[None], tf.float32), (side, side))
        maps, logits = localizer.raw_maps(batch)
        scoremap = upsample_normalized(maps, image.shape[:2]).numpy()[0]
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32)).numpy()[0]
        order = np.argsort(-probabilities)[: min(top_k, len(probabilities))]
        top = [(int(k), class_names[k] if class_names else f"class {k}", float(probabilities[k])) for k in order]
        box = boxes_at_threshold(scoremap, threshold)[0]
        title = f"{top[0][1]} ({100 * top[0][2]:.1f}%)\n{localizer.name} at {localizer.layer}"
        height, width = image.shape[:2]  # the photo at its own size (at least 2 inches a side, at most 12)
        panel = (min(max(width, 200), 1200) / 100, min(max(height, 200), 1200) / 100 + 0.5)
        visualize.plot_overlays(
            image[None],
            scoremap[None],
            [box[None]],
            [np.zeros((0, 4))],
            [title],
            overlay,
            threshold,
            "--box_threshold",
            panel,
        )
        found.append(Localization(path, top, box, threshold, overlay))
    return found
