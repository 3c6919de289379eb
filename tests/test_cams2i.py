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
from keras_wsol.methods import CAM, CAMs2i


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
    np.testing.assert_allclose(interaction_per_image(s1, s2, mask, "mean").numpy(), [-4.0 / 4, 0.0])
    s1_far = s1 + np.array([[[1.0, 0.0], [0.0, 1.0]]] * 2, "float32")  # + 1 on the confident pixels 0 and 3
    np.testing.assert_allclose(interaction_per_image(s1_far, s2, mask, "sum").numpy()[0], 2.0 * 1 - 4.0 + 3.0 * 1)
    # Default: Eq. 4's sum at the paper's 28x28 maps, the pixel mean x 784.
    np.testing.assert_allclose(interaction_per_image(s1, s2, mask).numpy(), [-4.0 / 4 * 784, 0.0])


def test_intra_loss_is_eq4s_sum_on_a_3x3_map_and_the_same_picture_at_two_sizes_agrees():
    s1 = np.array([[[0.0, 0.5, 1.0], [0.2, 0.9, 0.4], [1.0, 0.0, 0.3]]], "float32")
    s2 = np.array([[[0.1, 0.5, 0.6], [0.0, 1.0, 0.2], [0.7, 0.2, 0.3]]], "float32")
    mask = np.array([[[1.0, -0.5, 2.0], [0.5, 1.0, -1.0], [1.5, 0.0, 1.0]]], "float32")
    by_hand = sum(((a - b) ** 2) * m for a, b, m in zip(s1.ravel(), s2.ravel(), mask.ravel()))
    # At a reference of 3x3 positions the reference reduction is Eq. 4's sum, to the last digit.
    np.testing.assert_allclose(interaction_per_image(s1, s2, mask, "reference", reference_positions=9), [by_hand])
    np.testing.assert_allclose(interaction_per_image(s1, s2, mask, "sum"), [by_hand], rtol=1e-6)
    # The same smooth picture at 12x12 and 24x24: the default agrees; the sum over the run's pixels grows 4x.
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    pictures = [np.exp(-((xx - cx) ** 2 + (yy - 0.5) ** 2) * 6)[None, ..., None] for cx in (0.4, 0.6)]
    pictures.append(np.cos(3 * xx)[None, ..., None])

    def at(side):
        m1, m2, m = (tf.image.resize(p, (side, side), "area")[..., 0] for p in pictures)
        return float(interaction_per_image(m1, m2, m)[0]), float(interaction_per_image(m1, m2, m, "sum")[0])

    (ref_12, sum_12), (ref_24, sum_24) = at(12), at(24)
    assert ref_24 == pytest.approx(ref_12, rel=0.03) and sum_24 == pytest.approx(4 * sum_12, rel=0.03)


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


