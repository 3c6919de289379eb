"""ORNet and its refinement: the losses by hand, attentive erasing, what each stage trains, the hand-over."""

import math

import keras
import numpy as np
import pytest
from helpers import (
    POLICIES,
    assert_float32_losses_and_finite_step,
    assert_round_trip,
    changed_weights,
    precision_policy,
)

from keras_wsol import localizers
from keras_wsol.data import pipeline, synthetic
from keras_wsol.layers import attentive_erasing, erasing_draws, official_attentive_erasing
from keras_wsol.losses import area_per_image, weighted_entropy_per_image
from keras_wsol.methods import CAM, ORNet, ORNetRefinement

SIZE = 32


def batch(seed=0, count=4):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (count, SIZE, SIZE, 3)).astype("float32"), np.arange(count) % 2


def stage1_model(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    model = ORNet(num_classes=2, backbone="small", image_size=SIZE, generator_channels=4, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return model


def stage2_model(seed=0, **kwargs):
    stage1 = stage1_model(seed)
    stage1.train_on_batch(*batch(seed))  # stage-1 weights that differ from a fresh model's
    evaluator = CAM(num_classes=2, backbone="small", image_size=SIZE)
    model = ORNetRefinement.from_stage1(stage1, evaluator, seed=seed, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    return stage1, evaluator, model


def test_weighted_entropy_and_area_equal_hand_computed_values():
    maps = np.array([[[0.5, 0.9], [0.1, 1.0]]], "float32")
    # Eq. 12: H(0.5) = log 2, H(0.9) = H(0.1) = -0.9 log 0.9 - 0.1 log 0.1, H(1) = 0.
    # Eq. 15 (mu 0.5, sigma 0.1): gamma(0.5) = 1, gamma(0.9) = gamma(0.1) = exp(-0.16 / 0.02) = exp(-8).
    h_09 = -0.9 * math.log(0.9) - 0.1 * math.log(0.1)
    expected = (math.log(2) + 2 * math.exp(-8) * h_09 + 0.0) / 4  # Eq. 14: the mean over the 4 pixels
    assert float(weighted_entropy_per_image(maps)[0]) == pytest.approx(expected, rel=1e-5)
    # sigma = inf gives gamma = 1: the plain mean entropy of Eq. 13.
    assert float(weighted_entropy_per_image(maps, sigma=math.inf)[0]) == pytest.approx(
        (math.log(2) + 2 * h_09) / 4, abs=1e-4
    )
    assert float(area_per_image(maps)[0]) == pytest.approx((0.5 + 0.9 + 0.1 + 1.0) / 4)  # Eq. 16


def test_fixed_erasing_drops_only_candidates_inside_a_peak_centred_rectangle():
    rng = np.random.default_rng(0)
    maps = rng.uniform(0, 1, (200, 12, 10)).astype("float32")
    dropped, rect = attentive_erasing(maps, keras.random.SeedGenerator(1), threshold=0.6, size_range=(0.2, 0.8))
    dropped, rect = np.asarray(dropped), np.asarray(rect)
    assert not np.any(dropped & ~rect), "a pixel outside the rectangle was erased"
    assert not np.any(dropped & (maps <= 0.6)), "a pixel at or below the threshold was erased"
    for m, r in zip(maps, rect):
        py, px = np.unravel_index(np.argmax(m), m.shape)
        rows, cols = np.flatnonzero(r.any(axis=1)), np.flatnonzero(r.any(axis=0))
        assert r[py, px] and r.sum() == len(rows) * len(cols)  # a solid rectangle holding the peak
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        # Centred on the peak (up to the border) and no taller or wider than 0.8 of the side.
        assert abs((py - rows[0]) - (rows[-1] - py)) <= 1 or rows[0] == 0 or rows[-1] == 11
        assert len(rows) <= 0.8 * 12 + 1 and len(cols) <= 0.8 * 10 + 1
    candidates = rect & (maps > 0.6)
    assert 0.45 < dropped.sum() / candidates.sum() < 0.55  # each dropped with probability 0.5
    everything = np.asarray(attentive_erasing(maps, keras.random.SeedGenerator(1), 0.6, (0.2, 0.8), drop_prob=1.0)[0])
    np.testing.assert_array_equal(everything, candidates)


def official_erasing_numpy(maps, draws, gate_prob=0.5, max_factor=0.5, min_half=4):
    """models/erasing.py's AttentiveErasing + Dropout, one image at a time, with the given uniforms."""
    factor = draws["factor"] * max_factor  # np.random.uniform(0, max_factor)
    dropped, candidates = np.zeros(maps.shape, bool), np.zeros(maps.shape, bool)
    for j, m in enumerate(maps):
        if not draws["gate"][j] < gate_prob:  # torch.rand(1) < p
            continue
        peak = np.argmax(m)
        cy, cx = peak // m.shape[1], peak % m.shape[1]
        threshold = m.max() - (m.max() - m.min()) * factor
        ys, xs = np.nonzero(m > threshold)
        if len(ys) == 0:
            continue  # .min() of nothing raises: no erasing
        bound_h, bound_w = (ys.max() - ys.min()) // 2, (xs.max() - xs.min()) // 2
        if bound_h <= min_half or bound_w <= min_half:
            continue  # torch.randint(low, high) with high <= low raises: no erasing
        h = min_half + int(np.floor(draws["height"][j] * (bound_h - min_half)))  # randint(min_half, bound)
        w = min_half + int(np.floor(draws["width"][j] * (bound_w - min_half)))
        y0, y1 = max(cy - h, 0), min(cy + h, m.shape[1])
        x0, x1 = max(cx - w, 0), min(cx + w, m.shape[1])
        for y, x in zip(ys, xs):
            if y0 < y < y1 and x0 < x < x1 and y * x > 0:  # the proposals kept after the official masking
                candidates[j, y, x] = True
                # Dropout: kept with Bernoulli(1 - (0.6 p + 0.2)), i.e. dropped when u < 0.6 p + 0.2.
                dropped[j, y, x] = draws["drop"][j, y, x] < 0.6 * m[y, x] + 0.2
    return dropped, candidates


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_official_erasing_matches_a_numpy_reimplementation_of_the_official_code(seed):
    rng = np.random.default_rng(seed)
    # Smooth blobs of random size and place, so the above-threshold regions vary around the 10-pixel bound.
    grid = np.indices((56, 56)).astype("float32")
    centres, widths = rng.uniform(5, 51, (64, 2)), rng.uniform(2, 14, (64, 1, 1))
    maps = np.exp(-((grid[None] - centres[:, :, None, None]) ** 2).sum(axis=1) / (2 * widths**2))
    maps = (0.05 + 0.9 * maps + 0.02 * rng.uniform(size=maps.shape)).astype("float32")
    draws = {name: np.asarray(value) for name, value in erasing_draws(maps, keras.random.SeedGenerator(seed)).items()}
    expected = official_erasing_numpy(maps, draws)
    dropped, candidates = (np.asarray(t) for t in official_attentive_erasing(maps, draws))
    np.testing.assert_array_equal(candidates, expected[1])
    np.testing.assert_array_equal(dropped, expected[0])
    erased_images = candidates.any(axis=(1, 2))
    assert 0 < erased_images.sum() < 0.6 * len(maps)  # the gate and the size bound leave some images alone
    assert not np.any(dropped & ~candidates)


def test_the_evaluator_sees_the_squashed_erased_map_with_erasing_and_the_raw_map_otherwise():
    _, _, model = stage2_model(3, erasing=False)
    x, y = batch(3)
    _, _, p_a = model.activation_maps(x)
    squashed = 0.6 * np.asarray(p_a) + 0.2
    # Erasing off: the raw map of Eq. 9 in training too (the official squash lives inside its erasing).
    np.testing.assert_allclose(np.asarray(model.training_mask(p_a)), np.asarray(p_a), rtol=1e-6)
    _, _, logits = model.compute_losses(x, y, training=False)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.evaluate_maps(x, p_a)), rtol=1e-5)
    p_train = np.asarray(model.activation_maps(x, training=True)[2])  # BatchNorm on the batch's statistics
    _, _, logits = model.compute_losses(x, y, training=True)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model.evaluate_maps(x, p_train)), rtol=1e-5)
    _, _, erasing = stage2_model(3, erase_gate=1.0, erase_max_factor=1.0, erase_min_half=1)
    shown = np.asarray(erasing.training_mask(p_a))
    kept = shown != 0
    np.testing.assert_allclose(shown[kept], squashed[kept], rtol=1e-6)  # erased pixels are 0, the rest squashed
    assert (~kept).any()


