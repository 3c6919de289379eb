"""MinMaxCAM: class-set batches, CRR/FRR by hand, which variables each stage changes, fit, save/load."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import POLICIES, assert_round_trip, changed_weights, precision_policy

from keras_wsol import optimizers
from keras_wsol.data import pipeline, synthetic
from keras_wsol.data.splits import Split
from keras_wsol.losses import crr_per_set, frr_per_image
from keras_wsol.methods import MinMaxCAM


def test_crr_and_frr_equal_hand_computed_values():
    f = np.array(
        [
            [1.0, 2.0],
            [3.0, 2.0],
            [0.0, 4.0],  # set 1 (S = 3)
            [1.0, 1.0],
            [1.0, 1.0],
            [2.0, 1.0],
        ],
        "float32",
    )  # set 2
    # Set 1: ||f0-f1||^2 = 4, ||f0-f2||^2 = 1 + 4 = 5, ||f1-f2||^2 = 9 + 4 = 13; mean over pairs 22/3,
    # divided by K = 2 channels.
    # Set 2: 0, 1, 1 -> 2/3 / 2.
    np.testing.assert_allclose(crr_per_set(f, 3).numpy(), [22 / 3 / 2, 2 / 3 / 2], rtol=1e-6)
    f_o = f + np.array([[1.0, 0.0]] * 3 + [[2.0, 2.0]] * 3, "float32")
    np.testing.assert_allclose(frr_per_image(f, f_o).numpy(), [0.5] * 3 + [4.0] * 3, rtol=1e-6)
    np.testing.assert_allclose(crr_per_set(np.ones((4, 3), "float32"), 2).numpy(), [0.0, 0.0])


def test_class_set_batches_hold_n_distinct_classes_of_s_images():
    labels = np.repeat(np.arange(6), [7, 7, 7, 7, 7, 3])  # class 5 has fewer than S = 4
    images = np.arange(len(labels), dtype=np.float32)[:, None, None, None] * np.ones((1, 4, 4, 3), np.float32)
    ds = pipeline.class_set_dataset(
        Split.from_arrays(images, labels), set_size=4, sets_per_batch=3, seed=5, augmented=False
    )
    seen = set()
    for x, y in ds.take(40):
        x, y = x.numpy(), y.numpy()
        assert x.shape == (12, 4, 4, 3)
        sets = y.reshape(3, 4)
        assert (sets == sets[:, :1]).all() and len(set(sets[:, 0])) == 3
        index = x[:, 0, 0, 0].astype(int).reshape(3, 4)
        assert (labels[index] == sets).all()  # each image is one of its class
        for row, c in zip(index, sets[:, 0]):
            assert len(set(row)) == (3 if c == 5 else 4)  # distinct, except the short class (with replacement)
        seen.update(sets[:, 0])
    assert seen == set(range(6))
    again = next(iter(pipeline.class_set_dataset(Split.from_arrays(images, labels), 4, 3, seed=5, augmented=False)))[
        1
    ].numpy()
    assert (again == next(iter(ds))[1].numpy()).all()  # reproducible from the seed
    with pytest.raises(ValueError, match="--sets_per_batch=7"):
        pipeline.class_set_indices(labels, 4, 7)


def model_and_batch(seed=0):
    """A model whose stage II has an optimizer of its own (the paper's reading)."""
    keras.utils.set_random_seed(seed)
    model = MinMaxCAM(num_classes=3, backbone="small", image_size=32, set_size=2, stage2_regime="separate")
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), stage2_optimizer=keras.optimizers.SGD(0.5))
    x = np.random.default_rng(seed).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    return model, x, np.array([0, 0, 1, 1, 2, 2])


def snapshot(model):
    return {v.path: v.numpy().copy() for v in model.variables}


