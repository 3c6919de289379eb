"""tf.distribute: a two-process multi-worker fit (the two-replica check of every method is a contract test)."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_multi_worker_fit_on_localhost(tmp_path):
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    args = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        "--strategy=multi_worker",
        f"--workdir={tmp_path}",
        "--image_size=32",
        "--num_classes=3",
        "--train_images_per_class=8",
        "--eval_images_per_class=2",
        "--batch_size=8",
        "--epochs=2",
    ]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(
            subprocess.Popen(
                args,
                cwd=ROOT,
                env={**ENV, "TF_CONFIG": json.dumps(config)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "MaxBoxAccV2" in outputs[0][0] and "MaxBoxAccV2" not in outputs[1][0]  # the chief evaluates
    assert len(open(tmp_path / "log.csv").read().splitlines()) == 3  # header and two epochs, written once
    assert os.path.isfile(tmp_path / "checkpoints" / "best.keras")
    assert not os.path.exists(tmp_path / ".worker1")  # the other worker's scratch folder is gone
