"""keras_wsol.localize: maps at each photo's size, the protocol's boxes, the threshold rules."""

import keras
import numpy as np
import pytest

import keras_wsol
from keras_wsol import localizers
from keras_wsol.contours import boxes_at_threshold
from keras_wsol.localization import otsu_threshold, resolve_threshold


def classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="features")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))


def test_maps_boxes_and_classes_equal_the_localizer_and_the_protocol_per_photo():
    model = classifier()
    rng = np.random.default_rng(0)
    photos = [rng.uniform(0, 255, (16, 16, 3)).astype("float32"), rng.uniform(0, 255, (16, 16, 3)).astype("float32")]
    found = keras_wsol.localize(model, np.stack(photos), localizer="gradcam", layer="features", class_ids=[2, 1])
    expected = localizers.compute_scoremaps(model, np.stack(photos), "gradcam", "features", class_ids=[2, 1])
    logits = np.asarray(model(np.stack(photos)))
    for result, scoremap, row, k in zip(found, expected, logits, (2, 1)):
        np.testing.assert_allclose(result.map, scoremap, atol=1e-5)
        np.testing.assert_array_equal(result.box, boxes_at_threshold(result.map, 0.2)[0])
        np.testing.assert_array_equal(result.boxes, boxes_at_threshold(result.map, 0.2, multi_contour=True))
        probability = np.exp(row[k] - row.max()) / np.exp(row - row.max()).sum()
        assert result.class_id == k and result.threshold == 0.2
        np.testing.assert_allclose(result.probability, probability, rtol=1e-5)


def test_a_photo_of_another_size_gets_its_map_and_box_in_its_own_pixels():
    model = classifier()
    photo = np.random.default_rng(1).uniform(0, 255, (40, 24, 3))
    [result] = keras_wsol.localize(model, photo, localizer="cam", layer="features", threshold="percentile:90")
    assert result.map.shape == (40, 24) and result.map.min() == 0 and result.map.max() == 1
    x0, y0, x1, y1 = result.box
    assert 0 <= x0 <= x1 < 24 and 0 <= y0 <= y1 < 40
    assert result.class_id == int(np.argmax(model(keras.ops.image.resize(photo[None], (16, 16)))))


def test_otsu_and_percentile_thresholds_by_hand():
    two_modes = np.zeros((10, 10))
    two_modes[:3] = 0.8  # 30 pixels at level 204, 70 at 0
    tau = otsu_threshold(two_modes)
    assert 0 <= tau < 0.8  # between the modes: the box is the bright rows
    assert boxes_at_threshold(two_modes, tau)[0].tolist() == [0, 0, 9, 3]  # x0 + w, y0 + h, clipped to the photo
    ramp = np.linspace(0, 1, 100).reshape(10, 10)
    np.testing.assert_allclose(resolve_threshold("percentile:75", ramp), np.percentile(ramp, 75))
    for bad in ("percentile:100", "percentile:x", "median", 1.0, -0.1):
        with pytest.raises(ValueError, match="threshold="):
            resolve_threshold(bad, ramp)
    with pytest.raises(ValueError, match="image 0 has shape"):
        keras_wsol.localize(classifier(), np.zeros((16, 16)))
