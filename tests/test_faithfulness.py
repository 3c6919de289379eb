"""Deletion and insertion (RISE): curves by hand on a 4 x 4 image, the AUC, the fills, the evaluate flag."""

import keras
import numpy as np
import pytest

from keras_wsol import faithfulness


def linear_model(weights: np.ndarray, bias: np.ndarray) -> keras.Model:
    """logits = mean colour @ weights + bias: the probability of any image is easy to compute by hand."""
    inputs = keras.Input((4, 4, 3))
    dense = keras.layers.Dense(2)
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([weights, bias])
    return model


def probability(image: np.ndarray, weights, bias, k: int) -> float:
    logits = image.reshape(-1, 3).mean(axis=0) @ weights + bias
    e = np.exp(logits - logits.max())
    return float(e[k] / e.sum())


def test_deletion_and_insertion_curves_equal_a_pixel_by_pixel_computation():
    rng = np.random.default_rng(0)
    weights, bias = rng.normal(size=(3, 2)) * 0.05, np.array([0.1, -0.2])
    model = linear_model(weights, bias)
    image = rng.uniform(0, 255, (4, 4, 3)).astype("float32")
    scores = rng.permutation(16).reshape(4, 4).astype("float32")  # a strict order: pixel of score 15 first
    steps = 4
    deletion, insertion = faithfulness.curves(model, image[None], scores[None], np.array([1]), steps, fill="mean")
    fill = image.reshape(-1, 3).mean(axis=0)
    order = sorted(((r, c) for r in range(4) for c in range(4)), key=lambda rc: -scores[rc])
    for k in range(steps + 1):
        removed, revealed = image.copy(), np.broadcast_to(fill, image.shape).copy()
        for r, c in order[: 4 * k]:  # 16 pixels, 4 per step
            removed[r, c] = fill
            revealed[r, c] = image[r, c]
        np.testing.assert_allclose(deletion[0, k], probability(removed, weights, bias, 1), rtol=1e-5)
        np.testing.assert_allclose(insertion[0, k], probability(revealed, weights, bias, 1), rtol=1e-5)
    curve = deletion[0]
    expected = sum((curve[k] + curve[k + 1]) / 2 for k in range(steps)) / steps
    np.testing.assert_allclose(faithfulness.auc(deletion)[0], expected, rtol=1e-12)


def test_fills_and_bad_settings():
    flat = np.full((1, 16, 16, 3), 7.0, np.float32)
    np.testing.assert_allclose(faithfulness.fill_images(flat, "blur"), flat, rtol=1e-5)  # a blur keeps a flat image
    edge = np.zeros((1, 16, 16, 3), np.float32)
    edge[:, :, 8:] = 255
    blurred = faithfulness.fill_images(edge, "blur")
    assert 0 < blurred[0, 8, 7, 0] < 255 and blurred[0, 8, 0, 0] < blurred[0, 8, 7, 0] < blurred[0, 8, 8, 0]
    np.testing.assert_array_equal(faithfulness.pixel_order(np.array([[[0.5, 0.9], [0.5, 0.1]]])), [[[1, 0], [2, 3]]])
    with pytest.raises(ValueError, match="fill='noise'; choose one of blur, mean"):
        faithfulness.fill_images(flat, "noise")
    with pytest.raises(ValueError, match="maps .* must be at the input size"):
        faithfulness.curves(linear_model(np.zeros((3, 2)), np.zeros(2)), flat[:, :4, :4], np.zeros((1, 2, 2)), [0])
