"""The protocol's largest-contour box, in TensorFlow ops only (for SavedModel export).

The evaluator finds boxes with OpenCV (``contours.boxes_at_threshold``).
An exported model must not need OpenCV or Python, so this module gets the
same box from graph ops:

1. ``u = floor(255 s)``, foreground ``u > int(tau * max(u))`` (the
   protocol's thresholding).
2. Holes are filled: background pixels not 4-connected to the image border.
   The outer contour's polygon encloses its holes, and a component inside
   another's hole can never be the larger one.
3. 8-connected components of the filled foreground (OpenCV traces 8-connected
   foreground).
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

Components are found on horizontal runs of foreground, not pixels
(:class:`_Runs`): a few whole-map ops find the runs and their vertical
contacts, then hooking and pointer jumping over the (few thousand) runs
settle in about five steps on score maps.

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


class _Runs:
    """The horizontal foreground runs of ``[B, H, W]`` masks, grouped into connected components.

    Attributes:
        run_map: ``[B, H, W]`` int32, each pixel's run id (raster order over
            the whole batch), -1 on background.
        batch, row, first, last: ``[R]`` int32, each run's image, row and
            first and last column.
        component: ``[R]`` int32, the smallest run id of each run's component
            (the run holding the component's first pixel in raster order).

    Two runs in neighbouring rows touch (4-connectivity) exactly when one
    run's first pixel lies under or over a pixel of the other, so checking
    the pixels above and below each run's first pixel finds every edge; with
    8-connectivity the pixels diagonally before it are checked too. Labels
    are then merged along the edges by hooking and pointer jumping until
    stable, which takes a few steps even for long chains of runs.
    """

    def __init__(self, mask: tf.Tensor, connectivity: int):
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
        shape = tf.shape(mask)
        height = shape[1]
        starts = mask & ~_shifted(mask, 0, -1, False)
        ends = mask & ~_shifted(mask, 0, 1, False)
        ids = tf.reshape(tf.cumsum(tf.reshape(tf.cast(starts, tf.int32), (-1,))), shape) - 1
        self.run_map = tf.where(mask, ids, -1)
        first = tf.cast(tf.where(starts), tf.int32)
        self.batch, self.row, self.first = first[:, 0], first[:, 1], first[:, 2]
        self.last = tf.cast(tf.where(ends)[:, 2], tf.int32)
        count = tf.shape(first)[0]
        own = tf.range(count)
        sources, targets = [], []
        for dy in (-1, 1):
            for dx in (0, -1) if connectivity == 8 else (0,):
                rows, cols = self.row + dy, self.first + dx
                inside = (rows >= 0) & (rows < height) & (cols >= 0)
                index = tf.stack([self.batch, tf.clip_by_value(rows, 0, height - 1), tf.maximum(cols, 0)], axis=1)
                other = tf.gather_nd(self.run_map, index)
                sources.append(own)
                targets.append(tf.where(inside & (other >= 0), other, own))
        source, target = tf.concat(sources, 0), tf.concat(targets, 0)

        def step(labels, _):
            # Hooking: across every edge, the larger of the two labels (a run
            # of the component, like every label) points to the smaller.
            ends = tf.gather(labels, source), tf.gather(labels, target)
            low = tf.minimum(labels, tf.math.unsorted_segment_min(tf.minimum(*ends), tf.maximum(*ends), count))
            for _ in range(2):  # pointer jumping: a run takes its label's label
                low = tf.gather(low, low)
            return low, tf.reduce_any(low != labels)

        self.count = count
        self.component, _ = tf.while_loop(lambda _, changed: changed, step, (own, tf.constant(True)))

    def per_pixel(self, values: tf.Tensor, fill) -> tf.Tensor:
        """``[B, H, W]``: each foreground pixel's run's entry of ``values`` ``[R]``, ``fill`` on background."""
        padded = tf.concat([values, tf.fill([1], tf.cast(fill, values.dtype))], axis=0)  # R may be 0
        return tf.gather(padded, tf.where(self.run_map >= 0, self.run_map, self.count))


def fill_holes(mask: tf.Tensor) -> tf.Tensor:
    """``mask`` plus its holes: background pixels with no 4-connected path to the border.

    >>> import numpy as np
    >>> ring = np.ones((1, 3, 3), bool); ring[0, 1, 1] = False
    >>> bool(fill_holes(ring).numpy().all())
    True
    """
    mask = tf.convert_to_tensor(mask, tf.bool)
    height, width = tf.shape(mask)[1], tf.shape(mask)[2]
    background = _Runs(~mask, 4)
    on_border = (
        (background.row == 0)
        | (background.row == height - 1)
        | (background.first == 0)
        | (background.last == width - 1)
    )
    outside = tf.math.unsorted_segment_max(tf.cast(on_border, tf.int32), background.component, background.count)
    return mask | background.per_pixel(tf.gather(outside, background.component) == 0, False)


def largest_contour_boxes(scoremaps: tf.Tensor, threshold: float | tf.Tensor) -> tf.Tensor:
    """The protocol's single-contour box ``[B, 4]`` int32 (``x0, y0, x1, y1``) of each ``[B, H, W]`` map at a tau.

    ``scoremaps`` are in ``[0, 1]`` (min-max normalized); the box is in map
    pixels, as ``contours.boxes_at_threshold(map, threshold)`` gives it.
    """
    scoremaps = tf.convert_to_tensor(scoremaps, tf.float32)
    shape = tf.shape(scoremaps)
    batch, height, width = shape[0], shape[1], shape[2]
    u = tf.floor(scoremaps * 255.0)
    top = tf.reduce_max(u, axis=(1, 2), keepdims=True)
    cut = tf.floor(tf.cast(threshold, tf.float64) * tf.cast(top, tf.float64))
    runs = _Runs(fill_holes(u > tf.cast(cut, tf.float32)), 8)
    count = runs.count

    # Quad windows: twice the area is 2 with four foreground pixels, 1 with three.
    labels = runs.per_pixel(runs.component, count)
    corners = [labels[:, dy : height - 1 + dy, dx : width - 1 + dx] for dy in (0, 1) for dx in (0, 1)]
    pixels_in = tf.add_n([tf.cast(c < count, tf.int32) for c in corners])
    twice_area = tf.nn.relu(pixels_in - 2)
    owner = tf.minimum(tf.minimum(corners[0], corners[1]), tf.minimum(corners[2], corners[3]))
    area = tf.math.unsorted_segment_sum(tf.reshape(twice_area, (-1,)), tf.reshape(owner, (-1,)), count + 1)[:count]

    # Per image, the largest component; ties go to the later first pixel (larger id).
    ids = tf.range(count)
    key = tf.where(
        runs.component == ids, tf.cast(area, tf.int64) * tf.cast(count + 1, tf.int64) + tf.cast(ids, tf.int64), -1
    )
    best_key = tf.math.unsorted_segment_max(key, runs.batch, batch)
    found = best_key >= 0
    best = tf.cast(tf.where(found, best_key % tf.cast(count + 1, tf.int64), 0), tf.int32)
    x0 = tf.math.unsorted_segment_min(runs.first, runs.component, count)
    x1 = tf.math.unsorted_segment_max(runs.last, runs.component, count)
    y0 = tf.math.unsorted_segment_min(runs.row, runs.component, count)
    y1 = tf.math.unsorted_segment_max(runs.row, runs.component, count)
    pick = lambda values: tf.gather(tf.concat([values, [0]], 0), tf.where(found, best, count))  # noqa: E731
    boxes = tf.stack(
        [pick(x0), pick(y0), tf.minimum(pick(x1) + 1, width - 1), tf.minimum(pick(y1) + 1, height - 1)], axis=1
    )
    return tf.where(found[:, None], boxes, 0)
