"""The protocol's largest-contour box, in TensorFlow ops only (for SavedModel export).

The evaluator finds boxes with OpenCV (``evaluation.boxes_at_threshold``).
An exported model must not need OpenCV or Python, so this module gets the
same box from graph ops:

1. ``u = floor(255 s)``, foreground ``u > int(tau * max(u))`` (the
   protocol's thresholding).
2. Holes are filled: background pixels not 4-connected to the image border.
   The outer contour's polygon encloses its holes, and a component inside
   another's hole can never be the larger one.
3. 8-connected components of the filled foreground (OpenCV traces 8-connected
   foreground), labelled by the raster index of their first pixel.
4. Each component's ``cv2.contourArea``: the polygon through the centres of
   its border pixels covers the whole unit square between four foreground
   pixel centres and half of one between three (the contour cuts it on the
   diagonal), and nothing of the others, so the area is
   ``#(2x2 windows with 4 pixels) + #(windows with 3) / 2``, exactly.
5. The largest component wins; on equal areas the one whose first pixel
   comes last in raster order, as OpenCV lists the later-found contour first.
   Its box is the protocol's ``[x0, y0, min(x1 + 1, W - 1), min(y1 + 1, H - 1)]``
   (OpenCV's ``boundingRect`` end is one past the last pixel); no foreground
   gives ``[0, 0, 0, 0]``.

Components are labelled by iterated neighbour-minimum plus pointer jumping
(each label is a pixel index, so ``label[label]`` hops towards the
component's first pixel), which converges in a few dozen steps on score maps.

Example:
    >>> import numpy as np
    >>> m = np.zeros((1, 8, 8), np.float32); m[0, 2:5, 3:6] = 1.0
    >>> largest_contour_boxes(m, 0.5).numpy().tolist()
    [[3, 2, 6, 5]]
"""

from __future__ import annotations

import tensorflow as tf

def _shifted(x: tf.Tensor, dy: int, dx: int, fill) -> tf.Tensor:
    """``out[b, i, j] = x[b, i + dy, j + dx]``, ``fill`` outside the map."""
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1]], constant_values=fill)
    height, width = tf.shape(x)[1], tf.shape(x)[2]
    return padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


