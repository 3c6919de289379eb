"""What localizers need of a model beyond logits: named feature taps from one forward pass.

Any Keras classifier works with the localizers by layer name (its layers are
hooked). A model that implements :class:`LocalizableModel` names its taps as
well, so ``--layer=all`` sweeps them, layer fusion reads them from one pass and
the CAM rule ("class activation maps exist at the classifier's input only")
knows where its classifier reads. :class:`~keras_wsol.methods.base.WSOLModel`
implements it; :class:`TappedClassifier` wraps any functional Keras classifier
into it.

Example:
    >>> import keras
    >>> inputs = keras.Input((16, 16, 3))
    >>> low = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="low")(inputs)
    >>> high = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="high")(low)
    >>> logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(high))
    >>> tapped = TappedClassifier(keras.Model(inputs, logits), ["low", "high"])
    >>> isinstance(tapped, LocalizableModel), tapped.classifier_taps, tapped.image_size, tapped.num_classes
    (True, ('high',), 16, 3)
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import keras
import tensorflow as tf
from keras import ops


@runtime_checkable
class LocalizableModel(Protocol):
    """A classifier with named feature taps.

    Attributes:
        tap_names: every tap :meth:`logits_and_features` returns, low to high.
        classifier_taps: the taps that are the classifier's input (the first
            is the canonical name; more than one when a tap has a synonym).
        image_size: the square input side.
        num_classes: the number of logits.
    """

    tap_names: tuple[str, ...]
    classifier_taps: tuple[str, ...]
    image_size: int
    num_classes: int

    def logits_and_features(self, images, training: bool = False) -> tuple:
        """``(logits [B, K], {tap: features})`` from one forward pass; the logits are computed from the features."""


def sweep_taps(model: LocalizableModel) -> list[str]:
    """The distinct taps of ``model``, low to high (synonyms of the classifier's tap left out): ``--layer=all``."""
    synonyms = set(model.classifier_taps[1:])
    return [name for name in model.tap_names if name not in synonyms]


class TappedClassifier(keras.Model):
    """A functional Keras classifier with some of its layers named as taps (:class:`LocalizableModel`).

    Args:
        model: a functional model mapping images to logits (a softmax ending:
            wrap :func:`logits_model` of it).
        taps: layer names, low to high, or ``{tap name: layer name}``.
        classifier_tap: the tap the classifier reads; default: the last.

    One forward pass gives the logits and every tap (a functional model
    sharing ``model``'s layers and weights).
    """

    def __init__(self, model: keras.Model, taps: list[str] | dict[str, str], classifier_tap: str | None = None):
        super().__init__(name=f"{model.name}_tapped")
        layers = dict(taps) if isinstance(taps, dict) else {name: name for name in taps}
        if not layers:
            raise ValueError("taps: name at least one layer")
        outputs = []
        for tap, layer in layers.items():
            try:
                outputs.append(model.get_layer(layer).output)
            except ValueError:
                raise ValueError(f"taps: {model.name} has no layer named {layer!r} (tap {tap!r})") from None
        if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
            raise ValueError(f"{model.name}: a TappedClassifier needs one [batch, classes] output")
        self.tap_names = tuple(layers)
        chosen = classifier_tap or self.tap_names[-1]
        if chosen not in layers:
            raise ValueError(f"classifier_tap={chosen!r} is not one of the taps {', '.join(layers)}")
        self.classifier_taps = (chosen,)
        self.inner = keras.Model(model.inputs, [model.outputs[0], *outputs], name=f"{model.name}_with_taps")
        side = model.inputs[0].shape[1]
        if side is None or side != model.inputs[0].shape[2]:
            raise ValueError(f"{model.name}: a TappedClassifier needs a square input of known size")
        self.image_size = int(side)
        self.num_classes = int(model.outputs[0].shape[-1])

    def logits_and_features(self, images, training: bool = False) -> tuple:
        logits, *features = self.inner(images, training=training)
        return logits, dict(zip(self.tap_names, features))

    def call(self, images, training: bool = False):
        return self.logits_and_features(images, training=training)[0]


def sublayers(layer) -> list:
    """The layers and ops directly inside ``layer`` (functional graphs include ``keras.ops`` nodes)."""
    if hasattr(layer, "operations"):
        return list(layer.operations)
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return []


def all_operations(model) -> list:
    """Every layer and op of ``model``, nested models included, each once, in order."""
    seen, out, stack = set(), [], list(reversed(sublayers(model)))
    while stack:
        op = stack.pop()
        if id(op) in seen:
            continue
        seen.add(id(op))
        out.append(op)
        stack.extend(reversed(sublayers(op)))
    return out


def token_grid(tokens: tf.Tensor) -> tf.Tensor:
    """Tokens ``[B, N, C]`` of a vision transformer as a feature map ``[B, h, w, C]``.

    The rule: the patch tokens are the last ``h * h`` of the ``N``, laid out
    row by row on a square grid (as a ViT's patch embedding flattens them);
    the leading ``k`` tokens (a class token, register tokens) are dropped,
    with ``k`` the smallest number that leaves a square count. Anything else
    (a non-square grid, tokens after the patches, pooled windows): pass a
    ``reshape`` callable of your own to the localizer.

    Example:
        >>> tuple(token_grid(tf.zeros((2, 1 + 4 + 196, 8))).shape)  # a class token, 4 registers, 14 x 14
        (2, 14, 14, 8)
    """
    count = int(tokens.shape[1])
    for prefix in range(count):
        side = int(round((count - prefix) ** 0.5))
        if side * side == count - prefix:
            return ops.reshape(tokens[:, prefix:], (-1, side, side, int(tokens.shape[-1])))
    raise ValueError(f"{count} tokens")  # unreachable: one token is a 1 x 1 grid


def feature_layers(model) -> list[str]:
    """The layer names ``--layer=all`` sweeps: the taps of a :class:`LocalizableModel`, low to high."""
    if isinstance(model, LocalizableModel):
        return sweep_taps(model)
    raise ValueError(
        f"{model.name}: name the layers to sweep; only models with named taps have known layers (WSOLModel "
        "checkpoints: low, mid, high; any functional classifier: wrap it in keras_wsol.model_protocol.TappedClassifier)"
    )


def classifier_layer(model) -> str:
    """The layer the classifier reads: a :class:`LocalizableModel`'s classifier tap (a WSOLModel's ``cam``, or
    ``high`` when it has no extra head), else :func:`default_layer`."""
    if isinstance(model, LocalizableModel):
        return model.classifier_taps[0]
    return default_layer(model)


def default_layer(model) -> str:
    """The last feature layer: a :class:`LocalizableModel`'s classifier input, else the last 4-D, non-pooling layer."""
    if isinstance(model, LocalizableModel):
        return model.classifier_taps[-1]
    candidates = [
        op.name
        for op in all_operations(model)
        if isinstance(op, keras.layers.Layer)
        and not isinstance(op, keras.Model)
        and "pool" not in type(op).__name__.lower()
        and output_rank(op) == 4
    ]
    if not candidates:
        raise ValueError(f"{model.name}: no layer with a 4-D [batch, h, w, channels] output; pass layer=")
    return candidates[-1]


def output_rank(layer) -> int:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # never called, or called more than once
        return 0


def find_layer(model, name: str):
    for op in all_operations(model):
        if isinstance(op, keras.layers.Layer) and op.name == name:
            return op
    raise ValueError(
        f"{model.name} has no layer named {name!r}"
        + (f"; its taps are {', '.join(model.tap_names)}" if isinstance(model, LocalizableModel) else "")
    )


def logits_model(model):
    """``model`` itself, or, when it ends in a softmax, the same network up to the logits before it.

    A final ``Dense(activation="softmax")`` (keras.applications' default
    head) becomes its affine part on the same weights; a final ``Softmax`` or
    ``Activation("softmax")`` layer is skipped. The wrapper shares every layer
    and variable with ``model``. Any other softmax ending is refused with what
    to do.

    Example:
        >>> import keras, numpy as np
        >>> inputs = keras.Input((4,))
        >>> probabilities = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        >>> logits = logits_model(probabilities)
        >>> x = np.ones((1, 4), "float32")
        >>> bool(np.allclose(keras.ops.softmax(logits(x)), probabilities(x), atol=1e-6))
        True
    """
    if isinstance(model, LocalizableModel) or not getattr(model, "layers", None):
        return model
    last = model.layers[-1]
    if getattr(getattr(last, "activation", None), "__name__", "") != "softmax" and not isinstance(
        last, keras.layers.Softmax
    ):
        return model
    if len(model.outputs or []) != 1:
        raise ValueError(f"{model.name} has {len(model.outputs or [])} outputs; localizers need one of logits")
    if isinstance(last, (keras.layers.Softmax, keras.layers.Activation)):
        logits = last.input
    elif isinstance(last, keras.layers.Dense):
        logits = ops.matmul(last.input, last.kernel)
        if last.use_bias:
            logits = logits + last.bias
    else:
        raise ValueError(
            f"{model.name} ends in a softmax inside {type(last).__name__} {last.name!r}; localizers need logits: "
            "build the classifier without it (keras.applications: classifier_activation=None)"
        )
    return keras.Model(model.inputs, logits, name=f"{model.name}_logits")
