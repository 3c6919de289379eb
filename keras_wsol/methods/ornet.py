"""ORNet (Xie et al., ICCV 2021): a low-level activation-map generator, refined against a frozen evaluator.

Two fits, two classes sharing the stage-1 network: :class:`ORNet` (stage 1)
and :class:`ORNetRefinement` (stage 2); :meth:`ORNet.from_arguments` picks by ``stage``.

* **Stage 1** (Section 3.1, Eq. 1-6): the backbone is split at a shallow
  tap into F1^c and F2^c (:func:`keras_wsol.backbones.split_at_tap`). The
  generator (:class:`keras_wsol.layers.ActivationMapGenerator`) turns the
  low-level features ``f^c`` into ``f^a`` (k channels) and the map ``p^a``;
  F2^c classifies ``p^a * f^c`` (Eq. 3) and an auxiliary head
  ``GAP(Conv1x1(f^a))`` classifies too (Eq. 4). Loss: both cross-entropies
  (Eq. 5-6). Every weight trains.
* **Stage 2** (Section 3.2, Eq. 7-16), built by :meth:`ORNet.refine` from a
  stage-1 model and an evaluator (any trained classifier, e.g. a ``cam``
  checkpoint), with the official code's recipe (``train_2nd_step.py``,
  ``models/model.py``, ``models/erasing.py``) as the default. The evaluator
  classifies ``I * up(m)`` (Eq. 9; pixels pulled towards the evaluator's
  preprocessing zero point, see ``WSOLModel.mask_images``; ``up`` nearest,
  as ``F.interpolate``), where in training ``m`` is the squashed map
  ``0.6 p^a + 0.2`` (official; the paper's Eq. 9 has ``p^a``,
  ``evaluator_mask="raw"``) with attentive erasing (Section 3.2.2): each
  image erased with probability 0.5, a relative threshold, a rectangle
  bounded by the above-threshold region and drop probability ``0.6 p + 0.2``
  (:func:`keras_wsol.layers.official_attentive_erasing`;
  ``erasing_recipe="fixed"`` is this library's first reading). Loss
  (Eq. 10): ``CE + alpha * L_w(p^a) + beta * L_a(p^a)`` (Eq. 14-16), both
  on the map before squashing and erasing; ``area_top_classes`` adds the
  official area term. What trains is set in one place, ``stage_parts``: by
  default the generator's decoder blocks and map head, as the official
  FineModel (``trainable_set``; ``generator_shallow`` is the paper's Eq.
  7-8, both "initialized from the first stage"). Everything else is frozen;
  the evaluator runs in inference mode.

Inference needs F1^c and the generator only: ``logits_and_class_maps``
returns ``p^a`` (class-agnostic; ``class_ids`` are ignored) at the tap's
resolution. The logits (Top-1 Cls, Top-1 Loc, exported classes) are stage
1's own classifier's, and in stage 2 the evaluator's on the full image.

What the paper leaves open, chosen here: the encoder-decoder F^d (see the
generator), the tap (``low``), and that ``val_loss`` is the stage's own
training loss with the raw map and no erasing (as the official evaluation
mode). Defaults otherwise are the paper's and the official code's: Adam with
a cosine schedule, lr 1e-3 (stage 1) and 1e-4 (stage 2), alpha 1.5, beta
0.02, mu 0.5, sigma 0.1.

Example:
    >>> import numpy as np, keras
    >>> from keras_wsol.methods import CAM
    >>> x, y = np.zeros((2, 32, 32, 3), "float32"), np.array([0, 1])
    >>> stage1 = ORNet(num_classes=2, backbone="small", image_size=32, generator_channels=4)
    >>> stage1.compile(optimizer="adam"); _ = stage1.train_on_batch(x, y)
    >>> stage2 = ORNet.refine(stage1, CAM(num_classes=2, backbone="small", image_size=32))
    >>> stage2.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> sorted(stage2.train_on_batch(x, y, return_dict=True))
    ['accuracy', 'area', 'entropy', 'evaluation_loss', 'loss']
    >>> tuple(stage2.localization_maps(x).shape)
    (2, 32, 32)
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.backbones import split_at_tap
from keras_wsol.distribute import replica_mean
from keras_wsol.layers import (
    SQUASH_SCALE,
    SQUASH_SHIFT,
    ActivationMapGenerator,
    attentive_erasing,
    erasing_draws,
    official_attentive_erasing,
)
from keras_wsol.losses import area_per_image, weighted_entropy_per_image
from keras_wsol.methods import base
from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.hyperparameters import HyperParameter

ERASING_RECIPES = ("official", "fixed")
EVALUATOR_MASKS = ("squashed", "raw")
TRAINABLE_SETS = ("decoder", "generator", "generator_shallow")
#: The official extra area term starts at the 4th-ranked class (models/loss.py: range(3, topk)).
AREA_FIRST_RANK = 3

#: Constructor arguments that fix the architecture: stage 2 takes them from stage 1.
ARCHITECTURE = (*base.ARCHITECTURE, "tap", "generator_channels")


@keras.saving.register_keras_serializable(package="keras_wsol")
class ORNet(WSOLModel):
    """Stage 1: low-level activation maps that mask the features the classifier sees (Eq. 1-6).

    The stage-2 settings are declared here too, so one ``--ornet_*`` flag set
    serves both runs; :meth:`refine` builds the stage-2 model
    (:class:`ORNetRefinement`) from a stage-1 model and an evaluator.
    """

    method_name = "ornet"
    hyperparameters = (
        HyperParameter(
            "stage",
            1,
            "1 trains the generator with the classifier; 2 refines a stage-1 model "
            "(--ornet_stage1_checkpoint) against a frozen classifier (--ornet_evaluator_checkpoint)",
            "paper Sec. 3 (two stages)",
            choices=(1, 2),
        ),
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
            renamed_from=("generator_channels",),
        ),
        HyperParameter(
            "alpha",
            1.5,
            "stage 2: weight of the weighted entropy loss (Eq. 10); 0 drops it",
            "paper Sec. 4.4",
            minimum=0,
        ),
        HyperParameter(
            "beta", 0.02, "stage 2: weight of the area loss (Eq. 10); 0 drops it", "paper Sec. 4.4", minimum=0
        ),
        HyperParameter(
            "mu",
            0.5,
            "stage 2: mean of the entropy weighting (Eq. 15)",
            "paper Sec. 3.2.1",
            renamed_from=("entropy_mu",),
        ),
        HyperParameter(
            "sigma",
            0.1,
            "stage 2: width of the entropy weighting (Eq. 15)",
            "paper Sec. 3.2.1",
            minimum=1e-6,
            renamed_from=("entropy_sigma",),
        ),
        HyperParameter(
            "erasing",
            True,
            "stage 2: attentive erasing in training",
            "paper Sec. 3.2.2",
            renamed_from=("attentive_erasing",),
        ),
        HyperParameter(
            "erasing_recipe",
            "official",
            "stage 2: official (per-image gate, relative threshold, rectangle bounded by the above-threshold "
            "region, drop probability 0.6 p + 0.2) or fixed (every image, absolute threshold, rectangle sides as "
            "fractions of the map, fixed drop probability: --ornet_erase_threshold/_size/_prob)",
            "official models/erasing.py (AttentiveErasing); the paper gives no threshold or rectangle",
            choices=ERASING_RECIPES,
        ),
        HyperParameter(
            "erase_gate",
            0.5,
            "stage 2, official recipe: probability that an image is erased",
            "official models/erasing.py (AttentiveErasing p=0.5); the paper's 'probability 0.5'",
            minimum=0,
            maximum=1,
        ),
        HyperParameter(
            "erase_max_factor",
            0.5,
            "stage 2, official recipe: the threshold is max - f (max - min), f ~ U(0, this) per batch",
            "official models/model.py (FineModel max_factor=0.5)",
            minimum=0,
            maximum=1,
        ),
        HyperParameter(
            "erase_min_half",
            4,
            "stage 2, official recipe: smallest half-side of the rectangle, in pixels of a 56-pixel map (scaled "
            "to the map's side); smaller above-threshold regions are not erased",
            "official models/erasing.py (min_height = min_width = 4 at 56 x 56)",
            minimum=1,
        ),
        HyperParameter(
            "erase_threshold",
            0.5,
            "stage 2, fixed recipe: map values above this inside the rectangle may be erased",
            "our first reading: the paper gives no value",
            minimum=0,
            maximum=1,
            renamed_from=("erase_threshold",),
        ),
        HyperParameter(
            "erase_size",
            (0.25, 0.75),
            "stage 2, fixed recipe: range of the erasing rectangle's height and width, as fractions of the map side",
            "our first reading: the paper says 'random height and width'",
            minimum=1e-6,
            maximum=1,
            renamed_from=("erase_size",),
        ),
        HyperParameter(
            "erase_prob",
            0.5,
            "stage 2, fixed recipe: probability an erasing candidate is dropped",
            "our first reading of Sec. 3.2.2",
            minimum=0,
            maximum=1,
            renamed_from=("erase_prob",),
        ),
        HyperParameter(
            "evaluator_mask",
            "squashed",
            "stage 2, with erasing: in training the evaluator sees I * up(0.6 p + 0.2) (squashed, official) or "
            "I * up(p) (raw, the paper's Eq. 9); erased pixels are 0 in either; without erasing always raw",
            "official models/erasing.py and model.py (the map passed to the evaluator)",
            choices=EVALUATOR_MASKS,
        ),
        HyperParameter(
            "mask_upsampling",
            "nearest",
            "stage 2: how the map is upsampled to the image for the evaluator",
            "official models/model.py (F.interpolate's default, nearest)",
            choices=("nearest", "bilinear"),
        ),
        HyperParameter(
            "trainable_set",
            "decoder",
            "stage 2: what trains: decoder (the generator's decoder blocks and map head), generator, or "
            "generator_shallow (the generator and the shallow layers F1, the paper's Eq. 7-8)",
            "official models/model.py (FineModel: up_2, up_3, att_conv3, bn_att3 train)",
            choices=TRAINABLE_SETS,
        ),
        HyperParameter(
            "frozen_batchnorm",
            "batch",
            "stage 2: the BatchNorm layers of the frozen shallow layers and generator parts: batch (batch "
            "statistics in training, running statistics updated, as PyTorch's train mode) or inference (Keras' "
            "frozen-layer convention); the evaluator always runs in inference mode",
            "official train_2nd_step.py:165 (model.train() over the whole FineModel, whose frozen stem and encoder "
            "have BatchNorm; its evaluator, VGG16, has none)",
            choices=("batch", "inference"),
        ),
        HyperParameter(
            "area_top_classes",
            0,
            "stage 2: 0 for the paper's area loss (Eq. 16); k adds the official term, the mean of f^a's channels "
            "of the evaluator's classes ranked 4th to k-th (needs at least k classes)",
            "paper Eq. 16 (the official AreaLoss(topk=25) has the extra term)",
            minimum=0,
        ),
        HyperParameter(
            "refine_learning_rate",
            1e-4,
            "stage 2: peak learning rate (--learning_rate is stage 1's, and wins when given at stage 2)",
            "paper Sec. 4.1",
            minimum=0,
            renamed_from=("refine_learning_rate",),
        ),
        HyperParameter("seed", None, "seed of the erasing; none: random", "our choice", kind=int, flag=""),
        HyperParameter(
            "stage1_checkpoint",
            None,
            "stage 2: the stage-1 .keras model it starts from: its last epoch (checkpoints/last.keras), as the "
            "official code's last_epoch.pth",
            "build input (official config/CUB_200_2011.yaml ATT_CHECKPOINT: the stage-1 last epoch)",
            kind=str,
            saved=False,
            renamed_from=("stage1_checkpoint",),
        ),
        HyperParameter(
            "evaluator_checkpoint",
            None,
            "stage 2: a trained classifier .keras (e.g. a --method=cam run's checkpoints/best.keras), frozen",
            "build input",
            kind=str,
            saved=False,
            renamed_from=("evaluator_checkpoint",),
        ),
    )
    class_agnostic_maps = True
    #: The stage this class trains.
    trains_stage = 1

    def check_hyperparameters(self) -> None:
        if self.stage != self.trains_stage:
            raise ValueError(
                f"stage {self.stage} needs an evaluator: build it with ORNet.refine(stage1, evaluator)"
                if self.stage == 2
                else f"{type(self).__name__} trains stage {self.trains_stage}"
            )
        if len(self.erase_size) != 2 or not self.erase_size[0] <= self.erase_size[1]:
            raise ValueError(f"erase_size={self.erase_size}: two fractions of the map side, 0 < low <= high <= 1")

    def create_method_state(self) -> None:
        self.shallow, self.deep = split_at_tap(self.backbone, self.tap)
        self.generator = ActivationMapGenerator(self.num_classes, self.generator_channels, name="generator")
        self.aux_conv = keras.layers.Conv2D(self.num_classes, 1, name="aux_conv")
        self.aux_gap = keras.layers.GlobalAveragePooling2D(name="aux_gap")
        self.stage1_logits(ops.zeros((1, self.image_size, self.image_size, 3)))
        self.add_part_trackers("aux_loss")

    @classmethod
    def from_arguments(cls, arguments: dict, load) -> WSOLModel:
        """Stage 1 from ``arguments``; stage 2 refines ``load("stage1_checkpoint")`` against the evaluator checkpoint.

        At stage 2 the architecture arguments must equal the stage-1 model's.
        """
        arguments = dict(arguments)
        paths = {name: arguments.pop(name, None) for name in ("stage1_checkpoint", "evaluator_checkpoint")}
        if arguments.pop("stage", 1) == 1:
            if any(paths.values()):
                raise ValueError("stage1_checkpoint and evaluator_checkpoint are for stage 2")
            return cls(**arguments)
        return cls.refine(load("stage1_checkpoint"), load("evaluator_checkpoint"), **arguments)

    @classmethod
    def variants(cls, deterministic: bool = False, **arguments) -> dict:
        """Stage 1, and stage 2 against a CAM evaluator of the same architecture (erasing off if deterministic)."""
        from keras_wsol.methods.cam import CAM

        def stage2():
            evaluator = CAM(**{k: v for k, v in arguments.items() if k in base.ARCHITECTURE})
            return cls.refine(cls(**arguments), evaluator, erasing=not deterministic)

        return {"ornet": lambda: cls(**arguments), "ornet_stage2": stage2}

    def stage_parts(self) -> dict[str, list]:
        """``{"trained": [...], "frozen": [...]}``: the layers this stage steps and the ones it leaves alone."""
        parts = [self.shallow, self.generator, self.deep, self.head, self.classifier, self.aux_conv]
        return {"trained": [p for p in parts if p is not None], "frozen": []}

    @classmethod
    def refine(cls, stage1: ORNet, evaluator: keras.Model, **stage2_args) -> ORNetRefinement:
        """A stage-2 model initialised from ``stage1``'s weights, with ``evaluator`` frozen.

        ``stage2_args`` are the stage-2 settings (``alpha``, ``erasing``, ...);
        architecture arguments (``ARCHITECTURE``) may be repeated but must
        equal stage 1's.
        """
        if type(stage1) is not ORNet:
            raise ValueError(f"the model to refine must be an ORNet at stage 1, not {type(stage1).__name__}")
        config = stage1.get_config()
        for name in ARCHITECTURE:
            if name in stage2_args and stage2_args[name] != config[name]:
                raise ValueError(f"{name}={stage2_args[name]!r} but the stage-1 model has {config[name]!r}")
        for name in ("name", "trainable", "dtype", "weights"):
            config.pop(name, None)
        model = ORNetRefinement(**{**config, **stage2_args, "stage": 2}, evaluator=evaluator)
        for part in ("backbone", "generator", "aux_conv", "classifier", "head"):
            if getattr(model, part) is not None:
                getattr(model, part).set_weights(getattr(stage1, part).get_weights())
        return model

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


@keras.saving.register_keras_serializable(package="keras_wsol")
class ORNetRefinement(ORNet):
    """Stage 2: the stage-1 generator refined against a frozen evaluator (Eq. 7-16); build it with :meth:`ORNet.refine`.

    Args:
        evaluator: the frozen classifier (a Keras model mapping images of
            ``image_size`` to logits over the same classes), or its serialized
            config (when a saved model is loaded).
    """

    trains_stage = 2
    # The shallow layers + generator forward, the evaluator forward on I * p^a, the evaluator backward to
    # the input, the generator and shallow layers backward: two networks, each once forward and once backward.
    train_passes = 4

    def __init__(self, *args, evaluator: keras.Model | dict, **kwargs):
        # A plain attribute until Keras' tracking exists; create_method_state tracks it.
        self._evaluator_source = evaluator
        super().__init__(*args, **kwargs)
        self._freeze_for_stage()
        # XLA has no kernel for the gradient of a nearest-neighbour resize (Eq. 9's upsampling, the official
        # default): Keras' jit_compile="auto" then leaves the steps uncompiled instead of failing.
        self.supports_jit = self.mask_upsampling != "nearest"

    def create_method_state(self) -> None:
        super().create_method_state()
        source = self._evaluator_source
        self.evaluator = keras.saving.deserialize_keras_object(source) if isinstance(source, dict) else source
        side = getattr(self.evaluator, "image_size", self.image_size)
        if side != self.image_size:
            raise ValueError(f"the evaluator takes {side}-pixel images, this model {self.image_size}")
        classes = self.evaluator(ops.zeros((1, side, side, 3)), training=False).shape[-1]
        if classes != self.num_classes:
            raise ValueError(f"the evaluator has {classes} classes, this model {self.num_classes}")
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="erasing_seed")
        self.part_trackers.clear()
        self.add_part_trackers("evaluation_loss", "entropy", "area")

    def check_hyperparameters(self) -> None:
        super().check_hyperparameters()
        if self.area_top_classes and self.area_top_classes > self.num_classes:
            raise ValueError(
                f"area_top_classes={self.area_top_classes} needs at least that many classes; this model has "
                f"{self.num_classes} (0 keeps the paper's area loss)"
            )
        if self.area_top_classes and self.area_top_classes <= AREA_FIRST_RANK:
            raise ValueError(
                f"area_top_classes={self.area_top_classes}: the official term covers ranks {AREA_FIRST_RANK + 1} "
                f"to k, so k must be above {AREA_FIRST_RANK} (or 0)"
            )

    def stage_parts(self) -> dict[str, list]:
        if self.trainable_set == "decoder":
            trained = self.generator.decoder_layers()
            generator_frozen = self.generator.encoder_layers()
        else:
            trained = [self.generator] + ([self.shallow] if self.trainable_set == "generator_shallow" else [])
            generator_frozen = []
        stage1 = [p for p in super().stage_parts()["trained"] if p is not self.generator]
        frozen = [p for p in stage1 + [self.evaluator] if p not in trained] + generator_frozen
        return {"trained": trained, "frozen": frozen}

    def _freeze_for_stage(self) -> None:
        for part in self.stage_parts()["frozen"]:
            part.trainable = False
            # Per weight too: a part deserialized with ``trainable=False`` in its
            # config keeps its sublayers trainable through the setter above.
            for weight in part.weights:
                weight.trainable = False
            if self.frozen_batchnorm == "batch" and part is not self.evaluator:
                for layer in part._flatten_layers(include_self=True, recursive=True):
                    if isinstance(layer, keras.layers.BatchNormalization):
                        # Normalizes with batch statistics when called in training (Keras asks the layer's
                        # own flag); its scale and offset stay out of the optimizer.
                        layer.trainable = True
                        for weight in layer.trainable_variables:
                            weight.trainable = False

    def optimizer_settings(self) -> dict:
        return {"learning_rate": self.refine_learning_rate}

    def evaluate_maps(self, images, maps) -> tf.Tensor:
        """The evaluator's logits on ``I * maps`` (Eq. 9); ``maps`` ``[B, h, w]`` are upsampled to the input."""
        method = "nearest" if self.mask_upsampling == "nearest" else "bilinear"
        up = tf.image.resize(ops.cast(maps, "float32")[..., None], ops.shape(images)[1:3], method=method)[..., 0]
        if isinstance(self.evaluator, WSOLModel):
            masked = self.evaluator.mask_images(images, up)
        else:
            masked = ops.cast(images, "float32") * up[..., None]
        return self.evaluator(masked, training=False)

    def training_mask(self, p_a) -> tf.Tensor:
        """The map the evaluator sees in training: with erasing, ``0.6 p^a + 0.2`` or ``p^a`` (``evaluator_mask``)
        with the erased pixels at 0; without erasing the raw ``p^a`` of Eq. 9 (the official squash lives inside
        its attentive erasing, models/erasing.py, so no source squashes a map it does not erase)."""
        if not self.erasing:
            return p_a
        shown = SQUASH_SCALE * p_a + SQUASH_SHIFT if self.evaluator_mask == "squashed" else p_a
        if self.erasing_recipe == "official":
            min_half = max(1, round(self.erase_min_half * int(p_a.shape[2]) / 56))  # official: at a 56-pixel map
            dropped, _ = official_attentive_erasing(
                p_a, erasing_draws(p_a, self.seed_generator), self.erase_gate, self.erase_max_factor, min_half
            )
        else:
            dropped, _ = attentive_erasing(
                p_a, self.seed_generator, self.erase_threshold, self.erase_size, self.erase_prob
            )
        return ops.where(dropped, 0.0, shown)

    def area_loss(self, p_a, f_a, logits) -> tf.Tensor:
        """Eq. 16 (the mean of ``p^a``), plus the official extra term when ``area_top_classes`` is set."""
        per_image = area_per_image(p_a)
        if self.area_top_classes:
            ranked = ops.argsort(-ops.cast(logits, "float32"), axis=-1)[:, AREA_FIRST_RANK : self.area_top_classes]
            channel_means = ops.mean(ops.cast(f_a, "float32"), axis=(1, 2))  # [B, k]
            per_image = per_image + ops.sum(ops.take_along_axis(channel_means, ranked, axis=1), axis=1)
        return replica_mean(per_image)

    def logits_and_features(self, images, training=False):
        raise ValueError(
            "ORNetRefinement's logits are its evaluator's on the whole image, not computed from its "
            "taps; localize with its own maps (the cam localizer)"
        )

    def call(self, images, training=False, return_maps=False):
        logits = self.evaluator(images, training=False)
        if not return_maps:
            return logits
        return logits, self.activation_maps(images, training=training)[2][..., None]

    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """Eq. 10: evaluation loss on ``I * p^a`` (``training_mask`` when ``training``) + alpha L_w + beta L_a."""
        _, f_a, p_a = self.activation_maps(images, training=training)
        logits = self.evaluate_maps(images, self.training_mask(p_a) if training else p_a)
        parts = {
            "evaluation_loss": self.classification_loss(labels, logits),
            "entropy": replica_mean(weighted_entropy_per_image(p_a, self.mu, self.sigma)),
            "area": self.area_loss(p_a, f_a, logits),
        }
        total = parts["evaluation_loss"] + self.alpha * parts["entropy"] + self.beta * parts["area"]
        return total, parts, logits

    def get_config(self) -> dict:
        return {**super().get_config(), "evaluator": keras.saving.serialize_keras_object(self.evaluator)}