def test_stage2_changes_only_the_classifier_kernel():
    model, x, y = model_and_batch()
    before = snapshot(model)
    loss, crr, frr, *_ = model.stage2_step(x, y)
    assert float(crr) > 0 and float(frr) > 0
    after = snapshot(model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    assert changed == {model.classifier.kernel.path}
    assert int(model.optimizer.iterations) == 0 and int(model.stage2_optimizer.iterations) == 1


def test_stage1_changes_the_backbone_and_train_step_runs_both_stages():
    model, x, y = model_and_batch(1)
    before = snapshot(model)
    model.stage1_step(x, y)
    after = snapshot(model)
    backbone = [v.path for v in model.backbone.trainable_variables]
    assert all(not np.array_equal(before[p], after[p]) for p in backbone)
    assert not np.array_equal(before[model.classifier.bias.path], after[model.classifier.bias.path])
    logs = model.train_on_batch(x, y, return_dict=True)
    assert {"loss", "accuracy", "crr", "frr", "stage2_loss"} <= set(logs)
    assert int(model.optimizer.iterations) == 2 and int(model.stage2_optimizer.iterations) == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="not whole sets of set_size=2"):
        model.train_on_batch(x[:5], y[:5])


def test_short_fit_on_synthetic_sets_then_save_and_load(tmp_path):
    keras.utils.set_random_seed(2)
    data = synthetic.generate("train", num_classes=4, images_per_class=20, image_size=40)
    ds = pipeline.class_set_dataset(data.as_split(), set_size=4, sets_per_batch=4, seed=0)
    model = MinMaxCAM(
        num_classes=4, backbone="small", image_size=40, set_size=4, lambda_frr=10.0, stage2_regime="separate"
    )
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(ds, epochs=4, steps_per_epoch=5, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and np.isfinite(history["stage2_loss"]).all()
    loaded = assert_round_trip(model, tmp_path / "m.keras", data.images[:4], lambda_frr=10.0)
    assert int(loaded.stage2_optimizer.iterations) == 20


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_losses_stay_float32(policy):
    with precision_policy(policy):
        model, x, y = model_and_batch(3)
        # float16 needs loss scaling in both stages; bfloat16 has float32's range.
        assert isinstance(model.stage2_optimizer, keras.optimizers.LossScaleOptimizer) == (policy == "mixed_float16")
        crr, frr = model.region_losses(x, y)
        assert crr.dtype == "float32" and frr.dtype == "float32"
        logs = model.train_on_batch(x, y, return_dict=True)
        assert np.isfinite(logs["loss"]) and np.isfinite(logs["stage2_loss"])


def shared_model(seed=0, optimizer=None, **kwargs):
    """The official regime: one optimizer steps both stages."""
    keras.utils.set_random_seed(seed)
    model = MinMaxCAM(num_classes=3, backbone="small", image_size=32, set_size=2, **kwargs)
    model.compile(optimizer=optimizer or optimizers.SGD(0.1, momentum=0.9))
    x = np.random.default_rng(seed).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    return model, x, np.array([0, 0, 1, 1, 2, 2])


def stage2_gradient(model, x, y):
    """The gradient of lambda_crr CRR + lambda_frr FRR on the kernel, at the current weights."""
    with tf.GradientTape() as tape:
        crr, frr = model.region_losses(x, y)
        loss = model.lambda_crr * crr + model.lambda_frr * frr
    return tape.gradient(loss, model.classifier.kernel).numpy()


def test_one_optimizer_steps_both_stages_and_the_kernel_momentum_carries_into_stage_ii():
    model, x, y = shared_model()
    assert model.stage2_optimizer is model.optimizer
    kernel = model.classifier.kernel
    model.stage1_step(x, y)
    buffer = model.optimizer.momentums[model.optimizer._get_variable_index(kernel)].numpy().copy()
    assert np.abs(buffer).max() > 0
    gradient, before = stage2_gradient(model, x, y), kernel.numpy().copy()
    model.stage2_step(x, y)
    # torch.optim.SGD: buf = 0.9 buf + g; w -= lr * buf (the stage-I buffer carries over).
    np.testing.assert_allclose(kernel.numpy(), before - 0.1 * (0.9 * buffer + gradient), rtol=1e-4, atol=1e-6)
    assert int(model.optimizer.iterations) == 2 and model.optimizer_steps_per_batch == 2


def test_with_sgd_doubling_both_lambdas_doubles_the_stage_ii_step():
    deltas = []
    for scale in (1.0, 2.0):
        model, x, y = shared_model(4, optimizers.SGD(0.1), lambda_crr=scale, lambda_frr=scale)
        before = model.classifier.kernel.numpy().copy()
        model.stage2_step(x, y)
        deltas.append(model.classifier.kernel.numpy() - before)
    assert np.abs(deltas[0]).max() > 0
    np.testing.assert_allclose(deltas[1], 2 * deltas[0], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("regime", ["shared", "shared_zero_grads"])
def test_the_zero_gradient_regime_steps_every_weight_in_stage_ii(regime):
    decay = optimizers.SGD(0.1, momentum=0.9, weight_decay=5e-4, coupled_weight_decay=True)
    model, x, y = shared_model(5, decay, stage2_regime=regime)
    model.stage1_step(x, y)  # momentum in every buffer, no weight at zero
    changed = changed_weights(model, lambda: model.stage2_step(x, y))
    trainable = {v.path for v in model.trainable_variables}
    assert changed == (trainable if regime == "shared_zero_grads" else {model.classifier.kernel.path})


def test_gradient_norms_are_logged_and_equal_the_hand_computed_ones():
    model, x, y = shared_model(6, optimizers.SGD(0.0), lambda_frr=0.0)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["grad_ce"] > 0 and logs["grad_crr"] > 0 and logs["grad_frr"] == 0
    _, _, _, grad_crr, _ = model.stage2_step(x, y)
    assert float(grad_crr) == pytest.approx(float(np.linalg.norm(stage2_gradient(model, x, y))), rel=1e-4)


def test_the_official_optimizer_is_an_option_and_the_runs_optimizer_the_default():
    model = MinMaxCAM(num_classes=3, backbone="small", image_size=32, set_size=2, official_optimizer=True)
    settings = model.optimizer_settings()
    assert (settings["optimizer"], settings["nesterov"], settings["weight_decay"]) == ("sgd", True, 5e-4)
    assert settings["coupled_weight_decay"] and settings["lr_milestones"] == (0.25, 0.5)
    assert MinMaxCAM(num_classes=3, backbone="small", image_size=32).optimizer_settings() == {}
    with pytest.raises(ValueError, match="stage2_optimizer is for stage2_regime='separate'"):
        model.compile(optimizer="sgd", stage2_optimizer="sgd")


def test_with_both_lambdas_zero_a_step_is_its_control_cams_step_plus_a_zero_gradient_kernel_step():
    """The control run (--minmaxcam_lambda_crr=0 --minmaxcam_lambda_frr=0) is CAM's cross-entropy step and then the
    shared Adam stepping the kernel on a zero gradient: it moves, by the replayed moments, whatever lambda is; so
    MinMaxCAM's gain is measured against this control, not only against CAM."""
    adam = lambda: keras.optimizers.Adam(1e-2)  # noqa: E731
    model, x, y = shared_model(5, optimizer=adam(), lambda_crr=0.0, lambda_frr=0.0)
    control, _, _ = shared_model(5, optimizer=adam(), lambda_crr=0.0, lambda_frr=0.0)
    control.set_weights(model.get_weights())
    model.train_on_batch(x, y)
    control.stage1_step(x, y)  # CAM's step: cross-entropy, every weight
    after_ce = control.classifier.kernel.numpy().copy()
    control.optimizer.apply([tf.zeros_like(control.classifier.kernel)], [control.classifier.kernel])
    # The kernel (the weight stage II steps); elsewhere the two steps are stage I alone, and Adam's first step turns
    # a thread-order difference in a near-zero gradient into a sign, so those are not compared to the digit.
    np.testing.assert_allclose(model.classifier.kernel.numpy(), control.classifier.kernel.numpy(), rtol=1e-4, atol=2e-5)
    assert np.abs(control.classifier.kernel.numpy() - after_ce).max() > 1e-4  # the zero-gradient step moved it
