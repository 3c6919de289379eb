"""CAMs2i (inter-intra regulated CAMs): two classifiers whose maps regulate each other, plus an inter-sample criterion.

Section 3 of the paper, read as follows where it leaves a choice open:

* **Two classifiers** (Eq. 2): ``S1`` after the last block, ``S2`` on a
  backbone tap (``s2_tap``, default ``"mid"``), each two 1x1 convs of
  ``classifier_channels`` (1024 in the paper) with ReLU, then GAP and a
  linear layer (a 1x1 conv to C channels and GAP, Eq. 1). The max-pools
  between the tap and the last block run as centred 3x3 pools at stride 1,
  as ACoL's do, so both maps have one size and stay aligned with each other
  and the image (``build_backbone(keep_resolution_after=...)``; CAM with
  ``keep_resolution_after`` is the control with the same surgery). ``S_t`` is the
  class map including the classifier's bias, so ``y_t = GAP(S_t)``.
* **Intra-sample loss** (Eq. 3, 4, 6, 7) on the ground-truth class's maps,
  min-max normalized per image: raw CAMs are unbounded and the negative
  (adversarial) part of Eq. 4 would push them apart without limit. ``S2`` is
  the teacher in Eq. 4 by default (``detach_teacher``): its map is a
  constant, as ``S1``'s softmax is the teacher of ``S2`` in Eq. 6; with
  ``detach_teacher=False`` the distance moves ``S2`` too. The mask of Eq. 3
  is a constant either way (it selects and weighs pixels). Eq. 4 sums over
  pixels: by default (``int_reduction="reference"``) its value is the sum the
  paper's 28 x 28 maps give for the same picture (the pixel mean x 784), so
  ``int_weight`` (1: the paper's Eq. 7) means the same at any map size; the
  pixel mean, the earlier reading, made L_int 1/784 of the paper's.
  Eq. 7's ``1 / w0`` is read as a weight ``w0`` that *multiplies*
  ``L_int + L_adn``, rising linearly from 0 to 1 over ``ramp_steps``
  optimizer steps (``1 / w0`` would explode at 0).
* **Inter-sample criterion** (Eq. 8-10), on by default: for both
  classifiers, the image weighted by ``sigmoid(S_t^c)`` of the ground-truth
  class (foreground) and by ``1 - max_c sigmoid(S_t)`` (background), both
  upsampled bilinearly; masked pixels become the preprocessing's zero point
  (``WSOLModel.mask_images``). ``f`` (AlexNet in the paper) is, by default,
  a frozen EfficientNet-Lite0 with ImageNet weights (GAP of its head) when
  the backbone has ImageNet weights, and otherwise a small conv net trained
  with the model (``inter_net="small"``); GAP of a backbone tap is the third
  choice. Pairs are the same-class images of the batch (class-set batches give
  each image ``S - 1`` partners). The two classifiers' losses are summed.
  Per-image values are averaged over the global batch. ``f``'s output is
  scaled to root-mean-square 1 (norm ``sqrt(c)``), so each distance of Eq. 9
  lies in [0, 4]: with raw features ``f`` alone drives L_inter to 0 by
  growing its output (measured: 0 from the second epoch on the synthetic
  benchmark), and the CAMs get no signal from the module.
* **Total**: ``CE(y1) + CE(y2) + w0 (int_weight L_int + L_adn) + L_inter``,
  one optimizer over every trainable weight.
* **Inference** (Section 3.2): the predicted class comes from ``y1`` (the
  model's logits); its maps from both classifiers are min-max normalized
  and combined at feature resolution by ``fusion``: the element-wise max
  (ACoL's fusion), the mean or the min (a consensus, as Sec. 3.2 describes
  the fusion) (``s1``/``s2``: one map alone, an ablation);
  ``localization_maps`` resizes that.

Example:
    >>> import numpy as np, keras
    >>> model = CAMs2i(num_classes=2, backbone="small", image_size=32, classifier_channels=8, inter_dim=4)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> x = np.zeros((4, 32, 32, 3), "float32")
    >>> sorted(model.train_on_batch(x, np.array([0, 0, 1, 1]), return_dict=True))
    ['accuracy', 'adn', 'ce_s2', 'int', 'inter', 'loss', 'w0']
    >>> tuple(model.localization_maps(x).shape)
    (4, 32, 32)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.backbones import TAPS, build_backbone, resolution_keeping_taps
from keras_wsol.distribute import replica_mean
from keras_wsol.layers import Preprocess
from keras_wsol.losses import (
    POSITION_REDUCTIONS,
    adn_per_image,
    confidence_mask,
    inter_sample_per_image,
    interaction_per_image,
    linear_ramp,
)
from keras_wsol.maps import class_channel, minmax_normalize, predicted_where_negative
from keras_wsol.methods.base import WSOLModel, restoring
from keras_wsol.methods.hyperparameters import HyperParameter

INTER_NETS = ("auto", "imagenet", "small", *TAPS)
FUSIONS = ("max", "mean", "min", "s1", "s2")


def _pointwise_head(in_channels: int, channels: int, name: str) -> keras.Sequential:
    """Two 1x1 convs with ReLU: the body of a CAMs2i classifier (Section 3.4)."""
    return keras.Sequential(
        [
            keras.Input((None, None, in_channels)),
            keras.layers.Conv2D(channels, 1, activation="relu", name=f"{name}_conv1"),
            keras.layers.Conv2D(channels, 1, activation="relu", name=f"{name}_conv2"),
        ],
        name=name,
    )


def _embedding_net(image_size: int, preprocess: Preprocess, dim: int) -> keras.Sequential:
    """``f`` of Eq. 9: ``preprocess``'s normalization, three stride-2 convs, GAP and a ``dim``-wide embedding."""
    normalize = Preprocess.from_config({**preprocess.get_config(), "name": "f_preprocess"})
    layers = [keras.Input((image_size, image_size, 3)), normalize]
    for i, filters in enumerate((32, 64, 128)):
        layers.append(
            keras.layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu", name=f"f_conv{i + 1}")
        )
    layers += [keras.layers.GlobalAveragePooling2D(name="f_gap"), keras.layers.Dense(dim, name="f_embedding")]
    return keras.Sequential(layers, name="inter_f")


