"""A method registered at run time trains from train.py's flags and passes every contract, no other file edited."""

import os
import subprocess
import sys
import textwrap

import contracts
import keras
import pytest
import toy_method

from keras_wsol.methods import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_toy_method_trains_from_train_py_flags(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
        import toy_method  # registers --method=toy and its flag --toy_smoothing
        from keras_wsol.cli import train
        train.run(["train.py", "--method=toy", "--toy_smoothing=0.2", "--workdir={tmp_path}", "--image_size=32",
                   "--num_classes=3", "--train_images_per_class=8", "--eval_images_per_class=4", "--batch_size=8",
                   "--epochs=1"])
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "toy / small" in result.stdout and "MaxBoxAccV2" in result.stdout
    assert "--toy_smoothing=0.2" in open(tmp_path / "flags.txt").read()
    model = keras.models.load_model(str(tmp_path / "checkpoints" / "best.keras"))
    assert type(model) is toy_method.LabelSmoothingCAM and model.smoothing == pytest.approx(0.2)


def test_toy_method_keeps_every_contract(tmp_path):
    assert METHODS["toy"] is toy_method.LabelSmoothingCAM
    [(name, make)] = toy_method.LabelSmoothingCAM.variants(**contracts.ARCHITECTURE, smoothing=0.1).items()
    contracts.short_fit_lowers_the_loss(make)
    contracts.save_load_round_trips(make, tmp_path / "toy.keras")
    contracts.mixed_precision_keeps_float32_losses(make)
    contracts.benchmark_knows(toy_method.LabelSmoothingCAM)
    report = contracts.two_replicas_match_one_device("""
        sys.path.insert(0, "tests")
        import toy_method
        makers = toy_method.LabelSmoothingCAM.variants(deterministic=True, smoothing=0.1, **ARCHITECTURE)
    """)
    assert set(report) == {"toy"}


def test_a_wrong_hyperparameter_is_refused_naming_it():
    with pytest.raises(ValueError, match="smoothing=2.0: must be <= 1"):
        toy_method.LabelSmoothingCAM(**contracts.ARCHITECTURE, smoothing=2.0)
    with pytest.raises(TypeError, match="has no argument smoothin; its hyper-parameters: smoothing"):
        toy_method.LabelSmoothingCAM(**contracts.ARCHITECTURE, smoothin=0.1)
