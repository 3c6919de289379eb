"""ORNet (Xie et al., ICCV 2021), stage 1: a low-level activation-map generator trained with the classifier.

ORNet trains in two fits, registered as two methods: ``ornet`` (this file,
Section 3.1) and ``ornet_refine`` (:mod:`keras_wsol.methods.ornet_refine`,
Section 3.2), which refines a stage-1 model against a frozen evaluator.

Stage 1 (Eq. 1-6): the backbone is split at a shallow tap into F1^c and F2^c
(:func:`keras_wsol.backbones.split_at_tap`). The generator
(:class:`keras_wsol.layers.ActivationMapGenerator`) turns the low-level
features ``f^c`` into ``f^a`` (k channels) and the map ``p^a``; F2^c
classifies ``p^a * f^c`` (Eq. 3) and an auxiliary head ``GAP(Conv1x1(f^a))``
classifies too (Eq. 4). Loss: both cross-entropies (Eq. 5-6). Every weight
trains.

Inference needs F1^c and the generator only: ``logits_and_class_maps``
returns ``p^a`` (class-agnostic; ``class_ids`` are ignored) at the tap's
resolution; the logits (Top-1 Cls, Top-1 Loc, exported classes) are the
classifier's. What the paper leaves open, chosen here: the encoder-decoder
F^d (see the generator), the tap (``low``). Defaults otherwise are the
paper's and the official code's (Adam, cosine schedule, lr 1e-3).

Example:
    >>> import numpy as np
    >>> x, y = np.zeros((2, 32, 32, 3), "float32"), np.array([0, 1])
    >>> model = ORNet(num_classes=2, backbone="small", image_size=32, generator_channels=4)
    >>> model.compile(optimizer="adam")
    >>> sorted(model.train_on_batch(x, y, return_dict=True))
    ['accuracy', 'aux_loss', 'loss']
    >>> tuple(model.localization_maps(x).shape)
    (2, 32, 32)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.backbones import split_at_tap
from keras_wsol.layers import ActivationMapGenerator
from keras_wsol.methods import base
from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.hyperparameters import HyperParameter

#: The generator's hyper-parameters: they fix the network, so the refinement takes them from stage 1.
GENERATOR = (
    HyperParameter(
        "tap",
        "low",
        "backbone tap the generator reads (the F1/F2 split): low is each backbone's first stride-4 tap "
        "(ResNet50 conv2_block3_out, Lite0 block 2, VGG16 block3_conv3), mid the next",
        "our reading, because the paper's F1 is 'low-level features' and the official code reads ResNet50's "
        "stem (models/model.py: conv1, bn1, relu, maxpool, stride 4); low is the closest tap every backbone has "
        "(on ResNet50 one stage after the stem)",
        choices=("low", "mid"),
    ),
    HyperParameter(
        "generator_channels",
        64,
        "width of the generator's encoder-decoder",
        "official config C_BASE: 64",
        minimum=1,
        renamed_from=(("generator_channels", "0.2.0"),),
    ),
)
#: Saved settings that a 0.3.0 model keeps under another name.
PRE_0_3_NAMES = {"refine_learning_rate": "learning_rate"}
#: Constructor arguments that fix the architecture: the refinement takes them from the stage-1 model.
ARCHITECTURE = (*base.ARCHITECTURE, *(p.name for p in GENERATOR))


@keras.saving.register_keras_serializable(package="keras_wsol")
class ORNet(WSOLModel):
    """Stage 1: low-level activation maps that mask the features the classifier sees (Eq. 1-6).

    ``ORNetRefinement.from_stage1`` (method ``ornet_refine``) refines a
    trained model against a frozen evaluator.
    """

    method_name = "ornet"
    hyperparameters = GENERATOR
    class_agnostic_maps = True

    def create_method_state(self) -> None:
        self.create_network()
        self.add_part_trackers("aux_loss")

    def create_network(self) -> None:
        """The stage-1 network: F1^c and F2^c (the backbone split at ``tap``), the generator, the auxiliary head."""
        self.shallow, self.deep = split_at_tap(self.backbone, self.tap)
        self.generator = ActivationMapGenerator(self.num_classes, self.generator_channels, name="generator")
        self.aux_conv = keras.layers.Conv2D(self.num_classes, 1, name="aux_conv")
        self.aux_gap = keras.layers.GlobalAveragePooling2D(name="aux_gap")
        self.stage1_logits(ops.zeros((1, self.image_size, self.image_size, 3)))

    @classmethod
    def from_config(cls, config: dict):
        # Before 0.3.0 one class declared both stages' settings and saved all of them (and "stage") with
        # either stage's model: such a file keeps the arguments its class still takes, under today's names.
        if "stage" in config:
            config = {PRE_0_3_NAMES.get(k, k): v for k, v in config.items()}
            taken = {*base.CONSTRUCTOR, *(p.name for p in cls.hyperparameters), *cls.model_inputs}
            config = {k: v for k, v in config.items() if k in taken}
        return super().from_config(config)

    def network_parts(self) -> list:
        """The stage-1 network's parts (the refinement freezes the ones it does not train)."""
        parts = [self.shallow, self.generator, self.deep, self.head, self.classifier, self.aux_conv]
        return [p for p in parts if p is not None]

    # -- forward -----------------------------------------------------------
    def activation_maps(self, images, training=False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(f^c, f^a, p^a)`` of Eq. 1-2 (7-8): low-level features, generator features, the map ``[B, h, w]``."""
        low = self.shallow(images, training=training)
        f_a, p_a = self.generator(low, training=training)
        return low, f_a, p_a

    def features(self, images, training=False) -> dict:
        """``{tap: f^c, "high": F2^c(p^a * f^c), "cam": the classifier's input}``: the taps of stage 1's logits."""
        low, _, p_a = self.activation_maps(images, training=training)
        high = self.deep(low * ops.cast(p_a[..., None], low.dtype), training=training)
        return {self.tap: low, "high": high, "cam": self.head(high) if self.head is not None else high}

    def stage1_logits(self, images, training=False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(y, y^a, p^a)``: F2^c on ``p^a * f^c`` (Eq. 3), the auxiliary head (Eq. 4) and the map."""
        low, f_a, p_a = self.activation_maps(images, training=training)
        high = self.deep(low * ops.cast(p_a[..., None], low.dtype), training=training)
        cam = self.head(high) if self.head is not None else high
        return self.classifier(self.gap(cam)), self.aux_gap(self.aux_conv(f_a)), p_a

    def call(self, images, training=False, return_maps=False):
        logits, _, p_a = self.stage1_logits(images, training=training)
        return (logits, p_a[..., None]) if return_maps else logits

    def logits_and_class_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Logits and ``p^a`` ``[B, h, w]`` (class-agnostic: ``class_ids`` is not used)."""
        logits, maps = self(images, training=False, return_maps=True)
        return logits, maps[..., 0]

    # -- training ------------------------------------------------------------
    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """Eq. 5 + Eq. 6: the classifier's and the auxiliary head's cross-entropies."""
        logits, aux_logits, _ = self.stage1_logits(images, training=training)
        aux = self.classification_loss(labels, aux_logits)
        return self.classification_loss(labels, logits) + aux, {"aux_loss": aux}, logits

    def test_step(self, data):
        images, labels = data[0], data[1]
        loss, parts, logits = self.compute_losses(images, labels, training=False)
        return self._update_metrics(loss, labels, logits, parts)