def test_the_official_area_term_adds_the_lower_ranked_classes_channels():
    _, _, model = stage2_model(4)
    f_a = np.random.default_rng(4).uniform(0, 1, (2, 3, 3, 6)).astype("float32")
    p_a = np.full((2, 3, 3), 0.5, "float32")
    logits = np.array([[6.0, 5, 4, 3, 2, 1], [1.0, 2, 3, 4, 5, 6]], "float32")
    model.area_top_classes = 5  # ranks 4 and 5: classes 3, 4 for image 0 and 2, 1 for image 1
    means = f_a.mean(axis=(1, 2))
    expected = 0.5 + np.array([means[0, 3] + means[0, 4], means[1, 2] + means[1, 1]]).mean()
    assert float(model.area_loss(p_a, f_a, logits)) == pytest.approx(expected, rel=1e-6)


def test_stage1_step_trains_every_part_and_logs_both_losses():
    model = stage1_model()
    x, y = batch()
    changed = changed_weights(model, lambda: model.train_on_batch(x, y), key=id)
    assert changed == {id(w) for w in model.weights}
    logs = model.train_on_batch(x, y, return_dict=True)
    assert set(logs) == {"loss", "accuracy", "aux_loss"} and logs["loss"] > logs["aux_loss"] > 0


def moving_statistics(parts) -> list:
    """The running mean and variance of every BatchNorm layer inside ``parts``."""
    return [
        w
        for part in parts
        for layer in part._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


@pytest.mark.parametrize("frozen_batchnorm", ["batch", "inference"])
@pytest.mark.parametrize("trainable_set", ["decoder", "generator", "generator_shallow"])
def test_stage2_step_changes_exactly_the_chosen_trainable_set(trainable_set, frozen_batchnorm):
    _, evaluator, model = stage2_model(trainable_set=trainable_set, frozen_batchnorm=frozen_batchnorm)
    trained = {
        "decoder": model.generator.decoder_layers(),
        "generator": [model.generator],
        "generator_shallow": [model.generator, model.shallow],
    }[trainable_set]
    frozen_in_forward = {
        "decoder": [model.shallow, *model.generator.encoder_layers()],
        "generator": [model.shallow],
        "generator_shallow": [],
    }[trainable_set]
    x, y = batch(1)
    changed = changed_weights(model, lambda: model.train_on_batch(x, y), key=id)
    # batch: the frozen parts of the forward pass update their running statistics, as PyTorch's train mode does
    statistics = moving_statistics(frozen_in_forward) if frozen_batchnorm == "batch" else []
    assert statistics or frozen_batchnorm == "inference" or trainable_set == "generator_shallow"
    assert changed == {id(w) for part in trained for w in part.weights} | {id(w) for w in statistics}
    assert {id(v) for v in model.trainable_variables} == {id(w) for part in trained for w in part.trainable_weights}
    frozen = [w for part in (evaluator, model.deep, model.classifier, model.aux_conv) for w in part.weights]
    if trainable_set == "decoder":
        frozen += [w for layer in model.generator.encoder_layers() for w in layer.weights] + model.shallow.weights
    frozen = [w for w in frozen if id(w) not in {id(s) for s in statistics}]
    assert frozen and not {id(w) for w in frozen} & changed


def test_stage2_starts_from_stage1_weights_and_its_evaluator_is_unchanged_by_a_fit():
    stage1, evaluator, model = stage2_model(2)
    for part in ("shallow", "generator", "deep", "classifier", "aux_conv"):
        for a, b in zip(getattr(stage1, part).weights, getattr(model, part).weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    x, _ = batch(2)
    np.testing.assert_array_equal(np.asarray(model.localization_maps(x)), np.asarray(stage1.localization_maps(x)))
    before = [w.numpy().copy() for w in evaluator.weights]
    data = synthetic.generate("train", num_classes=2, images_per_class=8, image_size=SIZE)
    model.fit(pipeline.training_dataset(data.as_split(), 8, seed=0), epochs=1, verbose=0)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, evaluator.weights))
    assert not np.array_equal(np.asarray(model.localization_maps(x)), np.asarray(stage1.localization_maps(x)))


