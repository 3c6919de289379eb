"""Resume after SIGKILL from the last finished epoch; a NaN loss stops the run and keeps the last good state."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from keras_wsol.callbacks import AtomicCheckpoint, StopOnNonFiniteLoss
from keras_wsol.data import pipeline, synthetic
from keras_wsol.methods import CAM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 12


def finished_epochs(workdir) -> int:
    """The epochs the resume backup holds (0 before the first)."""
    try:
        with open(os.path.join(workdir, "backup", "training_metadata.json")) as f:
            return int(json.load(f)["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_run_resumes_from_its_last_finished_epoch(tmp_path):
    command = [
        sys.executable,
        os.path.join(ROOT, "train.py"),
        f"--workdir={tmp_path}",
        "--image_size=32",
        "--num_classes=3",
        "--train_images_per_class=8",
        "--eval_images_per_class=2",
        "--batch_size=8",
        f"--epochs={EPOCHS}",
        "--noevaluate",
    ]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while finished_epochs(tmp_path) < 2 and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    done = finished_epochs(tmp_path)
    assert first.returncode == -signal.SIGKILL and 2 <= done < EPOCHS, (first.returncode, done)

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    epochs_run = [line.split()[1] for line in second.stdout.splitlines() if line.startswith("Epoch ")]
    assert epochs_run[0] == f"{done + 1}/{EPOCHS}" and epochs_run[-1] == f"{EPOCHS}/{EPOCHS}"
    with open(tmp_path / "log.csv") as f:
        logged = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert logged[-(EPOCHS - done) :] == list(range(done, EPOCHS))  # the second run went on where the first stopped
    assert not os.path.exists(tmp_path / "backup" / "training_metadata.json")  # finished: the backup is cleared
    assert os.path.isfile(tmp_path / "checkpoints" / "last.keras")


def cam_to_poison():
    """``(training split, compiled CAM, its classifier kernel)``: 2 classes x 8 images, two steps of 8 an epoch."""
    keras.utils.set_random_seed(0)
    data = synthetic.generate("train", num_classes=2, images_per_class=8, image_size=32).as_split()
    model = CAM(num_classes=2, backbone="small", image_size=32)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return data, model, model.classifier.kernel


def test_nan_loss_stops_at_once_and_keeps_the_last_good_state(tmp_path):
    data, model, kernel = cam_to_poison()
    last = str(tmp_path / "last.keras")
    # After epoch 1 is saved, the weights go bad: epoch 2's first step has a NaN loss.
    poison = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    )
    callbacks = [
        StopOnNonFiniteLoss(str(tmp_path)),
        keras.callbacks.BackupAndRestore(str(tmp_path / "backup")),
        AtomicCheckpoint(last),
        poison,
    ]
    with pytest.raises(
        FloatingPointError, match=r"epoch 2, step 1: the training loss is nan; stopped. .* from epoch 1"
    ):
        model.fit(pipeline.training_dataset(data, 8, seed=0), epochs=3, callbacks=callbacks, verbose=0)
    saved = keras.models.load_model(last)
    assert all(np.isfinite(w).all() for w in saved.get_weights())
    assert finished_epochs(tmp_path) == 1  # the backup a rerun resumes from is epoch 1's
    restored = CAM(num_classes=2, backbone="small", image_size=32)
    restored.compile(optimizer=keras.optimizers.Adam(1e-3))
    restored(np.zeros((1, 32, 32, 3), "float32"))
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    for a, b in zip(restored.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_nan_validation_loss_stops_before_the_epoch_is_saved(tmp_path):
    data, model, kernel = cam_to_poison()
    last = str(tmp_path / "last.keras")
    # Training steps are finite; the weights go bad just before the validation pass of epoch 1.
    poison = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: (
            kernel.assign(np.full(kernel.shape, np.nan, "float32")) if batch == 1 else None
        )
    )
    callbacks = [StopOnNonFiniteLoss(str(tmp_path)), AtomicCheckpoint(last), poison]
    dataset = pipeline.training_dataset(data, 8, seed=0)
    with pytest.raises(FloatingPointError, match=r"epoch 1: val_loss is nan; stopped. No epoch finished"):
        model.fit(dataset, validation_data=dataset.take(1), epochs=2, callbacks=callbacks, verbose=0)
    assert not os.path.exists(last)
