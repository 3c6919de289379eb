"""Checkpoint selection by validation localization: the scored value, the kept epoch, a resumed run."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

from keras_wsol import reporting
from keras_wsol.callbacks import AtomicCheckpoint, ValidationLocalization
from keras_wsol.data import synthetic
from keras_wsol.evaluation import Protocol
from keras_wsol.methods import CAM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_validation_localization_logs_the_splits_max_box_acc_v2():
    keras.utils.set_random_seed(0)
    model = CAM(num_classes=3, backbone="small", image_size=32)
    split = synthetic.generate("val", num_classes=3, images_per_class=4, image_size=32).as_split(3)
    callback = ValidationLocalization(split, Protocol(0.01, 64, 0.2))
    callback.set_model(model)
    logs = {}
    callback.on_epoch_end(0, logs)
    expected = reporting.evaluate_split(model, split, protocol=Protocol(0.01, 64, 0.2))["model"]["MaxBoxAccV2"]
    assert logs["val_localization"] == expected


def test_the_best_validation_localization_is_kept_and_a_resumed_run_compares_against_it(tmp_path):
    model = CAM(num_classes=2, backbone="small", image_size=32)
    path = str(tmp_path / "best.keras")
    record = path + ".json"

    def run(epochs_and_values, first_epoch):
        callback = AtomicCheckpoint(path, monitor="val_localization", mode="max")
        callback.set_model(model)
        for epoch, value in zip(range(first_epoch, first_epoch + len(epochs_and_values)), epochs_and_values):
            callback.on_epoch_begin(epoch)
            callback.on_epoch_end(epoch, {"val_localization": value, "val_loss": 1.0})
        return json.load(open(record))

    assert run([50.0, 70.0, 60.0], 0) == {"epoch": 2, "val_localization": 70.0}  # the scripted best, epoch 2
    assert run([65.0], 3) == {"epoch": 2, "val_localization": 70.0}  # resumed: 65 does not beat the kept 70
    assert run([75.0], 4) == {"epoch": 5, "val_localization": 75.0}


def test_train_selects_by_validation_localization_by_default(tmp_path):
    args = [
        "--image_size=32",
        "--num_classes=3",
        "--train_images_per_class=8",
        "--eval_images_per_class=4",
        "--batch_size=8",
        "--epochs=2",
        "--noevaluate",  # selection by val localization is the default
    ]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={tmp_path}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    header = open(tmp_path / "log.csv").readline().strip().split(",")
    rows = [dict(zip(header, line.strip().split(","))) for line in open(tmp_path / "log.csv").readlines()[1:]]
    values = [float(r["val_localization"]) for r in rows]
    kept = json.load(open(tmp_path / "checkpoints" / "best.keras.json"))
    assert kept["epoch"] == int(np.argmax(values)) + 1 and kept["val_localization"] == max(values)


class Terminal:
    """Standard output as a terminal: what it was written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, text):
        self.text += text

    def flush(self):
        pass


def test_evaluation_shows_a_progress_bar_on_a_terminal_only(monkeypatch, capsys):
    keras.utils.set_random_seed(0)
    model = CAM(num_classes=3, backbone="small", image_size=32)
    split = synthetic.generate("val", num_classes=3, images_per_class=4, image_size=32).as_split(3)
    protocol = Protocol(0.01, 64, 0.2)
    quiet = reporting.evaluate_split(model, split, protocol=protocol, progress="val split")
    assert capsys.readouterr().out == ""  # not a terminal: nothing before the table
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    shown = reporting.evaluate_split(model, split, protocol=protocol, progress="val split", batch_size=4)
    assert terminal.text.startswith("val split\n") and "12/12" in terminal.text and "image" in terminal.text
    assert shown == quiet