def _run_ids(mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Ids ``[B, H, W]`` of the horizontal foreground runs (0 on background) and how many ids there are."""
    starts = mask & ~_shifted(mask, 0, -1, False)
    ids = tf.reshape(tf.cumsum(tf.reshape(tf.cast(starts, tf.int32), (-1,))), tf.shape(mask))
    return tf.where(mask, ids, 0), tf.reduce_sum(tf.cast(starts, tf.int32)) + 1


def _run_min(labels: tf.Tensor, ids: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
    """Every pixel of a run takes the run's smallest label (background, id 0, keeps its own)."""
    low = tf.math.unsorted_segment_min(tf.reshape(labels, (-1,)), tf.reshape(ids, (-1,)), count)
    return tf.where(ids > 0, tf.gather(low, ids), labels)


def connected_components(mask: tf.Tensor, connectivity: int = 8) -> tf.Tensor:
    """Label ``[B, H, W]`` boolean masks: each component gets its first pixel's raster index.

    Background pixels get ``H * W``. Each step gives every horizontal and
    vertical run of foreground its smallest label, takes the minimum over the
    diagonal neighbours (8-connectivity), then jumps pointers twice.

    >>> import numpy as np
    >>> m = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 1]]], bool)
    >>> connected_components(m, 4).numpy()[0].tolist()
    [[0, 9, 9], [9, 4, 9], [9, 9, 8]]
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    mask = tf.convert_to_tensor(mask, tf.bool)
    shape = tf.shape(mask)
    pixels = shape[1] * shape[2]
    background = tf.fill(shape, pixels)
    index = tf.reshape(tf.range(pixels), (1, shape[1], shape[2])) + tf.zeros_like(background)
    labels = tf.where(mask, index, background)
    row_ids, row_count = _run_ids(mask)
    col_ids, col_count = _run_ids(tf.transpose(mask, (0, 2, 1)))
    col_ids = tf.transpose(col_ids, (0, 2, 1))

    def step(labels, _):
        low = _run_min(_run_min(labels, row_ids, row_count), col_ids, col_count)
        if connectivity == 8:
            diagonal = [_shifted(low, dy, dx, pixels) for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1))]
            low = tf.where(mask, tf.reduce_min(tf.stack([low, *diagonal]), axis=0), background)
        flat = tf.concat([tf.reshape(low, (shape[0], -1)), tf.fill((shape[0], 1), pixels)], axis=1)
        for _ in range(2):  # pointer jumping: a pixel takes its label's label
            flat = tf.gather(flat, flat, batch_dims=1)
        new = tf.reshape(flat[:, :-1], shape)
        return new, tf.reduce_any(new != labels)

    labels, _ = tf.while_loop(lambda _, changed: changed, step, (labels, tf.constant(True)))
    return labels


def fill_holes(mask: tf.Tensor) -> tf.Tensor:
    """``mask`` plus its holes: background pixels with no 4-connected path to the border."""
    mask = tf.convert_to_tensor(mask, tf.bool)
    shape = tf.shape(mask)
    pixels = shape[1] * shape[2]
    labels = tf.reshape(connected_components(~mask, 4), (shape[0], -1))
    rows = tf.range(shape[1])[:, None]
    cols = tf.range(shape[2])[None, :]
    on_border = (rows == 0) | (rows == shape[1] - 1) | (cols == 0) | (cols == shape[2] - 1)
    on_border = tf.reshape(on_border, (1, -1)) & (labels < pixels)
    # Which labels (index 0..HW, HW being the foreground) contain a border pixel.
    segments = labels + (pixels + 1) * tf.range(shape[0])[:, None]
    touches = tf.math.unsorted_segment_max(
        tf.cast(tf.reshape(on_border, (-1,)), tf.int32), tf.reshape(segments, (-1,)), shape[0] * (pixels + 1)
    )
    outside = tf.gather(tf.reshape(touches, (shape[0], -1)), labels, batch_dims=1) > 0
    return mask | tf.reshape(~outside, shape)


def largest_contour_boxes(scoremaps: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """The protocol's single-contour box ``[B, 4]`` int32 (``x0, y0, x1, y1``) of each ``[B, H, W]`` map at ``threshold``.

    ``scoremaps`` are in ``[0, 1]`` (min-max normalized); the box is in map
    pixels, as ``evaluation.boxes_at_threshold(map, threshold)`` gives it.
    """
    scoremaps = tf.convert_to_tensor(scoremaps, tf.float32)
    shape = tf.shape(scoremaps)
    batch, height, width = shape[0], shape[1], shape[2]
    pixels = height * width
    u = tf.floor(scoremaps * 255.0)
    top = tf.reduce_max(u, axis=(1, 2), keepdims=True)
    cut = tf.floor(tf.cast(threshold, tf.float64) * tf.cast(top, tf.float64))
    filled = fill_holes(u > tf.cast(cut, tf.float32))
    labels = connected_components(filled, 8)

    # Quad windows: weight 1 with four foreground pixels, 1/2 with three.
    corners = [labels[:, dy : height - 1 + dy, dx : width - 1 + dx] for dy in (0, 1) for dx in (0, 1)]
    count = tf.add_n([tf.cast(c < pixels, tf.int32) for c in corners])
    twice_area = tf.where(count == 4, 2, tf.where(count == 3, 1, 0))
    owner = tf.reduce_min(tf.stack(corners), axis=0)
    offsets = (pixels + 1) * tf.range(batch)
    area = tf.math.unsorted_segment_sum(
        tf.reshape(twice_area, (-1,)), tf.reshape(owner + offsets[:, None, None], (-1,)), batch * (pixels + 1)
    )
    area = tf.reshape(area, (batch, pixels + 1))[:, :pixels]
    # Only component labels compete; ties go to the largest label (last first pixel).
    flat = tf.reshape(labels, (batch, -1))
    is_label = tf.equal(flat, tf.range(pixels)[None, :])
    key = tf.where(is_label, tf.cast(area, tf.int64) * tf.cast(pixels, tf.int64) + tf.cast(tf.range(pixels), tf.int64), -1)
    best = tf.cast(tf.argmax(key, axis=1), tf.int32)
    chosen = tf.equal(labels, best[:, None, None])
    rows = tf.broadcast_to(tf.range(height)[None, :, None], shape)
    cols = tf.broadcast_to(tf.range(width)[None, None, :], shape)
    x0 = tf.reduce_min(tf.where(chosen, cols, width), axis=(1, 2))
    y0 = tf.reduce_min(tf.where(chosen, rows, height), axis=(1, 2))
    x1 = tf.minimum(tf.reduce_max(tf.where(chosen, cols, -1), axis=(1, 2)) + 1, width - 1)
    y1 = tf.minimum(tf.reduce_max(tf.where(chosen, rows, -1), axis=(1, 2)) + 1, height - 1)
    boxes = tf.stack([x0, y0, x1, y1], axis=1)
    return tf.where(tf.reduce_any(is_label, axis=1)[:, None], boxes, 0)
