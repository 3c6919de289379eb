"""Complementary image regions (Babar & Das, "Where to Look?"): hide-and-seek pairs, CAAM, SSAM, fusion loss.

Section 3 and Algorithm 1, read as follows where the paper leaves a choice open:

* **Complementary inputs** (Section 3.1): per image a grid mask, each patch
  hidden with probability 0.5, gives ``X``; its complement gives ``X~``
  (every patch hidden in exactly one). The patch size is drawn per image
  from ``patch_sizes`` ({16, 32, 44, 56}, the paper's "mixed" setting) or
  fixed by passing one size; sizes are for 224-pixel images and scaled by
  ``image_size / 224`` when images are smaller. Hidden pixels get
  ``hide_fill``, the dataset's mean pixel as hide-and-seek does (default
  the ImageNet mean; ``train.py`` passes the training split's).
* **Shared backbone** over ``X`` and ``X~`` (one pass over both, so
  BatchNorm sees both), its classifier-side features ``F`` (the ``cam`` tap
  of :class:`WSOLModel`, i.e. after ``head_channels`` if any).
* **CAAM** (Eq. 1-6), one layer across the branches with ``delta_x`` and
  ``delta_x~``; **SSAM** (Eq. 7-8), one per branch (``alpha_x``,
  ``alpha_x~``); **aggregation** (Eq. 9), one 3x3 conv of the feature
  width shared by both branches (Algorithm 1 writes one ``conv``), then
  (``aggregation``) a ReLU, or BatchNorm and ReLU as after each attention
  module in the code of DANet, the paper's source for CAAM and SSAM, or
  nothing (Eq. 9 as written). ``auto`` (default): BatchNorm and ReLU on a
  pretrained backbone, the ReLU alone from random weights; the choice
  measured best in each setting (docs/RESULTS.md).
  A module switched off (``use_caam`` / ``use_ssam`` False, the ablations of
  Table 5) passes ``F`` through, so the aggregation still sees ``F^c + F^s``.
* **Two classifiers** after GAP, ``theta^x`` and ``theta^x~`` of Algorithm 1
  (same form, own weights); each branch's map of the ground-truth class
  comes from its own classifier's weights (Eq. 13, no bias).
  ``shared_classifier=True`` is the other reading: Eq. 11 and 13 write one
  ``W_c^k`` for both branches.
* **Loss** (Eq. 15): ``CE(y, p_x) + CE(y, p_x~) + beta * L_at_fuse``
  (Eq. 14, ``beta = 50``; 0 drops it), per-image values averaged over the
  global batch. Eq. 14 is reduced so that ``beta`` weighs it at every map
  size as at the paper's 14 x 14 (``fusion_reduction="reference"``: the
  sum over positions / 196, which is the mean over positions the
  attention-transfer code takes, at the paper's size;
  :func:`~keras_wsol.losses.attention_fusion_per_image`). The mean over the
  run's own positions (the earlier default) weighs ``beta / (h w)``: 0.78
  at Lite0's 8 x 8, 0.064 at 28 x 28; the plain sum weighs ``beta``, and at
  ``beta = 50`` the maps never leave chance. An all-zero or
  input-independent map also minimizes Eq. 14; the two cross-entropies keep
  the maps input-dependent, and the logged ``fusion`` part shows it. The
  all-zero maps are reached when the aggregation's ReLU dies: on
  EfficientNet-Lite0's ImageNet features, Adam's first steps on the new
  1280 x 1280 3x3 conv push nearly all its outputs below zero within a
  dozen steps, with or without Eq. 14, and the run stays at chance.
  BatchNorm before the ReLU keeps every channel alive (the guard ``auto``
  applies on pretrained backbones); from random weights the plain ReLU
  trains well and BatchNorm costs 11 points.
* **Inference** on the full image with CAAM and SSAM off (their attention
  terms removed, as ``delta = alpha = 0`` would): plain CAM of
  ``conv(F + F)`` through classifier ``X``. ``attention_at_inference=True``
  keeps them on, with the full image in both branches.
  ``inference_input="pair"`` (a control for the shift between training,
  where the aggregation and its BatchNorm see hidden images, and testing)
  shows the model's own maps a fixed complementary pair instead: a
  checkerboard of the smallest patch size, both branches, attention on,
  the two branches' maps and logits summed.

Example:
    >>> import numpy as np, keras
    >>> model = Complementary(num_classes=2, backbone="small", image_size=32)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> x = np.zeros((4, 32, 32, 3), "float32")
    >>> sorted(model.train_on_batch(x, np.array([0, 0, 1, 1]), return_dict=True))
    ['accuracy', 'ce_complement', 'fusion', 'loss']
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.backbones import pretrained
from keras_wsol.distribute import replica_mean
from keras_wsol.layers import IMAGENET_MEAN_RGB, ChannelAssistedAttention, SpatialSelfAttention, hide_and_seek_masks
from keras_wsol.losses import POSITION_REDUCTIONS, attention_fusion_per_image
from keras_wsol.maps import class_channel, predicted_where_negative
from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.hyperparameters import HyperParameter

PAPER_PATCH_SIZES = (16, 32, 44, 56)
AGGREGATIONS = ("auto", "bn_relu", "relu", "linear")


@keras.saving.register_keras_serializable(package="keras_wsol")
class Complementary(WSOLModel):
    """Two branches on complementary hide-and-seek inputs, fused by CAAM, SSAM and an attention loss."""

    method_name = "complementary"
    hyperparameters = (
        HyperParameter(
            "patch_sizes",
            PAPER_PATCH_SIZES,
            "hide-and-seek patch sizes at 224 px, one drawn per "
            "image ('mixed'); one entry for a fixed size; scaled below 224 px",
            "paper Sec. 4.3 (mixed patch sizes, uniform per image)",
            minimum=1,
            renamed_from=(("patch_sizes", "0.2.0"),),
        ),
        HyperParameter(
            "hide_prob",
            0.5,
            "probability that a patch is hidden in X",
            "paper Sec. 4.3",
            minimum=0,
            maximum=1,
            renamed_from=(("hide_prob", "0.2.0"),),
        ),
        HyperParameter(
            "hide_fill",
            IMAGENET_MEAN_RGB,
            "RGB value of hidden pixels: the training split's mean pixel",
            "hide-and-seek (Singh & Lee), which the paper follows",
            kind=float,
            statistic="mean_pixel",
        ),
        HyperParameter(
            "beta",
            50.0,
            "weight of the attention-based fusion loss (Eq. 15); 0 drops it",
            "paper Sec. 3.6 (beta = 50)",
            minimum=0,
            renamed_from=(("beta", "0.2.0"),),
        ),
        HyperParameter(
            "fusion_reduction",
            "reference",
            "how Eq. 14 reduces over map positions: reference (the sum / 196, the paper's 14x14 mean: beta weighs "
            "the same at every map size), mean (over this run's positions: beta / (h w)) or sum",
            "attention transfer's code (the paper's source for the loss) averages over positions, at the paper's "
            "14x14 maps (VGG16 cut after conv5-3, Sec. 4) the sum / 196; a sum of unit-vector differences does "
            "not grow with the map, so the reference keeps beta's weight at any size",
            choices=POSITION_REDUCTIONS,
        ),
        HyperParameter(
            "aggregation",
            "auto",
            "after the Eq. 9 conv: bn_relu (BatchNorm, ReLU), relu, linear (Eq. 9 as written), or auto: bn_relu "
            "on a pretrained backbone, relu from random weights",
            "measured (docs/RESULTS.md): relu dies on ImageNet features, where DANet's conv-BatchNorm-ReLU (the "
            "paper's ref. [11] for CAAM and SSAM) trains; from random weights relu scores 11 points higher",
            choices=AGGREGATIONS,
        ),
        HyperParameter(
            "use_caam",
            True,
            "train with CAAM (Eq. 1-6); false: the Table 5 ablation",
            "paper Sec. 3.3",
            renamed_from=(("use_caam", "0.2.0"),),
        ),
        HyperParameter(
            "use_ssam",
            True,
            "train with SSAM (Eq. 7-8); false: the Table 5 ablation",
            "paper Sec. 3.4",
            renamed_from=(("use_ssam", "0.2.0"),),
        ),
        HyperParameter(
            "attention_at_inference",
            False,
            "keep CAAM and SSAM on at inference",
            "our reading of Sec. 1: the whole test image, no hiding, one branch",
            renamed_from=(("attention_at_inference", "0.2.0"),),
            inference_only=True,
        ),
        HyperParameter(
            "inference_input",
            "full",
            "what the model's own maps and logits see at inference: full (the whole image, one branch, the paper) "
            "or pair (the image as training shows it: a fixed complementary pair, a checkerboard of the smallest "
            "patch size, through both branches with the attention modules on, maps and logits summed); gradient "
            "localizers always see the full image",
            "paper Sec. 4.2 (the test image as a whole, CAAM and SSAM off); pair is a control for the train/test "
            "shift of the aggregation (our reading)",
            choices=("full", "pair"),
            inference_only=True,
        ),
        HyperParameter(
            "shared_classifier",
            False,
            "one classifier W for both branches (Eq. 11 and 13 write one W_c^k) instead of classifiers X and X~",
            "paper Algorithm 1 and Fig. 2 (classifiers X and X~, parameters theta^x and theta^x~)",
        ),
        HyperParameter("seed", None, "seed of the hide-and-seek masks; none: random", "our choice", kind=int, flag=""),
    )
    # The backbone forward and backward over X and X~ (twice the batch); CAAM, SSAM and the aggregation
    # conv run at feature resolution.
    train_passes = 4

    def check_hyperparameters(self) -> None:
        if len(self.hide_fill) != 3:
            raise ValueError(f"hide_fill={self.hide_fill}: an RGB triple")

    @classmethod
    def variants(cls, deterministic: bool = False, **arguments) -> dict:
        def make() -> Complementary:
            model = cls(**arguments)
            model.fixed_training_pairs = deterministic
            return model

        return {cls.method_name: make}

    def create_method_state(self) -> None:
        width = self.head_channels or int(self.backbone.output["high"].shape[-1])
        # A module switched off is not built: no weights that never train.
        self.caam = ChannelAssistedAttention(name="caam") if self.use_caam else None
        self.ssam_x = SpatialSelfAttention(name="ssam_x") if self.use_ssam else None
        self.ssam_complement = SpatialSelfAttention(name="ssam_complement") if self.use_ssam else None
        batch_norm = self.aggregation_kind == "bn_relu"
        self.aggregate = keras.layers.Conv2D(width, 3, padding="same", use_bias=not batch_norm, name="aggregate")
        self.aggregate_norm = keras.layers.BatchNormalization(name="aggregate_bn") if batch_norm else None
        self.classifier_complement = (
            self.classifier
            if self.shared_classifier
            else keras.layers.Dense(self.num_classes, name="classifier_complement")
        )
        side = self.image_size // 8  # any size: the modules only need the channel count to build
        feature_shape = (None, side, side, width)
        for module in (self.ssam_x, self.ssam_complement):
            if module is not None:
                module.build(feature_shape)
        if self.caam is not None:
            self.caam.build(feature_shape, feature_shape)
        self.aggregate.build(feature_shape)
        if self.aggregate_norm is not None:
            self.aggregate_norm.build(feature_shape)
        if not self.shared_classifier:
            self.classifier_complement.build((None, width))
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="hide_and_seek_seed")
        self.add_part_trackers("ce_complement", "fusion")

    # -- inputs ------------------------------------------------------------
    def scaled_patch_sizes(self) -> tuple[int, ...]:
        """``patch_sizes`` scaled to ``image_size`` when images are smaller than 224."""
        scale = min(1.0, self.image_size / 224.0)
        return tuple(max(1, round(p * scale)) for p in self.patch_sizes)

    #: Train on the fixed checkerboard pair instead of random hide-and-seek draws (``variants(deterministic=True)``:
    #: no mask drawn at random, and X is not a constant image whose ties make devices disagree).
    fixed_training_pairs = False

    def complementary_pair(self, images, fixed: bool = False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(X, X~, mask)``: hidden pixels set to ``hide_fill``; ``mask`` is 1 where ``X`` shows the image.

        ``fixed``: the mask is a checkerboard of the smallest patch size instead of a random draw.
        """
        images = ops.cast(images, "float32")
        height, width = images.shape[1], images.shape[2]
        if fixed:
            patch = min(self.scaled_patch_sizes())
            rows, columns = ops.arange(height) // patch, ops.arange(width) // patch
            board = ops.cast((rows[:, None] + columns[None, :]) % 2 == 0, "float32")
            mask = ops.broadcast_to(board, (ops.shape(images)[0], height, width))[..., None]
        else:
            mask = hide_and_seek_masks(
                ops.shape(images)[0], height, width, self.scaled_patch_sizes(), self.seed_generator, self.hide_prob
            )[..., None]
        fill = ops.convert_to_tensor(self.hide_fill, "float32")
        return images * mask + fill * (1.0 - mask), images * (1.0 - mask) + fill * mask, mask[..., 0]

    # -- forward -----------------------------------------------------------
    def fuse(self, features, complement, attention: bool = True, training=False) -> tuple[tf.Tensor, tf.Tensor]:
        """``(F_x^t, F_x~^t)`` of Eq. 9 from both branches' features; ``attention=False`` switches CAAM and SSAM off."""
        channel_x, channel_xt = self.caam(features, complement) if attention and self.caam else (features, complement)
        summed = ops.concatenate(
            [
                channel_x + self.spatial(features, self.ssam_x, attention),
                channel_xt + self.spatial(complement, self.ssam_complement, attention),
            ],
            axis=0,
        )  # one pass over both branches, so BatchNorm sees both as the backbone does
        return tuple(ops.split(self.aggregated(summed, training), 2))

    @staticmethod
    def spatial(features, ssam, attention: bool = True) -> tf.Tensor:
        """``F^s`` of Eq. 7-8: ``F`` itself when SSAM is off or ``attention`` is False."""
        return ssam(features) if attention and ssam else features

    def aggregated(self, summed, training=False) -> tf.Tensor:
        """Eq. 9 on ``F^c + F^s``: the shared conv, then ``aggregation``'s BatchNorm and ReLU."""
        fused = self.aggregate(summed)
        if self.aggregate_norm is not None:
            fused = self.aggregate_norm(fused, training=training)
        return fused if self.aggregation_kind == "linear" else ops.relu(fused)

    @property
    def aggregation_kind(self) -> str:
        """``aggregation`` with ``auto`` resolved: ``bn_relu`` on a pretrained backbone, else ``relu``."""
        if self.aggregation != "auto":
            return self.aggregation
        return "bn_relu" if pretrained(self.weights_source) else "relu"

    def get_config(self) -> dict:
        # auto depends on the backbone's weights, which a restored model does not fetch again: save the result
        return {**super().get_config(), "aggregation": self.aggregation_kind}

    def features(self, images, training=False) -> dict:
        taps = super().features(images, training=training)
        # Inference runs branch X alone, on the full image (CAAM sees it as both inputs).
        f, attention = taps["cam"], self.attention_at_inference
        channel = self.caam(f, f)[0] if attention and self.caam else f
        taps["cam"] = self.aggregated(channel + self.spatial(f, self.ssam_x, attention), training)
        return taps

    def branches(self, images, training=False, fixed: bool = False) -> tuple[tuple, tuple]:
        """``((logits_x, cams_x), (logits_x~, cams_x~))`` of a complementary pair of ``images`` (Eq. 9-13)."""
        x, xt, _ = self.complementary_pair(images, fixed=fixed)
        both = super().features(ops.concatenate([x, xt], axis=0), training=training)["cam"]
        fused_x, fused_xt = self.fuse(*ops.split(both, 2), training=training)
        return (
            (self.classifier(self.gap(fused_x)), self.cams(fused_x)),
            (self.classifier_complement(self.gap(fused_xt)), self.cams(fused_xt, self.classifier_complement)),
        )

    def logits_and_class_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        if self.inference_input == "full":
            return super().logits_and_class_maps(images, class_ids)
        (logits_x, cams_x), (logits_xt, cams_xt) = self.branches(images, fixed=True)
        logits = logits_x + logits_xt
        return logits, class_channel(cams_x + cams_xt, predicted_where_negative(class_ids, logits))

    # -- training ------------------------------------------------------------
    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """``(total, parts, logits_x)`` of Eq. 15 on a fresh complementary pair of ``images``."""
        (logits_x, cams_x), (logits_xt, cams_xt) = self.branches(
            images, training=training, fixed=self.fixed_training_pairs
        )
        maps_x, maps_xt = class_channel(cams_x, labels), class_channel(cams_xt, labels)
        parts = {
            "ce_complement": self.classification_loss(labels, logits_xt),
            "fusion": replica_mean(attention_fusion_per_image(maps_x, maps_xt, self.fusion_reduction)),
        }
        total = self.classification_loss(labels, logits_x) + parts["ce_complement"] + self.beta * parts["fusion"]
        return total, parts, logits_x
