"""Fast box evaluator vs the straightforward per-tau loop, on the same maps, in one run.

    python benchmarks/evaluator_speed.py [--maps 32] [--interval 0.001]

The straightforward loop (keras_wsol.protocol_reference) thresholds, traces
contours and computes IoUs once per tau and per box mode, as the reference
code does; the fast evaluator computes both modes from one contour pass per
distinct uint8 threshold. Prints per-map times, the ratio and whether every
count agrees.
"""

import argparse
import time

import numpy as np

from keras_wsol import evaluation, protocol_reference


def cam_like_maps(count: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """CAM-like 224x224 maps (1-3 Gaussian blobs on a 14x14 grid plus noise, bicubic) and GT boxes."""
    rng = np.random.default_rng(seed)
    maps, boxes = [], []
    yy, xx = np.mgrid[0:14, 0:14]
    for _ in range(count):
        grid = rng.random((14, 14)).astype(np.float32) * 0.1
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(2, 12, 2)
            grid += rng.uniform(0.3, 1) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(1, 4) ** 2))
        maps.append(evaluation.resize_scoremap(grid, 224))
        x0, y0 = rng.integers(0, 120, 2)
        boxes.append(np.array([[x0, y0, x0 + rng.integers(20, 100), y0 + rng.integers(20, 100)]]))
    return maps, boxes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--maps", type=int, default=32)
    parser.add_argument("--interval", type=float, default=0.001)
    args = parser.parse_args()
    maps, boxes = cam_like_maps(args.maps)
    start = time.perf_counter()
    reference = protocol_reference.box_counts(maps, boxes, args.interval)
    slow = (time.perf_counter() - start) / len(maps)
    start = time.perf_counter()
    fast_eval = evaluation.BoxEvaluator(args.interval)
    fast_eval.update(np.stack(maps), boxes)
    fast = (time.perf_counter() - start) / len(maps)
    n = len(fast_eval.taus)
    agree = all(np.array_equal(fast_eval.correct[m][t][:n], reference[m][t]) for m in reference for t in reference[m])
    print(f"maps={len(maps)} interval={args.interval} taus={n}")
    print(f"straightforward per-tau: {slow * 1e3:8.2f} ms/map")
    print(f"keras_wsol BoxEvaluator: {fast * 1e3:8.2f} ms/map")
    print(f"speed-up: {slow / fast:.1f}x   counts agree: {agree}")


if __name__ == "__main__":
    main()
