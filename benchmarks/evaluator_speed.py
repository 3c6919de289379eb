"""Fast box evaluator vs the straightforward per-tau loop, on the same maps, in one run.

    python benchmarks/evaluator_speed.py [--maps 32] [--interval 0.001] [--process_maps 300]

The straightforward loop (keras_wsol.protocol_reference) thresholds, traces
contours and computes IoUs once per tau and per box mode, as the reference
code does; the fast evaluator computes both modes from one contour pass per
distinct uint8 threshold. Prints per-map times, the ratio and whether every
count agrees.

The whole-process row writes ``--process_maps`` maps and a metadata folder to
a temporary folder, then times two commands side by side: ``evaluate.py`` in
evaluator-only mode, and the per-tau loop as a process of its own that reads
the same files (imports, reading and all). The loop's counts are compared
with the fast evaluator's, and the command's metrics with that evaluator's
result.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from keras_wsol import evaluation, protocol_reference
from keras_wsol.data.metadata import write_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The per-tau loop as its own process: read the metadata and the maps, count, save the counts.
REFERENCE_PROCESS = """
import sys, numpy as np
from keras_wsol import evaluation, protocol_reference
from keras_wsol.data.metadata import read_metadata
meta_root, map_root, interval, out = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
meta = read_metadata(meta_root)
maps = [np.load(f"{map_root}/{i}.npy") for i in meta.image_ids]
boxes = [np.array([evaluation.resize_box(b, meta.sizes[i], 224) for b in meta.boxes[i]]) for i in meta.image_ids]
counts = protocol_reference.box_counts(maps, boxes, interval)
np.savez(out, **{f"{mode}_{t}": np.asarray(c) for mode in counts for t, c in counts[mode].items()})
"""


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
    parser.add_argument("--process_maps", type=int, default=300, help="whole-process row's maps; 0 skips it")
    args = parser.parse_args()
    maps, boxes = cam_like_maps(args.maps)
    start = time.perf_counter()
    reference = protocol_reference.box_counts(maps, boxes, args.interval)
    slow = (time.perf_counter() - start) / len(maps)
    start = time.perf_counter()
    fast_eval = evaluation.BoxEvaluator(evaluation.Protocol(args.interval))
    fast_eval.update(np.stack(maps), boxes)
    fast = (time.perf_counter() - start) / len(maps)
    agree = counts_agree(fast_eval, reference)
    print(f"maps={len(maps)} interval={args.interval} taus={len(fast_eval.taus)}")
    print(f"straightforward per-tau: {slow * 1e3:8.2f} ms/map")
    print(f"keras_wsol BoxEvaluator: {fast * 1e3:8.2f} ms/map")
    print(f"speed-up: {slow / fast:.1f}x   counts agree: {agree}")
    if args.process_maps:
        whole_process(args.process_maps, args.interval)


def counts_agree(evaluator: evaluation.BoxEvaluator, reference: dict) -> bool:
    """Whether ``evaluator``'s counts equal the per-tau loop's ``{mode: {iou: counts}}`` at every tau."""
    n = len(evaluator.taus)
    return all(np.array_equal(evaluator.correct[m][t][:n], reference[m][t]) for m in reference for t in reference[m])


def timed(command: list[str]) -> float:
    """Wall seconds of ``command`` run from the repository root; a failure stops the benchmark."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def whole_process(count: int, interval: float) -> None:
    """Evaluator-only mode against the per-tau loop, each as its own process, on the same files."""
    maps, boxes = cam_like_maps(count, seed=1)
    with tempfile.TemporaryDirectory() as folder:
        meta, map_root = os.path.join(folder, "metadata"), os.path.join(folder, "maps")
        os.makedirs(map_root)
        ids = [f"m{i:04d}" for i in range(count)]
        lines = [f"{i},{','.join(str(int(v)) for v in b[0])}" for i, b in zip(ids, boxes)]
        write_split(meta, ids, [0] * count, [(224, 224)] * count, lines)
        for i, scoremap in zip(ids, maps):
            np.save(os.path.join(map_root, i + ".npy"), scoremap)
        output, counts = os.path.join(folder, "metrics.json"), os.path.join(folder, "counts.npz")
        fast = timed(
            [sys.executable, "evaluate.py", f"--scoremap_root={map_root}", f"--metadata_root={meta}",
             f"--cam_curve_interval={interval}", f"--output_json={output}"]
        )  # fmt: skip
        slow = timed([sys.executable, "-c", REFERENCE_PROCESS, meta, map_root, str(interval), counts])
        in_process = evaluation.BoxEvaluator(evaluation.Protocol(interval))
        in_process.update(np.stack(maps), boxes)
        with np.load(counts) as saved:
            reference = {m: {t: saved[f"{m}_{t}"] for t in in_process.correct[m]} for m in in_process.correct}
        agree = counts_agree(in_process, reference)
        with open(output) as f:
            agree = agree and json.load(f) == json.loads(json.dumps(in_process.result()))
    print(f"whole process, {count} maps at interval {interval}:")
    print(f"per-tau loop process:         {slow:8.2f} s")
    print(f"evaluate.py evaluator-only:   {fast:8.2f} s")
    print(f"speed-up: {slow / fast:.1f}x   counts agree: {agree}")


if __name__ == "__main__":
    main()
