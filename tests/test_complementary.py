"""Complementary regions: exact complementary inputs, CAAM/SSAM identities, Eq. 14 by hand, steps, fit, save/load."""

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

from keras_wsol.data import pipeline, synthetic
from keras_wsol.layers import ChannelAssistedAttention, SpatialSelfAttention, hide_and_seek_masks
from keras_wsol.losses import attention_fusion_per_image
from keras_wsol.methods import Complementary
from keras_wsol.methods.complementary import AGGREGATIONS


def test_x_and_its_complement_hide_each_patch_exactly_once():
    keras.utils.set_random_seed(0)
    model = Complementary(num_classes=2, image_size=64, patch_sizes=(16, 32), seed=3)
    assert model.scaled_patch_sizes() == (5, 9)  # 16 and 32 at 224 px, scaled to 64 px
    images = np.random.default_rng(0).uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    x, xt, mask = (np.asarray(t) for t in model.complementary_pair(images))
    fill = np.array(model.hide_fill, "float32")
    shown = mask[..., None] == 1
    np.testing.assert_allclose(np.where(shown, x, xt), images, rtol=1e-6)  # each pixel shown in exactly one
    np.testing.assert_allclose(np.where(shown, xt, x), np.broadcast_to(fill, images.shape), rtol=1e-6)
    for m in mask:  # constant on the cells of one grid: 5 or 9 px patches from the top-left corner
        size = next(
            s
            for s in (5, 9)
            if all((m[r : r + s, c : c + s] == m[r, c]).all() for r in range(0, 64, s) for c in range(0, 64, s))
        )
        assert size in (5, 9)
    assert 0.2 < mask.mean() < 0.8  # hide probability 0.5
    again = np.asarray(
        Complementary(num_classes=2, image_size=64, patch_sizes=(16, 32), seed=3).complementary_pair(images)[2]
    )
    np.testing.assert_array_equal(again, mask)  # reproducible from the seed


def test_grid_mask_patches_are_whole_and_fixed_size_works():
    m = np.asarray(hide_and_seek_masks(4, 10, 10, (4,), keras.random.SeedGenerator(1)))
    for image in m:
        for r in range(0, 10, 4):
            for c in range(0, 10, 4):
                assert len(set(image[r : r + 4, c : c + 4].ravel())) == 1
    assert set(np.unique(m)) <= {0.0, 1.0}


def test_caam_and_ssam_start_as_identity_and_caam_shares_its_attention():
    rng = np.random.default_rng(1)
    f, ft = (rng.normal(size=(2, 3, 4, 6)).astype("float32") for _ in range(2))
    caam = ChannelAssistedAttention()
    out_x, out_xt = caam(f, ft)
    np.testing.assert_array_equal(np.asarray(out_x), f)
    np.testing.assert_array_equal(np.asarray(out_xt), ft)
    q_x, q_xt = (np.asarray(q) for q in caam.attentions(f, ft))
    np.testing.assert_allclose(q_xt, np.transpose(q_x, (0, 2, 1)))
    energy = np.einsum("bnc,bnd->bcd", f.reshape(2, 12, 6), ft.reshape(2, 12, 6))  # F_x F_x~^T (Eq. 1)
    expected = np.exp(energy - energy.max(-1, keepdims=True))
    np.testing.assert_allclose(q_x, expected / expected.sum(-1, keepdims=True), rtol=1e-5)
    caam.delta_x.assign(0.5)  # Eq. 4: F_x + delta sum_k lambda^{ki} F~^{kj}
    np.testing.assert_allclose(np.asarray(caam(f, ft)[0]), f + 0.5 * np.einsum("bkc,bhwk->bhwc", q_x, ft), rtol=1e-5)
    ssam = SpatialSelfAttention()
    np.testing.assert_array_equal(np.asarray(ssam(f)), f)
    assert ssam.query.filters == 1 and ssam.value.filters == 6  # C / 8 (at least 1) and C
    ssam.alpha.assign(1.0)
    assert not np.allclose(np.asarray(ssam(f)), f)