@pytest.mark.parametrize(
    "erasing",
    [
        {"erasing_recipe": "fixed", "erase_threshold": 0.0, "erase_prob": 1.0},
        {"erasing_recipe": "official", "erase_gate": 1.0, "erase_max_factor": 1.0, "erase_min_half": 1},
    ],
)
def test_erasing_is_off_at_inference_and_logits_come_from_the_evaluator(erasing):
    _, evaluator, model = stage2_model(3, **erasing)
    x, y = batch(3)
    _, _, p_a = model.activation_maps(x)
    unerased = np.asarray(model.evaluate_maps(x, p_a))
    for _ in range(2):  # the erasing would drop every pixel of the rectangle here
        _, parts, logits = model.compute_losses(x, y, training=False)
        np.testing.assert_allclose(np.asarray(logits), unerased, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(evaluator(x)))
    maps = np.asarray(model.class_maps(x, np.array([0, 0, 0, 0])))
    np.testing.assert_array_equal(maps, np.asarray(model.class_maps(x, np.array([1, 1, 1, 1]))))  # class-agnostic
    with pytest.raises(ValueError, match="class-agnostic"):
        localizers.get_localizer(model, "gradcam", "mid")


def test_bad_settings_fail_clearly():
    stage1 = stage1_model()
    with pytest.raises(TypeError, match="ORNet has no argument alpha"):
        ORNet(num_classes=2, backbone="small", image_size=SIZE, alpha=1.0)  # a refinement setting
    with pytest.raises(TypeError, match="ORNetRefinement needs the argument evaluator"):
        ORNetRefinement(num_classes=2, backbone="small", image_size=SIZE)
    with pytest.raises(ValueError, match="evaluator has 3 classes"):
        ORNetRefinement.from_stage1(stage1, CAM(num_classes=3, backbone="small", image_size=SIZE))
    with pytest.raises(ValueError, match="tap='mid' but the stage-1 model has 'low'"):
        ORNetRefinement.from_stage1(stage1, CAM(num_classes=2, backbone="small", image_size=SIZE), tap="mid")
    with pytest.raises(ValueError, match="must be a stage-1 ORNet, not CAM"):
        ORNetRefinement.from_stage1(CAM(num_classes=2, backbone="small", image_size=SIZE), stage1)
    with pytest.raises(ValueError, match="area_top_classes=25 needs at least that many classes; this model has 2"):
        ORNetRefinement.from_stage1(stage1, CAM(num_classes=2, backbone="small", image_size=SIZE), area_top_classes=25)