def _frozen_imagenet_net(image_size: int) -> keras.Model:
    """``f`` of Eq. 9 as a fixed ImageNet feature net: EfficientNet-Lite0's head, GAP, weights frozen.

    A model restored from a file gets the net's weights from the file, so they are not read again.
    """
    lite0 = build_backbone("efficientnet_lite0", (image_size, image_size, 3), None if restoring() else "imagenet")
    lite0.trainable = False
    inputs = keras.Input((image_size, image_size, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(lite0(inputs)["high"]), name="inter_f_imagenet")


@keras.saving.register_keras_serializable(package="keras_wsol")
class CAMs2i(WSOLModel):
    """Two classifiers regulating each other pixel by pixel (CAMsIntra), plus the inter-sample module.

    ``head_channels`` must be 0: the classifiers carry their own 1x1 convs.
    """

    method_name = "cams2i"
    hyperparameters = (
        HyperParameter(
            "s2_tap",
            "mid",
            "backbone tap where the second classifier S2 is inserted (the max-pools after it run with stride 1)",
            "paper Sec. 3.1 (S2 inside the backbone, same map size)",
            choices=("low", "mid"),
            renamed_from=(("s2_tap", "0.2.0"),),
        ),
        HyperParameter(
            "classifier_channels",
            1024,
            "width of the two 1x1 convs of each classifier",
            "paper Sec. 3.4 (two 1x1 convs of 1024 filters)",
            minimum=1,
            renamed_from=(("classifier_channels", "0.2.0"),),
        ),
        HyperParameter(
            "ramp_steps",
            300,
            "steps over which w0 of Eq. 7 rises from 0 to 1 (0: 1 from the start)",
            "our reading: the paper says w0 rises linearly, not how fast",
            minimum=0,
            renamed_from=(("ramp_steps", "0.2.0"),),
        ),
        HyperParameter(
            "inter_module",
            True,
            "add the inter-sample criterion (Eq. 8-10; class-set batches); false trains CAMsIntra",
            "paper Eq. 10",
            renamed_from=(("inter_module", "0.2.0"),),
        ),
        HyperParameter(
            "inter_net",
            "auto",
            "f of Eq. 9: imagenet (a frozen EfficientNet-Lite0 with ImageNet weights, GAP of its head), small (a "
            "conv net trained with the model), GAP of a backbone tap, or auto: imagenet when the backbone has "
            "ImageNet weights, small otherwise",
            "our reading: the paper's f is AlexNet, presumably pretrained and fixed; trained from random weights "
            "it satisfies L_inter by itself",
            choices=INTER_NETS,
            renamed_from=(("inter_net", "0.2.0"),),
        ),
        HyperParameter(
            "inter_dim",
            128,
            "embedding width of the small f",
            "our choice (any small width)",
            minimum=1,
            renamed_from=(("inter_dim", "0.2.0"),),
        ),
        HyperParameter(
            "fusion",
            "max",
            "how S1's and S2's min-max normalized maps are combined at inference: element-wise max, mean or min "
            "(a consensus); s1 or s2 takes one classifier's map alone (an ablation)",
            "ACoL (the paper's cited template, models/vgg/vgg_v1.py get_localization_maps) takes the max; the "
            "paper's Sec. 3.2 says the fusion keeps the pixels both CAMs are confident in and removes ambiguous "
            "ones, a consensus (min or mean)",
            choices=FUSIONS,
            inference_only=True,
        ),
        HyperParameter(
            "int_weight",
            1.0,
            "weight of L_int (Eq. 4) inside w0 (L_int + L_adn)",
            "paper Eq. 7 (no weight, i.e. 1)",
            minimum=0,
        ),
        HyperParameter(
            "int_reduction",
            "reference",
            "how Eq. 4 reduces over map pixels: reference (its sum at the paper's 28x28 maps, for the same "
            "picture at any map size: the pixel mean x 784), sum (over this run's pixels) or mean",
            "paper Eq. 4 sums over pixels; the paper's maps are 28x28 (VGG16 with pool4 and pool5 at stride 1, "
            "ACoL's models/vgg/vgg_v1.py cfg D1, which Sec. 4.1 builds on)",
            choices=POSITION_REDUCTIONS,
        ),
        HyperParameter(
            "detach_teacher",
            True,
            "S2's map and mask in L_int are constants (S2 the teacher of S1); false lets L_int move S2 too",
            "our reading: Eq. 6 makes S1 the teacher of S2, so Eq. 4 reads as S2 teaching S1; the paper is silent",
        ),
    )
    replica_constant_parts = ("w0",)
    # One forward and one backward through the backbone and both classifiers; the inter-sample module adds
    # a forward and a backward of f over the weighted images (f is much smaller than the backbone, so this
    # counts it as one pass each way).
    train_passes = 4

    def check_hyperparameters(self) -> None:
        if self.head_channels:
            raise ValueError(
                "CAMs2i: head_channels must be 0; its classifiers have their own 1x1 convs (set classifier_channels)"
            )

    @property
    def uses_class_sets(self) -> bool:
        """Class-set batches give the inter-sample criterion its same-class pairs."""
        return self.inter_module

    def backbone_options(self) -> dict:
        taps = resolution_keeping_taps(self.backbone_name)
        if self.s2_tap not in taps:
            raise ValueError(
                f"s2_tap={self.s2_tap!r}: S2 must be inserted where the backbone can keep the map size "
                f"up to the last block; backbone {self.backbone_name} allows {', '.join(taps) or 'no tap'}"
            )
        return {"keep_resolution_after": self.s2_tap}

    def create_method_state(self) -> None:
        widths = {name: int(t.shape[-1]) for name, t in self.backbone.output.items()}
        self.s1_head = _pointwise_head(widths["high"], self.classifier_channels, "s1_head")
        self.s2_head = _pointwise_head(widths[self.s2_tap], self.classifier_channels, "s2_head")
        self.s2_classifier = keras.layers.Dense(self.num_classes, name="s2_classifier")
        self.s2_classifier.build((None, self.classifier_channels))
        self.feature_net = None
        if self.inter_module and self.feature_net_kind == "small":
            self.feature_net = _embedding_net(self.image_size, self.backbone.get_layer("preprocess"), self.inter_dim)
        elif self.inter_module and self.feature_net_kind == "imagenet":
            self.feature_net = _frozen_imagenet_net(self.image_size)
        self.add_part_trackers("ce_s2", "int", "adn", "inter", "w0")

    def get_config(self) -> dict:
        # auto depends on the backbone's weights, which a restored model does not fetch again: save the result
        return {**super().get_config(), "inter_net": self.feature_net_kind}

    @property
    def feature_net_kind(self) -> str:
        """``inter_net`` with ``auto`` resolved: ``imagenet`` when the backbone has ImageNet weights."""
        if self.inter_net != "auto":
            return self.inter_net
        return "imagenet" if self.weights_source == "imagenet" else "small"

    # -- forward -----------------------------------------------------------
    def features(self, images, training=False) -> dict:
        taps = dict(self.backbone(images, training=training))
        taps["cam"] = self.s1_head(taps["high"], training=training)
        return taps

    def two_classifiers(
        self, images, training=False
    ) -> tuple[tuple[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
        """``((y1, y2), (S1, S2))``: both classifiers' logits and class maps ``[B, h, w, C]`` (Eq. 1-2)."""
        taps = self.features(images, training=training)
        hidden_2 = self.s2_head(taps[self.s2_tap], training=training)
        outputs = []
        for hidden, dense in ((taps["cam"], self.classifier), (hidden_2, self.s2_classifier)):
            logits = dense(self.gap(hidden))
            outputs.append((logits, self.cams(hidden, dense) + ops.cast(dense.bias, "float32")))
        (y1, s1), (y2, s2) = outputs
        return (y1, y2), (s1, s2)

    def logits_and_class_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        """``y1`` and both classifiers' min-max normalized maps of ``class_ids``, fused by ``fusion`` (Section 3.2)."""
        (y1, _), (s1, s2) = self.two_classifiers(images, training=False)
        ids = predicted_where_negative(class_ids, y1)
        m1, m2 = minmax_normalize(class_channel(s1, ids)), minmax_normalize(class_channel(s2, ids))
        fused = {
            "max": lambda: ops.maximum(m1, m2),
            "mean": lambda: (m1 + m2) / 2.0,
            "min": lambda: ops.minimum(m1, m2),
            "s1": lambda: m1,
            "s2": lambda: m2,
        }
        return y1, fused[self.fusion]()

    # -- losses ------------------------------------------------------------
    def embed(self, images, training=False) -> tf.Tensor:
        """``f`` of Eq. 9: ``[B, H, W, 3]`` -> ``[B, c]``, scaled to root-mean-square 1 per vector."""
        if self.feature_net is not None:  # the frozen ImageNet net always runs in inference mode
            features = self.feature_net(images, training=training and self.feature_net_kind == "small")
        else:
            features = ops.mean(self.backbone(images, training=training)[self.inter_net], axis=(1, 2))
        features = ops.cast(features, "float32")
        return features * ops.rsqrt(ops.mean(ops.square(features), axis=-1, keepdims=True) + 1e-12)

    def inter_sample_loss(self, images, labels, maps, training=False) -> tf.Tensor:
        """L_inter (Eq. 8-10) over both classifiers' maps, averaged over the global batch."""
        size = ops.shape(images)[1:3]

        def upsample(m):
            return ops.image.resize(m[..., None], size, interpolation="bilinear")[..., 0]

        weighted = []
        for s in maps:
            foreground = upsample(ops.sigmoid(class_channel(s, labels)))
            background = 1.0 - upsample(ops.max(ops.sigmoid(s), axis=-1))
            weighted += [self.mask_images(images, foreground), self.mask_images(images, background)]
        embedded = ops.split(self.embed(ops.concatenate(weighted, axis=0), training=training), len(weighted))
        per_image = sum(
            inter_sample_per_image(embedded[i], embedded[i + 1], labels) for i in range(0, len(embedded), 2)
        )
        return replica_mean(per_image)

    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """``(total, parts, y1)``: Eq. 7 (with ``w0`` multiplying) plus L_inter; ``parts`` names each term."""
        (y1, y2), (s1, s2) = self.two_classifiers(images, training=training)
        teacher = minmax_normalize(class_channel(s2, labels))
        if self.detach_teacher:
            teacher = tf.stop_gradient(teacher)
        student = minmax_normalize(class_channel(s1, labels))
        w0 = linear_ramp(self.optimizer.iterations, self.ramp_steps)
        parts = {
            "ce_s2": self.classification_loss(labels, y2),
            "int": replica_mean(
                interaction_per_image(student, teacher, tf.stop_gradient(confidence_mask(teacher)), self.int_reduction)
            ),
            "adn": replica_mean(adn_per_image(y1, y2)),
            "w0": w0,
        }
        regulation = self.int_weight * parts["int"] + parts["adn"]
        total = self.classification_loss(labels, y1) + parts["ce_s2"] + w0 * regulation
        if self.inter_module:
            parts["inter"] = self.inter_sample_loss(images, labels, (s1, s2), training)
            total += parts["inter"]
        return total, parts, y1