@pytest.mark.parametrize("fusion", ["max", "mean", "min", "s1", "s2"])
def test_localization_maps_fuse_both_classifiers_as_numpy_does(fusion):
    model, x, _ = model_and_batch(3, fusion=fusion)
    logits, maps = model.logits_and_class_maps(x, np.array([1] * 6))
    (y1, _), (s1, s2) = model.two_classifiers(x)

    def norm(m):
        m = m[..., 1].numpy()
        low, high = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
        return (m - low) / (high - low)

    expected = {
        "max": np.maximum(norm(s1), norm(s2)),
        "min": np.minimum(norm(s1), norm(s2)),
        "mean": (norm(s1) + norm(s2)) / 2,
        "s1": norm(s1),
        "s2": norm(s2),
    }[fusion]
    np.testing.assert_allclose(maps.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(logits.numpy(), y1.numpy(), atol=1e-5)
    assert tuple(model.localization_maps(x).shape) == (6, 32, 32)


def impulse_centroid(backbone, tap_to_high, row, col):
    """Where a one-pixel impulse at tap ``mid`` lands in ``high``: the centroid of the response (``[row, col]``)."""
    mid = backbone.output["mid"]
    impulse = np.zeros((1, *mid.shape[1:]), "float32")
    impulse[0, row, col, :] = 1.0
    response = tap_to_high(impulse).numpy()[0].sum(axis=-1)
    grid = np.indices(response.shape)
    return (grid * response).sum(axis=(1, 2)) / response.sum()


def test_the_stride_one_pool_is_centred_so_s1_stays_aligned_with_s2_and_the_image():
    # S2 reads ``mid`` through 1x1 convs (no shift); S1 reads ``high``: mid -> stride-1 pool -> 3x3 conv.
    backbone = build_backbone("small", (32, 32, 3), keep_resolution_after="mid")
    pool = backbone.get_layer("block3_pool")
    assert pool.pool_size == (3, 3) and pool.strides == (1, 1)
    conv = backbone.get_layer("block4_conv")
    conv.kernel.assign(np.ones(conv.kernel.shape, "float32"))  # a symmetric, positive 3x3 kernel
    bn = backbone.get_layer("block4_bn")

    def tap_to_high(features):
        return keras.activations.relu(bn(conv(pool(features)), training=False))

    np.testing.assert_allclose(impulse_centroid(backbone, tap_to_high, 3, 5), [3, 5], atol=1e-5)
    # The 2x2 stride-1 'same' pool it replaces moves the impulse half a cell up and left.
    shifted = keras.layers.MaxPooling2D(2, strides=1, padding="same")

    def off_centre(features):
        return keras.activations.relu(bn(conv(shifted(features)), training=False))

    np.testing.assert_allclose(impulse_centroid(backbone, off_centre, 3, 5), [2.5, 4.5], atol=1e-5)


def test_the_int_weight_scales_exactly_l_int_in_the_total():
    model, x, y = model_and_batch(5, ramp_steps=0)
    total, parts, _ = model.compute_losses(x, y, training=False)
    model.int_weight = 3.0
    total_3, parts_3, _ = model.compute_losses(x, y, training=False)
    np.testing.assert_allclose(float(parts_3["int"]), float(parts["int"]), rtol=1e-6)
    np.testing.assert_allclose(float(total_3) - float(total), 2.0 * float(parts["int"]), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("detach", [True, False])
def test_detaching_the_teacher_decides_whether_l_int_reaches_s2(detach):
    model, x, y = model_and_batch(6, ramp_steps=0, detach_teacher=detach, inter_module=False)
    with tf.GradientTape() as tape:
        _, parts, _ = model.compute_losses(x, y, training=False)
    s2_weights = model.s2_head.trainable_weights
    grads = tape.gradient(parts["int"], s2_weights + model.s1_head.trainable_weights)
    s2_norm = sum(float(tf.norm(g)) for g in grads[: len(s2_weights)] if g is not None)
    s1_norm = sum(float(tf.norm(g)) for g in grads[len(s2_weights) :] if g is not None)
    assert s1_norm > 0  # the student always learns from L_int
    assert (s2_norm == 0) == detach


def test_with_imagenet_weights_f_is_a_frozen_imagenet_net_that_training_leaves_alone(tmp_path):
    keras.utils.set_random_seed(8)
    model = CAMs2i(
        num_classes=3, backbone="efficientnet_lite0", weights="imagenet", image_size=32, classifier_channels=8
    )
    assert model.feature_net_kind == "imagenet" and model.feature_net.name == "inter_f_imagenet"
    assert not model.feature_net.trainable_weights and model.feature_net.non_trainable_weights
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(8).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    before = [w.numpy().copy() for w in model.feature_net.weights]
    parts = model.train_on_batch(x, np.array([0, 0, 1, 1, 2, 2]), return_dict=True)
    assert parts["inter"] > 0
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.feature_net.weights))
    loaded = assert_round_trip(model, tmp_path / "m.keras", x[:2], inter_net="imagenet")  # auto, resolved
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, loaded.feature_net.weights))
    assert model_and_batch(8)[0].feature_net_kind == "small"  # random weights: a small f trained with the model


def test_the_small_f_normalizes_as_the_backbone_does():
    statistics = ((120.0, 110.0, 100.0), (60.0, 50.0, 40.0))
    model = CAMs2i(num_classes=3, image_size=32, classifier_channels=8, inter_dim=4, input_statistics=statistics)
    ours, backbone = model.feature_net.get_layer("f_preprocess"), model.backbone.get_layer("preprocess")
    assert ours.mode == backbone.mode == "standardize" and (ours.mean, ours.std) == (backbone.mean, backbone.std)


def test_cam_control_has_the_same_stride_one_surgery():
    control = CAM(num_classes=3, backbone="small", image_size=32, keep_resolution_after="mid")
    model, _, _ = model_and_batch(7)
    assert control.backbone.output["high"].shape[1:3] == model.backbone.output["high"].shape[1:3] == (8, 8)
    assert control.backbone.get_layer("block3_pool").pool_size == (3, 3)
    with pytest.raises(ValueError, match="keep_resolution_after='high'"):
        CAM(num_classes=3, backbone="small", image_size=32, keep_resolution_after="high")


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
