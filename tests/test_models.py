"""Backbones, the CAM baseline's train step, save/load and a short fit."""

import re

import keras
import numpy as np
import pytest
from helpers import POLICIES, precision_policy

from keras_wsol.backbones import BACKBONES, build_backbone
from keras_wsol.data import pipeline, synthetic
from keras_wsol.methods import CAM, WSOLModel, get_method


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_builds_and_takes_a_train_step(name):
    keras.utils.set_random_seed(0)
    size = 75 if name == "inception_v3" else 64
    bb = build_backbone(name, (size, size, 3))
    assert set(bb.output) == {"low", "mid", "high"}
    model = CAM(num_classes=3, backbone=name, image_size=size)
    model.compile(optimizer=keras.optimizers.SGD(0.01))
    x = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    logs = model.train_on_batch(x, np.array([0, 2]), return_dict=True)
    assert np.isfinite(logs["loss"])


def test_large_feature_map_surgery():
    assert tuple(build_backbone("resnet50", (224, 224, 3)).output["high"].shape[1:3]) == (28, 28)
    assert tuple(build_backbone("mobilenet_v2", (224, 224, 3)).output["high"].shape[1:3]) == (28, 28)
    assert tuple(build_backbone("vgg16", (224, 224, 3)).output["high"].shape[1:3]) == (14, 14)


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="small, vgg16"):
        build_backbone("alexnet", (32, 32, 3))
    with pytest.raises(ValueError, match="choose one of cam"):
        get_method("nope")
    with pytest.raises(FileNotFoundError, match="--weights=/no/such"):
        build_backbone("small", (32, 32, 3), "/no/such.weights.h5")


def test_cam_train_step_changes_loss_and_weights():
    keras.utils.set_random_seed(1)
    model = CAM(num_classes=2, backbone="small", image_size=32)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.array([0, 1, 0, 1])
    before = [v.numpy().copy() for v in model.trainable_variables]
    first = model.train_on_batch(x, y, return_dict=True)["loss"]
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert all(changed)
    second = model.train_on_batch(x, y, return_dict=True)["loss"]
    assert second != first


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    keras.utils.set_random_seed(2)
    model = CAM(num_classes=3, backbone="small", image_size=32, head_channels=8)
    model.compile(optimizer="adam")
    x = np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.fit(x, np.array([0, 1, 2, 0]), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, CAM) and loaded.get_config()["head_channels"] == 8
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(loaded(x)))
    np.testing.assert_array_equal(
        np.asarray(model.class_maps(x, [0, 1, 2, 0])), np.asarray(loaded.class_maps(x, [0, 1, 2, 0]))
    )


def test_maps_are_the_classifier_weighted_features():
    model = WSOLModel(num_classes=2, backbone="small", image_size=32)
    x = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    feats = np.asarray(model.features(x)["cam"])
    kernel = model.classifier.kernel.numpy()
    np.testing.assert_allclose(
        np.asarray(model.class_maps(x, [1, 0])),
        np.stack([feats[0] @ kernel[:, 1], feats[1] @ kernel[:, 0]]),
        rtol=1e-5,
        atol=1e-5,
    )
    maps = np.asarray(model.localization_maps(x, [1, 0]))
    assert maps.shape == (2, 32, 32) and maps.min() == 0.0 and maps.max() == pytest.approx(1.0)


def test_short_fit_on_synthetic_data_lowers_the_loss():
    keras.utils.set_random_seed(4)
    data = synthetic.generate("train", num_classes=4, images_per_class=24, image_size=48)
    ds = pipeline.training_dataset(data.as_split(), batch_size=16, seed=0)
    model = CAM(num_classes=4, backbone="small", image_size=48)
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(ds, epochs=4, verbose=0).history["loss"]
    assert history[-1] < history[0] * 0.8


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_cam_keeps_losses_and_maps_float32(policy):
    data = synthetic.generate("train", num_classes=2, images_per_class=4, image_size=32)
    with precision_policy(policy):
        model = CAM(num_classes=2, backbone="small", image_size=32)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        total, _, _ = model.compute_losses(data.images.astype("float32"), data.labels)
        assert total.dtype == "float32" and model.localization_maps(data.images[:2]).dtype == "float32"
        losses = [model.train_on_batch(data.images, data.labels, return_dict=True)["loss"] for _ in range(3)]
    assert np.isfinite(losses).all()


