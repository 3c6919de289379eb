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
    np.testing.assert_array_equal(np.asarray(loaded.localization_maps(images)), np.asarray(model.localization_maps(images)))
    return loaded


@contextlib.contextmanager
def mixed_float16():
    """Run the block under the ``mixed_float16`` policy, restoring float32 after."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