def test_short_fits_of_both_stages_then_save_and_load(tmp_path):
    keras.utils.set_random_seed(4)
    data = synthetic.generate("train", num_classes=2, images_per_class=12, image_size=SIZE)
    ds = pipeline.training_dataset(data.as_split(), 8, seed=0)
    stage1 = stage1_model(4)
    history = stage1.fit(ds, epochs=3, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]
    stage1 = assert_round_trip(stage1, tmp_path / "stage1.keras", data.images[:4], generator_channels=4)
    model = ORNetRefinement.from_stage1(stage1, CAM(num_classes=2, backbone="small", image_size=SIZE), alpha=2.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-4))
    history = model.fit(ds, validation_data=ds, epochs=2, verbose=0).history
    assert {"evaluation_loss", "entropy", "area", "val_loss", "val_entropy"} <= set(history)
    assert np.isfinite(history["loss"]).all()
    loaded = assert_round_trip(model, tmp_path / "stage2.keras", data.images[:4], alpha=2.0)
    np.testing.assert_array_equal(np.asarray(loaded(data.images[:4])), np.asarray(model(data.images[:4])))
    assert not loaded.evaluator.trainable_weights
    assert np.isfinite(loaded.train_on_batch(data.images[:8], data.labels[:8], return_dict=True)["loss"])


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_maps_and_losses_stay_float32(policy):
    with precision_policy(policy):
        stage1, _, model = stage2_model(5)
        x, y = batch(5)
        assert np.isfinite(stage1.train_on_batch(x, y, return_dict=True)["loss"])
        _, _, p_a = model.activation_maps(x, training=True)
        assert p_a.dtype == "float32"
        assert_float32_losses_and_finite_step(model, x, y)


def test_models_saved_before_0_3_0_load_under_today_s_classes(tmp_path):
    """Before 0.3.0 both stages saved every setting of both and a ``stage`` entry (and ``refine_learning_rate``)."""
    _, _, refinement = stage2_model(6, alpha=2.0)
    stage1 = stage1_model(6)
    old_settings = {"stage": 1, "alpha": 1.5, "erasing": True, "refine_learning_rate": 1e-4, "seed": None}
    loaded1 = ORNet.from_config({**stage1.get_config(), **old_settings})
    config2 = {k: v for k, v in refinement.get_config().items() if k != "learning_rate"}
    loaded2 = ORNetRefinement.from_config({**config2, "stage": 2, "refine_learning_rate": 3e-4})
    assert loaded1.get_config() == {**stage1.get_config(), "name": loaded1.name}
    assert (loaded2.alpha, loaded2.learning_rate, loaded2.optimizer_settings()) == (2.0, 3e-4, {"learning_rate": 3e-4})