def test_masked_pixels_equal_the_dataset_mean_after_preprocessing():
    split = synthetic.generate("train", num_classes=2, images_per_class=6, image_size=32).as_split(2)
    mean, std = pipeline.pixel_statistics(split, 32)
    pixels = split.arrays.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-5)
    model = CAM(num_classes=2, backbone="small", image_size=32, input_statistics=(mean, std))
    images = split.arrays[:2].astype("float32")
    masked = model.mask_images(images, np.zeros((2, 32, 32), "float32"))  # every pixel masked
    np.testing.assert_allclose(np.asarray(masked)[0, 0, 0], mean, rtol=1e-6)
    preprocess = model.backbone.get_layer("preprocess")
    assert float(np.abs(np.asarray(preprocess(masked))).max()) < 1e-4  # the zero of what the network sees
    assert CAM.from_config(model.get_config()).input_statistics == model.input_statistics
    with pytest.raises(ValueError, match="dataset statistics are for the small backbone"):
        CAM(num_classes=2, backbone="mobilenet_v2", image_size=32, input_statistics=(mean, std))


def test_one_imagenet_mean_wherever_the_project_chooses_one():
    """The hide fill's default (a stream's statistics are unknown) and the caffe-mode zero point are one constant."""
    from keras_wsol.layers import IMAGENET_MEAN_RGB, Preprocess
    from keras_wsol.methods import METHODS

    fill = {p.name: p.default for p in METHODS["complementary"].hyperparameters}["hide_fill"]
    assert fill == IMAGENET_MEAN_RGB == Preprocess("caffe").zero_point


def tiny_backbone(size: int = 32) -> keras.Model:
    """A user's backbone object: RGB in [0, 255] -> {"low", "mid", "high"} feature maps."""
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    low = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="b_low")(x)
    mid = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="b_mid")(low)
    high = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="b_high")(mid)
    return keras.Model(inputs, {"low": low, "mid": mid, "high": high}, name="users_backbone")


def test_a_backbone_object_trains_saves_and_localizes(tmp_path):
    from keras_wsol import localizers, model_protocol

    keras.utils.set_random_seed(0)
    model = CAM(num_classes=3, backbone=tiny_backbone(), image_size=32)
    assert model.backbone_name == "users_backbone"
    x = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    before = [w.copy() for w in model.backbone.get_weights()]
    model.train_on_batch(x, np.array([0, 1, 2, 0]))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.backbone.get_weights()))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert model_protocol.feature_layers(loaded) == ["low", "mid", "high"]
    assert localizers.compute_scoremaps(loaded, x, "gradcam", "mid").shape == (4, 32, 32)


@pytest.mark.parametrize(
    "backbone,arguments,message",
    [
        (lambda: keras.Sequential([keras.layers.Conv2D(4, 3)], name="flat"), {}, "dict of 'low', 'mid' and 'high'"),
        (tiny_backbone, {"weights": "imagenet"}, "a backbone object brings its own weights"),
        (tiny_backbone, {"input_statistics": ((1, 1, 1), (1, 1, 1))}, "normalizes its input itself"),
        (tiny_backbone, {"keep_resolution_after": "mid"}, "reshapes its backbone (keep_resolution_after)"),
    ],
)
def test_a_backbone_object_that_cannot_serve_is_refused(backbone, arguments, message):

    with pytest.raises(ValueError, match=re.escape(message)):
        CAM(num_classes=2, backbone=backbone(), image_size=32, **arguments)
