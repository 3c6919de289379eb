"""Parameter groups (per-variable learning-rate multipliers), coupled L2 decay and PyTorch-style SGD."""

import keras
import numpy as np
import pytest
from helpers import changed_weights

from keras_wsol import optimizers
from keras_wsol.methods import CAM, MinMaxCAM


def _steps(optimizer, variables, grads_per_step):
    for grads in grads_per_step:
        optimizer.apply([keras.ops.convert_to_tensor(g, "float32") for g in grads], variables)
    return [v.numpy() for v in variables]


GRADS = [([0.5, -1.0], [2.0]), ([0.25, 0.5], [-1.0]), ([1.0, 1.0], [0.5])]


@pytest.mark.parametrize("kind", ["adam", "adamw", "sgd"])
def test_a_multiplier_equals_a_separate_optimizer_at_that_learning_rate(kind):
    make = {
        "adam": lambda lr: optimizers.Adam(lr),
        "adamw": lambda lr: optimizers.AdamW(lr, weight_decay=0.01),
        "sgd": lambda lr: optimizers.SGD(lr, momentum=0.9, nesterov=True),
    }[kind]
    a, b = keras.Variable([1.0, 2.0]), keras.Variable([3.0])
    grouped = make(0.1)
    grouped.set_lr_multipliers([(a, 0.1)])
    got = _steps(grouped, [a, b], GRADS)
    a2, b2 = keras.Variable([1.0, 2.0]), keras.Variable([3.0])
    slow, fast = make(0.01), make(0.1)
    for ga, gb in GRADS:
        slow.apply([keras.ops.convert_to_tensor(ga)], [a2])
        fast.apply([keras.ops.convert_to_tensor(gb)], [b2])
    if kind == "adamw":  # decoupled decay runs at the base learning rate for every group (documented)
        np.testing.assert_allclose(got[1], b2.numpy(), rtol=1e-6)
    else:
        np.testing.assert_allclose(got[0], a2.numpy(), rtol=1e-6)
        np.testing.assert_allclose(got[1], b2.numpy(), rtol=1e-6)


@pytest.mark.parametrize("cls", [optimizers.SGD, optimizers.Adam])
def test_coupled_decay_equals_adding_wd_times_w_to_the_gradient(cls):
    kwargs = {"momentum": 0.9, "nesterov": True} if cls is optimizers.SGD else {}
    w = keras.Variable([1.0, -2.0])
    decayed = cls(0.1, weight_decay=0.05, coupled_weight_decay=True, **kwargs)
    w_ref = keras.Variable([1.0, -2.0])
    plain = cls(0.1, **kwargs)
    for g in ([0.5, 0.5], [-1.0, 0.25], [0.0, 1.0]):
        decayed.apply([keras.ops.convert_to_tensor(g)], [w])
        plain.apply([keras.ops.convert_to_tensor(np.asarray(g) + 0.05 * w_ref.numpy(), "float32")], [w_ref])
    np.testing.assert_allclose(w.numpy(), w_ref.numpy(), rtol=1e-6)


def test_sgd_follows_torch_semantics_by_hand():
    # buf = mu * buf + g; Nesterov d = g + mu * buf; w -= lr_t * d  (lr changes between steps)
    w = keras.Variable([1.0])
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.01])  # step 0: 0.1, then 0.01
    sgd = optimizers.SGD(schedule, momentum=0.9, nesterov=True, weight_decay=0.5, coupled_weight_decay=True)
    expected, buf = 1.0, 0.0
    for step, g in enumerate((1.0, -2.0)):
        g_total = g + 0.5 * expected
        buf = 0.9 * buf + g_total
        expected -= (0.1 if step == 0 else 0.01) * (g_total + 0.9 * buf)
        sgd.apply([keras.ops.convert_to_tensor([g])], [w])
        assert float(w.numpy()[0]) == pytest.approx(expected, rel=1e-6)


def test_config_round_trips():
    sgd = optimizers.SGD(0.01, momentum=0.9, nesterov=True, weight_decay=5e-4, coupled_weight_decay=True)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(sgd))
    assert type(again) is optimizers.SGD
    assert (again.momentum, again.nesterov, again.l2, again.coupled_weight_decay) == (0.9, True, 5e-4, True)


def _batch():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32"), np.array([0, 0, 1, 1])


def test_model_compile_gives_the_backbone_its_multiplier():
    x, y = _batch()
    model = CAM(num_classes=2, backbone="small", image_size=32, backbone_lr_multiplier=0.0)
    model.compile(optimizer=optimizers.SGD(0.1))
    changed = changed_weights(model, lambda: model.train_on_batch(x, y))
    head = {w.path for w in model.classifier.weights}
    moving = {w.path for w in model.backbone.non_trainable_weights}  # BatchNorm statistics still update
    assert changed == head | moving


def test_a_plain_keras_optimizer_is_refused_only_when_a_multiplier_is_set():
    CAM(num_classes=2, backbone="small", image_size=32).compile(optimizer=keras.optimizers.SGD(0.1))
    model = CAM(num_classes=2, backbone="small", image_size=32, backbone_lr_multiplier=0.1)
    with pytest.raises(TypeError, match="keras_wsol.optimizers"):
        model.compile(optimizer=keras.optimizers.Adam(1e-3))


def test_every_optimizer_a_method_builds_gets_the_groups():
    model = MinMaxCAM(num_classes=2, backbone="small", image_size=32, set_size=2, backbone_lr_multiplier=0.1)
    model.compile(optimizer=optimizers.Adam(1e-3))
    for optimizer in (model.optimizer, model.stage2_optimizer):
        assert optimizer.lr_multiplier(model.backbone.trainable_variables[0]) == 0.1
        assert optimizer.lr_multiplier(model.classifier.kernel) == 1.0
    assert model.get_config()["backbone_lr_multiplier"] == 0.1
