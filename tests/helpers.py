"""Checks every method's tests share: which weights a step changes, save/load round trips, mixed precision."""

import contextlib

import keras
import numpy as np


def changed_weights(model, step, key=lambda weight: weight.path) -> set:
    """``key`` (default: the path) of each of the model's weights, trainable or not, that ``step()`` changes.

    ``key=id`` tells apart weights of nested models whose paths coincide.
    """
    weights = model.weights
    before = [w.numpy().copy() for w in weights]
    step()
    return {key(w) for w, old in zip(weights, before) if not np.array_equal(old, w.numpy())}


def assert_round_trip(model, path, images, **config):
    """Save, load, check the class, the ``config`` entries and identical localization maps; return the loaded model."""
    model.save(str(path))
    loaded = keras.models.load_model(str(path))
    assert type(loaded) is type(model)
    assert {k: loaded.get_config()[k] for k in config} == config
    np.testing.assert_array_equal(
        np.asarray(loaded.localization_maps(images)), np.asarray(model.localization_maps(images))
    )
    return loaded


# The mixed-precision policies every method must train under.
POLICIES = ("mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def precision_policy(policy: str):
    """Run the block under the dtype ``policy``, restoring float32 after."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def assert_float32_losses_and_finite_step(model, x, y) -> dict:
    """Under the current policy: the loss and each logged part are float32, and a train step logs finite values."""
    total, parts, _ = model.compute_losses(x, y, training=True)
    assert total.dtype == "float32" and all(v.dtype == "float32" for v in parts.values())
    logs = model.train_on_batch(x, y, return_dict=True)
    assert all(np.isfinite(v) for v in logs.values()), logs
    return logs
