"""CAMs2i: Eq. 3, 4, 6, 9-10 by hand, the w0 ramp, which variables a step changes, fit, save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    POLICIES,
    assert_float32_losses_and_finite_step,
    assert_round_trip,
    changed_weights,
    precision_policy,
)

from keras_wsol.backbones import build_backbone
from keras_wsol.data import pipeline, synthetic
from keras_wsol.losses import adn_per_image, confidence_mask, inter_sample_per_image, interaction_per_image, linear_ramp
from keras_wsol.methods import CAMs2i


def test_confidence_mask_and_interaction_loss_equal_hand_computed_values():
    s2 = np.array([[[0.0, 1.0], [2.0, 5.0]], [[1.0, 1.0], [1.0, 1.0]]], "float32")
    # Image 0: mu0 = 2, distances (2, 1, 0, 3), mu1 = 1.5: below mu1 -> negated.
    # Image 1: constant map, every distance 0 = mu1 -> kept (0).
    mask = confidence_mask(s2).numpy()
    np.testing.assert_allclose(mask, [[[2.0, -1.0], [0.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    s1 = np.array(
        [
            [[0.0, 3.0], [2.0, 5.0]],  # differs from S2 only where the mask is -1: (3 - 1)^2 * -1
            [[4.0, 0.0], [0.0, 0.0]],
        ],
        "float32",
    )
    np.testing.assert_allclose(interaction_per_image(s1, s2, mask).numpy(), [-4.0 / 4, 0.0])
    s1_far = s1 + np.array([[[1.0, 0.0], [0.0, 1.0]]] * 2, "float32")  # + 1 on the confident pixels 0 and 3
    np.testing.assert_allclose(interaction_per_image(s1_far, s2, mask).numpy()[0], (2.0 * 1 - 4.0 + 3.0 * 1) / 4)


def test_adn_loss_equals_hand_computed_value_and_only_supervises_s2():
    y1 = tf.constant([[0.0, 0.0]])
    y2 = tf.constant([[np.log(3.0), 0.0]])  # softmax (0.75, 0.25) against (0.5, 0.5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([y1, y2])
        loss = adn_per_image(y1, y2)
    np.testing.assert_allclose(loss.numpy(), [2 * 0.25**2], rtol=1e-6)
    assert tape.gradient(loss, y1) is None and np.abs(tape.gradient(loss, y2).numpy()).sum() > 0


def test_inter_sample_loss_equals_hand_computed_value():
    fg = np.array([[1.0, 0.0], [1.0, 1.0], [2.0, 2.0], [2.0, 2.0]], "float32")
    bg = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 1.0], [1.0, 1.0]], "float32")
    labels = np.array([0, 0, 1, 1])
    # Pair (0, 1): d+ = (1 + 9) / (2 * 2) = 2.5, d- = (1 + 5) / 4 = 1.5 -> -log p = softplus(1).
    # Pair (2, 3): d+ = 0, d- = (2 + 2) / 4 = 1 -> softplus(-1). Each pair counted once, at its first image.
    expected = [np.log1p(np.e), 0.0, np.log1p(np.exp(-1.0)), 0.0]
    np.testing.assert_allclose(inter_sample_per_image(fg, bg, labels).numpy(), expected, rtol=1e-6)
    assert inter_sample_per_image(fg, bg, np.arange(4)).numpy().sum() == 0  # no same-class pair, no loss


def test_w0_ramp_starts_at_zero_and_caps_at_one():
    assert [float(linear_ramp(s, 4)) for s in (0, 1, 4, 9)] == [0.0, 0.25, 1.0, 1.0]
    assert float(linear_ramp(0, 0)) == 1.0


def model_and_batch(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = CAMs2i(num_classes=3, backbone="small", image_size=32, classifier_channels=16, inter_dim=8, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(seed).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    return model, x, np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("inter_module", [True, False])
def test_one_step_updates_both_classifiers_the_backbone_and_f(inter_module):
    model, x, y = model_and_batch(1, inter_module=inter_module)
    assert (model.feature_net is not None) == inter_module and model.uses_class_sets == inter_module
    changed = changed_weights(model, lambda: model.train_on_batch(x, y))
    trainable = {w.path for w in model.trainable_weights}
    moving = {w.path for w in model.non_trainable_weights}  # BatchNorm statistics
    assert changed == trainable | moving
    groups = [model.backbone, model.s1_head, model.classifier, model.s2_head, model.s2_classifier]
    if inter_module:
        groups.append(model.feature_net)
    assert all(layer.trainable_weights for layer in groups)
    assert trainable == {w.path for layer in groups for w in layer.trainable_weights}


def test_first_step_leaves_the_intra_terms_out_then_w0_rises():
    model, x, y = model_and_batch(2, ramp_steps=2)
    total, parts, y1 = model.compute_losses(x, y, training=True)
    assert float(parts["w0"]) == 0.0 and float(parts["int"]) != 0.0 and float(parts["adn"]) > 0.0
    expected = model.classification_loss(y, y1) + parts["ce_s2"] + parts["inter"]
    np.testing.assert_allclose(float(total), float(expected), rtol=1e-6)
    w0 = [float(model.train_on_batch(x, y, return_dict=True)["w0"]) for _ in range(3)]
    assert w0 == [0.0, 0.5, 1.0]  # steps 0, 1, 2 of a 2-step ramp


def test_localization_maps_average_both_classifiers():
    model, x, _ = model_and_batch(3)
    logits, maps = model.logits_and_class_maps(x, np.array([1] * 6))
    (y1, _), (s1, s2) = model.two_classifiers(x)

    def norm(m):
        m = m[..., 1].numpy()
        low, high = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        return (m - low) / (high - low)

    np.testing.assert_allclose(maps.numpy(), (norm(s1) + norm(s2)) / 2, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), y1.numpy(), atol=1e-5)
    assert tuple(model.localization_maps(x).shape) == (6, 32, 32)


def test_s2_tap_keeps_the_map_size_and_bad_settings_fail_clearly():
    assert tuple(build_backbone("vgg16", (64, 64, 3), keep_resolution_after="mid").output["high"].shape[1:3]) == (8, 8)
    model, x, _ = model_and_batch(4, s2_tap="low", inter_net="mid")
    _, (s1, s2) = model.two_classifiers(x)
    assert s1.shape == s2.shape == (6, 16, 16, 3) and model.feature_net is None
    with pytest.raises(ValueError, match="s2_tap='mid'.*inception_v3 allows no tap"):
        CAMs2i(num_classes=2, backbone="inception_v3", image_size=75)
    with pytest.raises(ValueError, match="head_channels must be 0"):
        CAMs2i(num_classes=2, image_size=32, head_channels=8)
    with pytest.raises(ValueError, match="inter_net='alexnet'"):
        CAMs2i(num_classes=2, image_size=32, inter_net="alexnet")


def test_short_fit_on_synthetic_sets_then_save_and_load(tmp_path):
    keras.utils.set_random_seed(5)
    data = synthetic.generate("train", num_classes=4, images_per_class=20, image_size=40)
    ds = pipeline.class_set_dataset(data.as_split(), set_size=4, sets_per_batch=4, seed=0)
    model = CAMs2i(num_classes=4, backbone="small", image_size=40, classifier_channels=32, inter_dim=16, ramp_steps=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(ds, epochs=4, steps_per_epoch=5, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and np.isfinite(history["inter"]).all()
    assert_round_trip(model, tmp_path / "m.keras", data.images[:4], classifier_channels=32)


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_losses_stay_float32(policy):
    with precision_policy(policy):
        model, x, y = model_and_batch(6)
        assert "inter" in assert_float32_losses_and_finite_step(model, x, y)
