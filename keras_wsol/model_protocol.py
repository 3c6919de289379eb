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
            wrap :func:`keras_wsol.localizers.logits_model` of it).
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
