"""The contracts every registered method keeps, as functions a test runs on any method's variants.

``tests/test_contracts.py`` runs them over the registry; a method added at run
time (``tests/test_toy_method.py``) runs them on itself. Each takes a
``make()`` that builds a fresh model (a ``WSOLModel.variants`` entry).
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf
from helpers import POLICIES, assert_float32_losses_and_finite_step, precision_policy

from keras_wsol.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
ARCHITECTURE = dict(num_classes=2, backbone="small", image_size=SIZE)


def batches(sets: int = 2, set_size: int = 5):
    """Whole class sets of the synthetic benchmark (class-set methods accept them, and so does everyone else)."""
    data = synthetic.generate("train", num_classes=sets, images_per_class=set_size, image_size=SIZE)
    return data.images.astype("float32"), data.labels


def short_fit_lowers_the_loss(make) -> None:
    """Twelve fit steps on one batch at a modest learning rate: the training loss of the last is below the first's."""
    x, y = batches()
    keras.utils.set_random_seed(0)
    model = make()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    losses = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=12, steps_per_epoch=1, verbose=0).history[
        "loss"
    ]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def xla_compiles_unless_declared_otherwise(make) -> None:
    """A model that does not set ``supports_jit = False`` trains and predicts XLA-compiled (on the CPU's XLA): Keras'
    ``jit_compile="auto"``, the train command's default, turns XLA on for such a model on one GPU."""
    x, y = batches()
    keras.utils.set_random_seed(0)
    model = make()
    if not model.supports_jit:
        return
    model.compile(optimizer=keras.optimizers.Adam(1e-3), jit_compile=True)
    losses = model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), epochs=1, steps_per_epoch=2, verbose=0)
    assert np.all(np.isfinite(losses.history["loss"])) and np.all(np.isfinite(model.predict(x, verbose=0)))


def save_load_round_trips(make, path) -> None:
    """``model.save`` then ``keras.models.load_model``: same class, same config, identical logits and maps."""
    x, y = batches()
    keras.utils.set_random_seed(0)
    model = make()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.train_on_batch(x, y)
    model.save(str(path))
    loaded = keras.models.load_model(str(path))
    assert type(loaded) is type(model)
    assert _comparable(loaded.get_config()) == _comparable(model.get_config())
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(np.asarray(loaded.localization_maps(x)), np.asarray(model.localization_maps(x)))


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in ("name", "evaluator")}


def mixed_precision_keeps_float32_losses(make) -> None:
    """Under each mixed policy a step's loss and logged parts are float32 and finite."""
    x, y = batches()
    for policy in POLICIES:
        with precision_policy(policy):
            keras.utils.set_random_seed(0)
            model = make()
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
            assert_float32_losses_and_finite_step(model, x, y)


def two_replicas_match_one_device(variants_code: str) -> dict:
    """Run ``variants_code`` (defining ``makers``: name -> make) in a fresh process with two logical CPUs.

    For each maker: the same start, one fit step on one device and on a
    two-replica MirroredStrategy; returns ``{name: [same_start, loss_one,
    loss_two, moved, gap]}``.
    """
    code = (
        textwrap.dedent("""
        import json, numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import sys; sys.path.insert(0, "tests")
        from contracts import ARCHITECTURE, batches
        from keras_wsol import distribute
        x, y = batches()  # two whole class sets: one per replica
    """)
        + textwrap.dedent(variants_code)
        + textwrap.dedent("""
        def step(make, strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = make()
                model.compile(optimizer=keras.optimizers.SGD(0.1))
            if strategy.num_replicas_in_sync > 1:
                distribute.synchronize_batch_norm(model)
            model(x[:1])
            before = [w.numpy().copy() for w in model.weights]
            loss = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history["loss"][0]
            return before, loss, [w.numpy() for w in model.weights]

        report = {}
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for name, make in makers.items():
            one = step(make, tf.distribute.get_strategy())
            two = step(make, mirrored)
            same_start = all(np.array_equal(a, b) for a, b in zip(one[0], two[0]))
            moved = max(float(np.abs(a - b).max()) for a, b in zip(one[0], one[2]))
            gap = max(float(np.abs(a - b).max()) for a, b in zip(one[2], two[2]))
            report[name] = [same_start, one[1], two[1], moved, gap]
        print("REPORT", json.dumps(report))
    """)
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    for name, (same_start, loss_one, loss_two, moved, gap) in report.items():
        assert same_start, name
        assert np.isfinite(loss_one) and abs(loss_one - loss_two) <= 1e-4 * max(1.0, abs(loss_one)), (
            name,
            loss_one,
            loss_two,
        )
        assert moved > 1e-4 and gap < 1e-3 * moved, (name, moved, gap)  # the step moved, the same way
    return report


def benchmark_knows(cls) -> None:
    """The train-step benchmark builds every variant of ``cls`` and has a passes count for each."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import train_step_speed

    models = train_step_speed.build_models(cls, backbone="small", size=SIZE, sets=2, set_size=5)
    assert set(models) == set(cls.variants(**ARCHITECTURE))
    for model in models.values():
        assert model.train_passes >= 2
