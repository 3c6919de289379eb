"""ORNet (Xie et al., ICCV 2021), stage 2: the stage-1 generator refined against a frozen evaluator.

Registered as ``ornet_refine``; built by :meth:`ORNetRefinement.from_stage1`
from a trained :class:`~keras_wsol.methods.ornet.ORNet` and an evaluator (any
trained classifier, e.g. a ``cam`` checkpoint), with the official code's
recipe (``train_2nd_step.py``, ``models/model.py``, ``models/erasing.py``) as
the default (Section 3.2, Eq. 7-16). The evaluator classifies ``I * up(m)``
(Eq. 9; pixels pulled towards the evaluator's preprocessing zero point, see
``WSOLModel.mask_images``; ``up`` nearest, as ``F.interpolate``), where in
training ``m`` is the squashed map ``0.6 p^a + 0.2`` (official; the paper's
Eq. 9 has ``p^a``, ``evaluator_mask="raw"``) with attentive erasing (Section
3.2.2): each image erased with probability 0.5, a relative threshold, a
rectangle bounded by the above-threshold region and drop probability
``0.6 p + 0.2`` (:func:`keras_wsol.layers.official_attentive_erasing`;
``erasing_recipe="fixed"`` is this library's first reading). Without erasing
the evaluator sees the raw map. Loss (Eq. 10): ``CE + alpha * L_w(p^a) + beta
* L_a(p^a)`` (Eq. 14-16), both on the map before squashing and erasing;
``area_top_classes`` adds the official area term. What trains is set in one
place, :meth:`ORNetRefinement.stage_parts`: by default the generator's decoder
blocks and map head, as the official FineModel (``trainable_set``;
``generator_shallow`` is the paper's Eq. 7-8, both "initialized from the first
stage"). Everything else is frozen; the evaluator runs in inference mode.

The maps are ``p^a`` as in stage 1; the logits (Top-1 Cls, Top-1 Loc,
exported classes) are the evaluator's on the full image. ``val_loss`` is the
training loss with the raw map and no erasing (as the official evaluation
mode). Defaults: Adam with a cosine schedule at lr 1e-4, alpha 1.5, beta 0.02,
mu 0.5, sigma 0.1 (paper Sec. 4.1, 4.4).

Example:
    >>> import numpy as np, keras
    >>> from keras_wsol.methods import CAM, ORNet
    >>> x, y = np.zeros((2, 32, 32, 3), "float32"), np.array([0, 1])
    >>> stage1 = ORNet(num_classes=2, backbone="small", image_size=32, generator_channels=4)
    >>> stage2 = ORNetRefinement.from_stage1(stage1, CAM(num_classes=2, backbone="small", image_size=32))
    >>> stage2.compile(optimizer=keras.optimizers.Adam(1e-4))
    >>> sorted(stage2.train_on_batch(x, y, return_dict=True))
    ['accuracy', 'area', 'entropy', 'evaluation_loss', 'loss']
    >>> tuple(stage2.localization_maps(x).shape)
    (2, 32, 32)
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.distribute import replica_mean
from keras_wsol.layers import (
    SQUASH_SCALE,
    SQUASH_SHIFT,
    attentive_erasing,
    erasing_draws,
    official_attentive_erasing,
)
from keras_wsol.losses import area_per_image, weighted_entropy_per_image
from keras_wsol.methods import base
from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.hyperparameters import HyperParameter
from keras_wsol.methods.ornet import ARCHITECTURE, GENERATOR, ORNet

ERASING_RECIPES = ("official", "fixed")
EVALUATOR_MASKS = ("squashed", "raw")
TRAINABLE_SETS = ("decoder", "generator", "generator_shallow")
#: The official extra area term starts at the 4th-ranked class (models/loss.py: range(3, topk)).
AREA_FIRST_RANK = 3
#: The build inputs: checkpoints ``from_arguments`` loads, never saved.
CHECKPOINTS = ("stage1_checkpoint", "evaluator_checkpoint")


@keras.saving.register_keras_serializable(package="keras_wsol")
class ORNetRefinement(ORNet):
    """Stage 2: the stage-1 generator refined against a frozen evaluator (Eq. 7-16); see :meth:`from_stage1`.

    It runs the stage-1 network (its architecture hyper-parameters are stage
    1's, taken from the stage-1 model) with most of it frozen.

    Args:
        evaluator: the frozen classifier (a Keras model mapping images of
            ``image_size`` to logits over the same classes), or its serialized
            config (when a saved model is loaded).
    """

    method_name = "ornet_refine"
    hyperparameters = (
        *(dataclasses.replace(p, flag="", help=f"{p.help} (stage 1's)", renamed_from=()) for p in GENERATOR),
        HyperParameter(
            "alpha",
            1.5,
            "weight of the weighted entropy loss (Eq. 10); 0 drops it",
            "paper Sec. 4.4",
            minimum=0,
            renamed_from=(("ornet_alpha", "0.3.0"),),
        ),
        HyperParameter(
            "beta",
            0.02,
            "weight of the area loss (Eq. 10); 0 drops it",
            "paper Sec. 4.4",
            minimum=0,
            renamed_from=(("ornet_beta", "0.3.0"),),
        ),
        HyperParameter(
            "mu",
            0.5,
            "mean of the entropy weighting (Eq. 15)",
            "paper Sec. 3.2.1",
            renamed_from=(
                ("entropy_mu", "0.2.0"),
                ("ornet_mu", "0.3.0"),
            ),
        ),
        HyperParameter(
            "sigma",
            0.1,
            "width of the entropy weighting (Eq. 15)",
            "paper Sec. 3.2.1",
            minimum=1e-6,
            renamed_from=(
                ("entropy_sigma", "0.2.0"),
                ("ornet_sigma", "0.3.0"),
            ),
        ),
        HyperParameter(
            "erasing",
            True,
            "attentive erasing in training",
            "paper Sec. 3.2.2",
            renamed_from=(
                ("attentive_erasing", "0.2.0"),
                ("ornet_erasing", "0.3.0"),
            ),
        ),
        HyperParameter(
            "erasing_recipe",
            "official",
            "official (per-image gate, relative threshold, rectangle bounded by the above-threshold "
            "region, drop probability 0.6 p + 0.2) or fixed (every image, absolute threshold, rectangle sides as "
            "fractions of the map, fixed drop probability: --ornet_refine_erase_threshold/_size/_prob)",
            "official models/erasing.py (AttentiveErasing); the paper gives no threshold or rectangle",
            choices=ERASING_RECIPES,
            renamed_from=(("ornet_erasing_recipe", "0.3.0"),),
        ),
        HyperParameter(
            "erase_gate",
            0.5,
            "official recipe: probability that an image is erased",
            "official models/erasing.py (AttentiveErasing p=0.5); the paper's 'probability 0.5'",
            minimum=0,
            maximum=1,
            renamed_from=(("ornet_erase_gate", "0.3.0"),),
        ),
        HyperParameter(
            "erase_max_factor",
            0.5,
            "official recipe: the threshold is max - f (max - min), f ~ U(0, this) per batch",
            "official models/model.py (FineModel max_factor=0.5)",
            minimum=0,
            maximum=1,
            renamed_from=(("ornet_erase_max_factor", "0.3.0"),),
        ),
        HyperParameter(
            "erase_min_half",
            4,
            "official recipe: smallest half-side of the rectangle, in pixels of a 56-pixel map (scaled "
            "to the map's side); smaller above-threshold regions are not erased",
            "official models/erasing.py (min_height = min_width = 4 at 56 x 56)",
            minimum=1,
            renamed_from=(("ornet_erase_min_half", "0.3.0"),),
        ),
        HyperParameter(
            "erase_threshold",
            0.5,
            "fixed recipe: map values above this inside the rectangle may be erased",
            "our first reading: the paper gives no value",
            minimum=0,
            maximum=1,
            renamed_from=(
                ("erase_threshold", "0.2.0"),
                ("ornet_erase_threshold", "0.3.0"),
            ),
        ),
        HyperParameter(
            "erase_size",
            (0.25, 0.75),
            "fixed recipe: range of the erasing rectangle's height and width, as fractions of the map side",
            "our first reading: the paper says 'random height and width'",
            minimum=1e-6,
            maximum=1,
            renamed_from=(
                ("erase_size", "0.2.0"),
                ("ornet_erase_size", "0.3.0"),
            ),
        ),
        HyperParameter(
            "erase_prob",
            0.5,
            "fixed recipe: probability an erasing candidate is dropped",
            "our first reading of Sec. 3.2.2",
            minimum=0,
            maximum=1,
            renamed_from=(
                ("erase_prob", "0.2.0"),
                ("ornet_erase_prob", "0.3.0"),
            ),
        ),
        HyperParameter(
            "evaluator_mask",
            "squashed",
            "with erasing: in training the evaluator sees I * up(0.6 p + 0.2) (squashed, official) or "
            "I * up(p) (raw, the paper's Eq. 9); erased pixels are 0 in either; without erasing always raw",
            "official models/erasing.py and model.py (the map passed to the evaluator)",
            choices=EVALUATOR_MASKS,
            renamed_from=(("ornet_evaluator_mask", "0.3.0"),),
        ),
        HyperParameter(
            "mask_upsampling",
            "nearest",
            "how the map is upsampled to the image for the evaluator",
            "official models/model.py (F.interpolate's default, nearest)",
            choices=("nearest", "bilinear"),
            renamed_from=(("ornet_mask_upsampling", "0.3.0"),),
        ),
        HyperParameter(
            "trainable_set",
            "decoder",
            "what trains: decoder (the generator's decoder blocks and map head), generator, or "
            "generator_shallow (the generator and the shallow layers F1, the paper's Eq. 7-8)",
            "official models/model.py (FineModel: up_2, up_3, att_conv3, bn_att3 train)",
            choices=TRAINABLE_SETS,
            renamed_from=(("ornet_trainable_set", "0.3.0"),),
        ),
        HyperParameter(
            "frozen_batchnorm",
            "batch",
            "the BatchNorm layers of the frozen shallow layers and generator parts: batch (batch "
            "statistics in training, running statistics updated, as PyTorch's train mode) or inference (Keras' "
            "frozen-layer convention); the evaluator always runs in inference mode",
            "official train_2nd_step.py:165 (model.train() over the whole FineModel, whose frozen stem and encoder "
            "have BatchNorm; its evaluator, VGG16, has none)",
            choices=("batch", "inference"),
            renamed_from=(("ornet_frozen_batchnorm", "0.3.0"),),
        ),
        HyperParameter(
            "area_top_classes",
            0,
            "0 for the paper's area loss (Eq. 16); k adds the official term, the mean of f^a's channels "
            "of the evaluator's classes ranked 4th to k-th (needs at least k classes)",
            "paper Eq. 16 (the official AreaLoss(topk=25) has the extra term)",
            minimum=0,
            renamed_from=(("ornet_area_top_classes", "0.3.0"),),
        ),
        HyperParameter(
            "learning_rate",
            1e-4,
            "peak learning rate (--learning_rate, the run's flag, wins when given)",
            "paper Sec. 4.1",
            minimum=0,
            renamed_from=(("refine_learning_rate", "0.2.0"),),
        ),
        HyperParameter("seed", None, "seed of the erasing; none: random", "our choice", kind=int, flag=""),
        HyperParameter(
            "stage1_checkpoint",
            None,
            "the stage-1 .keras model it starts from: its last epoch (checkpoints/last.keras), as the "
            "official code's last_epoch.pth",
            "build input (official config/CUB_200_2011.yaml ATT_CHECKPOINT: the stage-1 last epoch)",
            kind=str,
            saved=False,
            renamed_from=(
                ("stage1_checkpoint", "0.2.0"),
                ("ornet_stage1_checkpoint", "0.3.0"),
            ),
        ),
        HyperParameter(
            "evaluator_checkpoint",
            None,
            "a trained classifier .keras (e.g. a --method=cam run's checkpoints/best.keras), frozen",
            "build input",
            kind=str,
            saved=False,
            renamed_from=(
                ("evaluator_checkpoint", "0.2.0"),
                ("ornet_evaluator_checkpoint", "0.3.0"),
            ),
        ),
    )
    model_inputs = ("evaluator",)
    # The shallow layers + generator forward, the evaluator forward on I * p^a, the evaluator backward to
    # the input, the generator and shallow layers backward: two networks, each once forward and once backward.
    train_passes = 4

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._freeze_for_stage()
        # XLA has no kernel for the gradient of a nearest-neighbour resize (Eq. 9's upsampling, the official
        # default): Keras' jit_compile="auto" then leaves the steps uncompiled instead of failing.
        self.supports_jit = self.mask_upsampling != "nearest"

    @classmethod
    def from_stage1(cls, stage1: ORNet, evaluator: keras.Model, **settings) -> ORNetRefinement:
        """A refinement initialised from ``stage1``'s weights, with ``evaluator`` frozen.

        ``settings`` are this class's hyper-parameters (``alpha``,
        ``erasing``, ...); architecture arguments (``ARCHITECTURE``) may be
        repeated but must equal stage 1's. The backbone's weights are stage
        1's (``weights`` is not used).
        """
        if type(stage1) is not ORNet:
            raise ValueError(f"the model to refine must be a stage-1 ORNet, not {type(stage1).__name__}")
        config = stage1.get_config()
        for name in ARCHITECTURE:
            if name in settings and settings[name] != config[name]:
                raise ValueError(f"{name}={settings[name]!r} but the stage-1 model has {config[name]!r}")
        settings = {k: v for k, v in settings.items() if k != "weights"}
        config = {k: v for k, v in config.items() if k not in ("name", "trainable", "dtype", "weights")}
        model = cls(**{**config, **settings}, evaluator=evaluator)
        for part in ("backbone", "generator", "aux_conv", "classifier", "head"):
            if getattr(model, part) is not None:
                getattr(model, part).set_weights(getattr(stage1, part).get_weights())
        return model

    @classmethod
    def from_arguments(cls, arguments: dict, load) -> WSOLModel:
        """:meth:`from_stage1` on ``load("stage1_checkpoint")`` and ``load("evaluator_checkpoint")``."""
        settings = {k: v for k, v in arguments.items() if k not in CHECKPOINTS}
        return cls.from_stage1(load("stage1_checkpoint"), load("evaluator_checkpoint"), **settings)

    @classmethod
    def variants(cls, deterministic: bool = False, **arguments) -> dict:
        """A refinement of a fresh stage-1 model against a CAM evaluator of the same architecture (erasing off if
        deterministic)."""
        from keras_wsol.methods.cam import CAM

        stage1_arguments = {k: v for k, v in arguments.items() if k in (*base.CONSTRUCTOR, *ARCHITECTURE)}
        settings = {k: v for k, v in arguments.items() if k not in stage1_arguments}

        def refinement():
            evaluator = CAM(**{k: v for k, v in arguments.items() if k in base.ARCHITECTURE})
            return cls.from_stage1(ORNet(**stage1_arguments), evaluator, erasing=not deterministic, **settings)

        return {cls.method_name: refinement}

    def create_method_state(self) -> None:
        self.create_network()
        side = getattr(self.evaluator, "image_size", self.image_size)
        if side != self.image_size:
            raise ValueError(f"the evaluator takes {side}-pixel images, this model {self.image_size}")
        classes = self.evaluator(ops.zeros((1, side, side, 3)), training=False).shape[-1]
        if classes != self.num_classes:
            raise ValueError(f"the evaluator has {classes} classes, this model {self.num_classes}")
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="erasing_seed")
        self.add_part_trackers("evaluation_loss", "entropy", "area")

    def check_hyperparameters(self) -> None:
        if len(self.erase_size) != 2 or not self.erase_size[0] <= self.erase_size[1]:
            raise ValueError(f"erase_size={self.erase_size}: two fractions of the map side, 0 < low <= high <= 1")
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
        stage1 = [p for p in self.network_parts() if p is not self.generator]
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
        return {"learning_rate": self.learning_rate}

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