def test_fusion_loss_equals_hand_computed_mean_and_sum_and_is_zero_for_identical_maps():
    a = np.array([[[3.0, 0.0], [0.0, 4.0]]], "float32")  # unit vector (0.6, 0, 0, 0.8)
    b = np.array([[[0.0, 1.0], [0.0, 0.0]]], "float32")  # unit vector (0, 1, 0, 0)
    squared = [0.36, 1.0, 0.0, 0.64]  # (0.6 - 0)^2, (0 - 1)^2, 0, (0.8 - 0)^2
    np.testing.assert_allclose(attention_fusion_per_image(a, b, "mean").numpy(), [sum(squared) / 4], rtol=1e-6)
    np.testing.assert_allclose(attention_fusion_per_image(a, b, "sum").numpy(), [sum(squared)], rtol=1e-6)
    # Default: the paper's 14x14 mean, i.e. the sum / 196, whatever the map size.
    np.testing.assert_allclose(attention_fusion_per_image(a, b).numpy(), [sum(squared) / 196], rtol=1e-6)
    np.testing.assert_allclose(attention_fusion_per_image(a, 2 * a).numpy(), [0.0], atol=1e-7)
    zero = np.zeros_like(a)  # the trap: two all-zero maps also give 0, with finite gradients
    z = tf.Variable(zero)
    with tf.GradientTape() as tape:
        loss = attention_fusion_per_image(z, zero)
    assert float(loss[0]) == 0.0 and np.isfinite(tape.gradient(loss, z).numpy()).all()
    with pytest.raises(ValueError, match="reduction='max'"):
        attention_fusion_per_image(a, b, "max")


def test_beta_weighs_the_fusion_loss_per_position_at_every_map_size_as_at_the_papers():
    """The same two pictures at 7x7, 14x14 and 28x28: the reference loss is the same, beta / 196 per unit of summed
    squared difference; the mean over the run's own positions is not (beta / (h w))."""
    yy, xx = np.mgrid[0:28, 0:28] / 27.0
    a, b = np.exp(-((xx - 0.3) ** 2 + (yy - 0.4) ** 2) * 8), np.exp(-((xx - 0.6) ** 2 + (yy - 0.5) ** 2) * 8)

    def at(side):
        resize = lambda m: tf.image.resize(m[None, ..., None], (side, side), "area")[..., 0]  # noqa: E731
        return {r: float(attention_fusion_per_image(resize(a), resize(b), r)[0]) for r in ("reference", "sum", "mean")}

    small, paper, large = at(7), at(14), at(28)
    assert paper["reference"] == pytest.approx(paper["mean"], rel=1e-6)  # the paper's mean at its own size
    for other in (small, large):
        assert other["reference"] == pytest.approx(paper["reference"], rel=0.05)
        assert other["reference"] == pytest.approx(other["sum"] / 196, rel=1e-6)
    assert large["mean"] < paper["mean"] / 3 and small["mean"] > paper["mean"] * 3  # what the old default did


def test_the_model_uses_its_fusion_reduction():
    mean_model, x, y = model_and_batch(9, fusion_reduction="mean")
    sum_model, _, _ = model_and_batch(9, fusion_reduction="sum")
    side = mean_model.backbone.output["high"].shape[1]
    _, mean_parts, _ = mean_model.compute_losses(x, y, training=False)
    _, sum_parts, _ = sum_model.compute_losses(x, y, training=False)
    np.testing.assert_allclose(float(sum_parts["fusion"]), side * side * float(mean_parts["fusion"]), rtol=1e-4)


