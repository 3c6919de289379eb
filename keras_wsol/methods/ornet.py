"""ORNet (Xie et al., ICCV 2021): a low-level activation-map generator, refined against a frozen evaluator.

Two fits of the same model, chosen by ``stage``:

* **Stage 1** (Section 3.1, Eq. 1-6): the backbone is split at a shallow
  tap into F1^c and F2^c (:func:`keras_wsol.backbones.split_at_tap`). The
  generator (:class:`keras_wsol.layers.ActivationMapGenerator`) turns the
  low-level features ``f^c`` into ``f^a`` (k channels) and the map ``p^a``;
  F2^c classifies ``p^a * f^c`` (Eq. 3) and an auxiliary head
  ``GAP(Conv1x1(f^a))`` classifies too (Eq. 4). Loss: both cross-entropies
  (Eq. 5-6). Every weight trains.
* **Stage 2** (Section 3.2, Eq. 7-16), built by :meth:`ORNet.refine` from a
  stage-1 model and an evaluator (any trained classifier, e.g. a ``cam``
  checkpoint). The evaluator classifies ``I * p^a`` (Eq. 9; ``p^a``
  upsampled bilinearly to the input, pixels pulled towards the evaluator's
  preprocessing zero point, see ``WSOLModel.mask_images``) with ``p^a``
  attentively erased in training (Section 3.2.2). Loss (Eq. 10):
  ``CE + alpha * L_w(p^a) + beta * L_a(p^a)`` (Eq. 14-16), both on the map
  before erasing. What trains is set in one place, :meth:`ORNet.stage_parts`:
  the generator and the shallow layers F1^c (Eq. 7-8: both "initialized
  from the first stage"; ``train_shallow=False`` freezes F1^c). The
  evaluator, F2^c, the classifier and the auxiliary head are frozen; the
  evaluator runs in inference mode.

Inference needs F1^c and the generator only: ``logits_and_class_maps``
returns ``p^a`` (class-agnostic; ``class_ids`` are ignored) at the tap's
resolution. The logits (Top-1 Cls, Top-1 Loc, exported classes) are stage
1's own classifier's, and in stage 2 the evaluator's on the full image.

What the paper leaves open, chosen here: the encoder-decoder F^d (see the
generator), the tap (``low``), the erasing threshold (0.5) and rectangle
sides (25-75% of the map's, uniform), and that ``val_loss`` is the stage's
own training loss without erasing. Defaults otherwise are the paper's: Adam
with a cosine schedule, lr 1e-3 (stage 1) and 1e-4 (stage 2), alpha 1.5,
beta 0.02, mu 0.5, sigma 0.1, drop probability 0.5.

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
from keras_wsol.layers import ActivationMapGenerator, attentive_erasing
from keras_wsol.losses import area_per_image, weighted_entropy_per_image
from keras_wsol.methods.base import WSOLModel, replica_mean

STAGES = (1, 2)
#: Constructor arguments that fix the architecture: stage 2 takes them from stage 1.
ARCHITECTURE = ("num_classes", "backbone", "image_size", "head_channels", "tap", "generator_channels")


@keras.saving.register_keras_serializable(package="keras_wsol")
class ORNet(WSOLModel):
    """Low-level activation maps (stage 1) refined by entropy, area and erasing against an evaluator (stage 2).

    Args:
        stage: 1 or 2.
        evaluator: stage 2: the frozen classifier (a keras model mapping
            images of ``image_size`` to logits over the same classes), or its
            serialized config (when a saved model is loaded).
        tap: where the backbone is split, ``low`` or ``mid``.
        generator_channels: width of the generator's encoder-decoder.
        alpha: weight of the weighted entropy loss (Eq. 10); 0 drops it.
        beta: weight of the area loss (Eq. 10); 0 drops it.
        mu, sigma: the Gaussian weighting of Eq. 15.
        erasing: stage 2: attentive erasing in training.
        erase_threshold, erase_size, erase_prob: see
            :func:`keras_wsol.layers.attentive_erasing`.
        train_shallow: stage 2: step F1^c as well as the generator.
        seed: seed of the erasing.
        **kwargs: as :class:`WSOLModel`.
    """

    class_agnostic_maps = True

    def __init__(
        self,
        *args,
        stage: int = 1,
        evaluator: keras.Model | dict | None = None,
        tap: str = "low",
        generator_channels: int = 64,
        alpha: float = 1.5,
        beta: float = 0.02,
        mu: float = 0.5,
        sigma: float = 0.1,
        erasing: bool = True,
        erase_threshold: float = 0.5,
        erase_size: tuple[float, float] = (0.25, 0.75),
        erase_prob: float = 0.5,
        train_shallow: bool = True,
        seed: int | None = None,
        **kwargs,
    ):
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}: 1 (generator) or 2 (refinement against an evaluator)")
        if (stage == 2) != (evaluator is not None):
            raise ValueError("stage 2 needs an evaluator (a trained classifier), stage 1 takes none")
        if not 0.0 < erase_size[0] <= erase_size[1] <= 1.0:
            raise ValueError(f"erase_size={tuple(erase_size)}: two fractions of the map side, 0 < low <= high <= 1")
        if not 0.0 <= erase_prob <= 1.0:
            raise ValueError(f"erase_prob={erase_prob}: a probability in [0, 1]")
        if sigma <= 0:
            raise ValueError(f"sigma={sigma}: the width of Eq. 15's Gaussian must be positive")
        self.stage = int(stage)
        self.tap = tap
        self.generator_channels = int(generator_channels)
        self.alpha, self.beta, self.mu, self.sigma = float(alpha), float(beta), float(mu), float(sigma)
        self.erasing = bool(erasing)
        self.erase_threshold = float(erase_threshold)
        self.erase_size = (float(erase_size[0]), float(erase_size[1]))
        self.erase_prob = float(erase_prob)
        self.train_shallow = bool(train_shallow)
        self.seed = seed
        # Held outside keras' attribute tracking until create_method_state.
        self._evaluator_source = [evaluator]
        super().__init__(*args, **kwargs)
        self._freeze_for_stage()

    def create_method_state(self) -> None:
        self.shallow, self.deep = split_at_tap(self.backbone, self.tap)
        self.generator = ActivationMapGenerator(self.num_classes, self.generator_channels, name="generator")
        self.aux_conv = keras.layers.Conv2D(self.num_classes, 1, name="aux_conv")
        self.aux_gap = keras.layers.GlobalAveragePooling2D(name="aux_gap")
        # Every stage-1 weight exists at both stages (``call`` at stage 2 runs the evaluator alone).
        self.stage1_logits(ops.zeros((1, self.image_size, self.image_size, 3)))
        source = self._evaluator_source.pop()
        self.evaluator = keras.saving.deserialize_keras_object(source) if isinstance(source, dict) else source
        if self.evaluator is not None:
            self._check_evaluator()
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="erasing_seed")
        if self.stage == 1:
            self.add_part_trackers("aux_loss")
        else:
            self.add_part_trackers("evaluation_loss", "entropy", "area")

    def _check_evaluator(self) -> None:
        side = getattr(self.evaluator, "image_size", self.image_size)
        if side != self.image_size:
            raise ValueError(f"the evaluator takes {side}-pixel images, this model {self.image_size}")
        classes = self.evaluator(ops.zeros((1, side, side, 3)), training=False).shape[-1]
        if classes != self.num_classes:
            raise ValueError(f"the evaluator has {classes} classes, this model {self.num_classes}")

    def stage_parts(self) -> dict[str, list]:
        """``{"trained": [...], "frozen": [...]}``: the layers this stage steps and the ones it leaves alone."""
        stage1 = [self.shallow, self.generator, self.deep, self.head, self.classifier, self.aux_conv]
        if self.stage == 1:
            return {"trained": [p for p in stage1 if p is not None], "frozen": []}
        trained = [self.generator] + ([self.shallow] if self.train_shallow else [])
        frozen = [p for p in stage1 + [self.evaluator] if p is not None and p not in trained]
        return {"trained": trained, "frozen": frozen}

    def _freeze_for_stage(self) -> None:
        for part in self.stage_parts()["frozen"]:
            part.trainable = False
            # Per weight too: a part deserialized with ``trainable=False`` in its
            # config keeps its sublayers trainable through the setter above.
            for weight in part.weights:
                weight.trainable = False

    @classmethod
    def refine(cls, stage1: ORNet, evaluator: keras.Model, **stage2_args) -> ORNet:
        """A stage-2 model initialised from ``stage1``'s weights, with ``evaluator`` frozen.

        ``stage2_args`` are the stage-2 settings (``alpha``, ``erasing``, ...);
        architecture arguments (``ARCHITECTURE``) may be repeated but must
        equal stage 1's.
        """
        if not isinstance(stage1, ORNet) or stage1.stage != 1:
            raise ValueError(f"the model to refine must be an ORNet at stage 1, not {type(stage1).__name__}"
                             + (f" at stage {stage1.stage}" if isinstance(stage1, ORNet) else ""))
        config = stage1.get_config()
        for name in ARCHITECTURE:
            if name in stage2_args and stage2_args[name] != config[name]:
                raise ValueError(f"{name}={stage2_args[name]!r} but the stage-1 model has {config[name]!r}")
        for name in ("name", "trainable", "dtype", "weights"):
            config.pop(name, None)
        model = cls(**{**config, **stage2_args, "stage": 2, "evaluator": evaluator})
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

    def stage1_logits(self, images, training=False) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``(y, y^a, p^a)``: F2^c on ``p^a * f^c`` (Eq. 3), the auxiliary head (Eq. 4) and the map."""
        low, f_a, p_a = self.activation_maps(images, training=training)
        high = self.deep(low * ops.cast(p_a[..., None], low.dtype), training=training)
        cam = self.head(high) if self.head is not None else high
        return self.classifier(self.gap(cam)), self.aux_gap(self.aux_conv(f_a)), p_a

    def evaluate_maps(self, images, maps) -> tf.Tensor:
        """The evaluator's logits on ``I * maps`` (Eq. 9); ``maps`` ``[B, h, w]`` are upsampled to the input."""
        up = tf.image.resize(ops.cast(maps, "float32")[..., None], ops.shape(images)[1:3], method="bilinear")[..., 0]
        if isinstance(self.evaluator, WSOLModel):
            masked = self.evaluator.mask_images(images, up)
        else:
            masked = ops.cast(images, "float32") * up[..., None]
        return self.evaluator(masked, training=False)

    def call(self, images, training=False, return_maps=False):
        if self.stage == 1:
            logits, _, p_a = self.stage1_logits(images, training=training)
        else:
            logits = self.evaluator(images, training=False)
            p_a = self.activation_maps(images, training=training)[2] if return_maps else None
        return (logits, p_a[..., None]) if return_maps else logits

    def logits_and_class_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Logits and ``p^a`` ``[B, h, w]`` (class-agnostic: ``class_ids`` is not used)."""
        logits, maps = self(images, training=False, return_maps=True)
        return logits, maps[..., 0]

    # -- training ------------------------------------------------------------
    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """Stage 1: Eq. 5 + Eq. 6. Stage 2: Eq. 10 with attentive erasing when ``training``."""
        if self.stage == 1:
            logits, aux_logits, _ = self.stage1_logits(images, training=training)
            aux = self.classification_loss(labels, aux_logits)
            return self.classification_loss(labels, logits) + aux, {"aux_loss": aux}, logits
        _, _, p_a = self.activation_maps(images, training=training)
        shown = p_a
        if training and self.erasing:
            shown, _ = attentive_erasing(p_a, self.seed_generator, self.erase_threshold, self.erase_size, self.erase_prob)
        logits = self.evaluate_maps(images, shown)
        parts = {
            "evaluation_loss": self.classification_loss(labels, logits),
            "entropy": replica_mean(weighted_entropy_per_image(p_a, self.mu, self.sigma)),
            "area": replica_mean(area_per_image(p_a)),
        }
        total = parts["evaluation_loss"] + self.alpha * parts["entropy"] + self.beta * parts["area"]
        return total, parts, logits

    def test_step(self, data):
        images, labels = data[0], data[1]
        loss, parts, logits = self.compute_losses(images, labels, training=False)
        return self._update_metrics(loss, labels, logits, parts)

    # -- serialization ---------------------------------------------------------
    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "stage": self.stage,
            "evaluator": keras.saving.serialize_keras_object(self.evaluator) if self.evaluator is not None else None,
            "tap": self.tap,
            "generator_channels": self.generator_channels,
            "alpha": self.alpha,
            "beta": self.beta,
            "mu": self.mu,
            "sigma": self.sigma,
            "erasing": self.erasing,
            "erase_threshold": self.erase_threshold,
            "erase_size": list(self.erase_size),
            "erase_prob": self.erase_prob,
            "train_shallow": self.train_shallow,
            "seed": self.seed,
        }