def model_and_batch(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = Complementary(num_classes=3, backbone="small", image_size=32, seed=seed, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(seed).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    return model, x, np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("use_caam,use_ssam", [(True, True), (False, True), (True, False)])
def test_one_step_updates_exactly_the_modules_in_use(use_caam, use_ssam):
    model, x, y = model_and_batch(1, use_caam=use_caam, use_ssam=use_ssam)
    model.train_on_batch(x, y)  # the first step moves delta and alpha off 0; the second reaches M, L, P
    changed = changed_weights(model, lambda: model.train_on_batch(x, y))
    assert changed == {w.path for w in model.weights}
    assert (model.caam is not None) == use_caam and (model.ssam_x is not None) == use_ssam
    assert any("ssam_complement/m" in w.path for w in model.weights) == use_ssam
    if use_caam:
        assert float(model.caam.delta_x) != 0.0 and float(model.caam.delta_xt) != 0.0


def test_inference_switches_the_attention_off_unless_asked():
    model, x, _ = model_and_batch(2)
    model.caam.delta_x.assign(3.0)
    model.ssam_x.alpha.assign(3.0)
    plain = np.asarray(model.features(x)["cam"])
    expected = np.asarray(model.aggregated(2.0 * model.backbone(x)["high"]))
    np.testing.assert_allclose(plain, expected, rtol=1e-5, atol=1e-5)  # conv(F + F): CAM of the trained parts
    model.attention_at_inference = True
    assert not np.allclose(np.asarray(model.features(x)["cam"]), plain)


@pytest.mark.parametrize("aggregation", AGGREGATIONS[1:])
def test_aggregation_choices(aggregation):
    model, x, _ = model_and_batch(3, aggregation=aggregation)
    has_norm = aggregation == "bn_relu"
    assert (model.aggregate_norm is not None) == has_norm and (model.aggregate.bias is None) == has_norm
    # A conv pushing every output below zero: the ReLU alone dies, BatchNorm in training keeps every channel alive.
    model.aggregate.kernel.assign(-np.abs(np.asarray(model.aggregate.kernel)) - 1e-3)
    features = np.abs(np.asarray(model.backbone(x)["high"])) + 0.1
    fused = np.asarray(model.aggregated(features, training=True))
    positive = (fused > 0).mean()
    if aggregation == "bn_relu":
        alive = (fused > 0).reshape(-1, fused.shape[-1]).any(axis=0)
        assert alive.all() and 0.2 < positive < 0.8 and (fused >= 0).all()
    else:
        assert positive == 0.0 and ((fused == 0).all() if aggregation == "relu" else (fused < 0).all())


def test_auto_aggregation_is_batch_norm_on_a_pretrained_backbone_only_and_is_saved_resolved(tmp_path):
    weights = tmp_path / "backbone.weights.h5"
    Complementary(num_classes=2, backbone="small", image_size=32).backbone.save_weights(str(weights))
    scratch = Complementary(num_classes=2, backbone="small", image_size=32)
    pretrained = Complementary(num_classes=2, backbone="small", image_size=32, weights=str(weights))
    assert AGGREGATIONS[0] == "auto" == scratch.aggregation == pretrained.aggregation
    assert (scratch.aggregation_kind, pretrained.aggregation_kind) == ("relu", "bn_relu")
    assert scratch.aggregate_norm is None and pretrained.aggregate_norm is not None
    x = np.zeros((2, 32, 32, 3), "float32")
    assert_round_trip(pretrained, tmp_path / "p.keras", x, aggregation="bn_relu")  # restored without its weights


def test_short_fit_then_save_and_load(tmp_path):
    keras.utils.set_random_seed(5)
    data = synthetic.generate("train", num_classes=4, images_per_class=16, image_size=40)
    ds = pipeline.training_dataset(data.as_split(), 16, seed=0)
    model = Complementary(num_classes=4, backbone="small", image_size=40, beta=5.0, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(ds, epochs=4, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and np.isfinite(history["fusion"]).all()
    assert_round_trip(model, tmp_path / "m.keras", data.images[:4], beta=5.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_losses_stay_float32(policy):
    with precision_policy(policy):
        model, x, y = model_and_batch(6)
        assert_float32_losses_and_finite_step(model, x, y)


def test_a_shared_classifier_is_one_layer_that_both_branches_train_and_it_saves(tmp_path):
    model, x, y = model_and_batch(7, shared_classifier=True)
    two, _, _ = model_and_batch(7)
    assert model.classifier_complement is model.classifier and two.classifier_complement is not two.classifier
    assert not any("classifier_complement" in w.path for w in model.weights)
    assert len(two.weights) - len(model.weights) == 2  # the second classifier's kernel and bias
    model.train_on_batch(x, y)  # as above: the second step reaches every attention weight
    changed = changed_weights(model, lambda: model.train_on_batch(x, y))
    assert changed == {w.path for w in model.weights}
    assert_round_trip(model, tmp_path / "shared.keras", x, shared_classifier=True)


def test_the_pair_input_at_inference_sums_both_branches_on_a_fixed_checkerboard():
    model, x, _ = model_and_batch(8, hide_prob=0.3)
    _, _, mask = model.complementary_pair(x, fixed=True)
    patch = min(model.scaled_patch_sizes())
    row = (np.arange(32) // patch)[:, None] + (np.arange(32) // patch)[None, :]
    np.testing.assert_array_equal(np.asarray(mask)[0], (row % 2 == 0).astype("float32"))
    (logits_x, cams_x), (logits_xt, cams_xt) = model.branches(x, fixed=True)
    full_logits, full_maps = model.logits_and_class_maps(x, np.array([2] * 6))
    model.set_inference_settings({"inference_input": "pair"})
    logits, maps = model.logits_and_class_maps(x, np.array([2] * 6))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(logits_x + logits_xt), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(maps), np.asarray(cams_x + cams_xt)[..., 2], rtol=1e-5, atol=1e-5)
    assert not np.allclose(np.asarray(maps), np.asarray(full_maps))
    with pytest.raises(ValueError, match="beta changes training in Complementary; what can change on a trained"):
        model.set_inference_settings({"beta": "1"})
    with pytest.raises(ValueError, match="inference_input='half': choose one of full, pair"):
        model.set_inference_settings({"inference_input": "half"})
