"""MinMaxCAM (Wang et al., BMVC 2021): Common and Full Region Regularization, two stages per mini-batch.

Every batch holds N classes x S images, consecutive by set
(:func:`keras_wsol.data.pipeline.class_set_dataset`). ``train_step`` runs:

* **Stage I**: cross-entropy on the whole batch; every trainable weight is
  stepped by ``optimizer``.
* **Stage II** on the same batch, with the weights stage I just produced: the
  backbone (and the extra head, if any) in inference mode and frozen; the
  CAM ``H`` of each image for its ground-truth class from the classifier
  kernel (Eq. 1, no bias), min-max normalized per image and upsampled
  bilinearly to the input; ``f = GAP(B*(I * H))`` and ``f_o = GAP(B*(I))`` (a
  constant); ``L = lambda_crr * CRR + lambda_frr * FRR`` (Eq. 2, 3, 5).
  Gradients reach the classifier kernel only through ``H``; only the kernel
  is stepped. The official code steps both stages with its one optimizer
  (train.py:251-254, 343, 360); under the PyTorch 1.x it was written for,
  ``zero_grad`` leaves zero gradients, so its second ``step()`` also decays
  every other weight and replays its momentum: that is
  ``stage2_regime="shared_zero_grads"``. The default, ``"shared"``, is the
  same code under PyTorch 2 (``zero_grad`` sets gradients to None): the run's
  optimizer steps the kernel alone, with stage I's momentum and schedule.
  With SGD the step is proportional to the CRR/FRR gradient; with Adam a
  stage-II step of any size moves the kernel by about one Adam step of the
  replayed momentum, whatever lambda is, so compare MinMaxCAM against its
  control, both lambdas 0 (the same two steps a batch), not only against
  CAM. ``"separate"`` is the paper's reading: an optimizer of its own (a
  fresh copy of the run's, or ``make_optimizer(stage2_kind,
  stage2_learning_rate)``), so no weight decay or momentum touches the
  frozen weights.
* **Optimizer**: the run's own (CAM's), shared by both stages. With
  ``official_optimizer`` the run trains with the official code's SGD
  (Nesterov 0.9, coupled decay 5e-4, the learning rate divided by 10 at 1/4
  and 1/2 of training) unless its flags say otherwise
  (:meth:`optimizer_settings`). That schedule is for 200 epochs: at this
  library's 12-epoch budget it leaves CAM and MinMaxCAM alike near chance
  (docs/RESULTS.md), so it is not the default. The backbone's learning rate
  is the run's ``backbone_lr_multiplier`` times the head's (0.1 with
  ImageNet weights: backbone 1e-4, head 1e-3, as the official code).
* **Diagnostics**: the norms of the cross-entropy's, CRR's and FRR's
  gradients on the kernel (``grad_ce``, ``grad_crr``, ``grad_frr``, weighted
  by their lambdas), logged each epoch, show which term drives the kernel
  (under several replicas: each replica's share times the replica count).

Choices the paper leaves open, taken from the official code: ``I * H`` is
applied to the tensor the backbone sees after its preprocessing (a masked
pixel becomes the preprocessing's zero point, see ``WSOLModel.mask_images``);
the squared distances are averaged over feature channels (``MSELoss``);
CRR and FRR are averaged over the sets of the batch. The paper's own settings:
N = 12 sets of S = 5 (Sec. 4.1; N = 10 with ResNet50), and lambda_frr = 10 is the
peak of its Fig. 6 ablation on VGG16 (the official code's defaults are 1 and 1).

Example:
    >>> import numpy as np, keras
    >>> model = MinMaxCAM(num_classes=2, backbone="small", image_size=32, set_size=2)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> x = np.zeros((4, 32, 32, 3), "float32")
    >>> sorted(model.train_on_batch(x, np.array([0, 0, 1, 1]), return_dict=True))
    ['accuracy', 'crr', 'frr', 'grad_ce', 'grad_crr', 'grad_frr', 'loss', 'stage2_loss']
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.distribute import replica_mean
from keras_wsol.losses import crr_per_set, frr_per_image
from keras_wsol.maps import class_channel, minmax_normalize
from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.hyperparameters import HyperParameter
from keras_wsol.optimizers import set_lr_multipliers


@keras.saving.register_keras_serializable(package="keras_wsol")
class MinMaxCAM(WSOLModel):
    """CAM trained with a second, classifier-only stage of region regularizers each step."""

    method_name = "minmaxcam"
    hyperparameters = (
        HyperParameter(
            "set_size",
            5,
            "S, images per class set (batches are N sets of S)",
            "official train.py:170 (--ss); paper Sec. 4.1",
            minimum=2,
            flag="set_size",
        ),
        HyperParameter(
            "lambda_crr",
            1.0,
            "weight of Common Region Regularization (Eq. 5)",
            "official train.py:182 (--w_loss_com)",
            minimum=0,
            renamed_from=(("lambda_crr", "0.2.0"),),
        ),
        HyperParameter(
            "lambda_frr",
            1.0,
            "weight of Full Region Regularization (Eq. 5); the paper's Fig. 6 peaks at 10 for VGG16",
            "official train.py:183 (--w_loss_ori)",
            minimum=0,
            renamed_from=(("lambda_frr", "0.2.0"),),
        ),
        HyperParameter(
            "stage2_regime",
            "shared",
            "how stage II steps the kernel: shared = the run's optimizer (its momentum, decay and schedule, the "
            "kernel alone stepped); shared_zero_grads = the same, and every other weight stepped with a zero "
            "gradient (decay and momentum replayed, PyTorch 1.x zero_grad); separate = an optimizer of its own "
            "(the paper's reading: nothing else decays or carries momentum)",
            "official train.py:251-254, 343, 360: one optimizer.step() for both stages; run under PyTorch 2 "
            "(zero_grad sets gradients to None) it steps only the kernel, which is shared; under the PyTorch 1.x "
            "it was written for it is shared_zero_grads (REPRODUCE.md's recipe)",
            choices=("shared", "shared_zero_grads", "separate"),
        ),
        HyperParameter(
            "stage2_kind",
            "same",
            "stage2_regime=separate: a fresh copy of the run's optimizer, or SGD",
            "our reading: the paper says only that stage II updates fc",
            choices=("same", "sgd"),
            renamed_from=(("stage2_optimizer", "0.2.0"),),
        ),
        HyperParameter(
            "stage2_learning_rate",
            None,
            "stage2_regime=separate: stage II peak learning rate; none: the run's",
            "our reading: the paper gives one learning rate",
            kind=float,
            minimum=0,
            renamed_from=(("stage2_learning_rate", "0.2.0"),),
        ),
        HyperParameter(
            "official_optimizer",
            False,
            "train with the official code's optimizer unless the run's flags say otherwise: SGD, Nesterov "
            "momentum 0.9, coupled L2 decay 5e-4, the learning rate divided by 10 at 1/4 and 1/2 of training "
            "(official train.py:172-178, 251-254, 277: milestones 50 and 100 of 200 epochs); false: the run's "
            "optimizer, as CAM's",
            "measured (docs/RESULTS.md): at 12 epochs the official schedule leaves CAM and MinMaxCAM near "
            "chance (28.5 MaxBoxAccV2), so the default is the run's optimizer, shared by both stages",
        ),
    )
    uses_class_sets = True
    # Stage I: forward + backward; stage II: forward on I (H and f_o), forward on I * H, and two backward
    # passes through it to the input (H) and the kernel, one per regularizer (the gradient-norm diagnostics).
    train_passes = 6

    def create_method_state(self) -> None:
        self.add_part_trackers("crr", "frr", "stage2_loss", "grad_ce", "grad_crr", "grad_frr")

    @property
    def optimizer_steps_per_batch(self) -> int:
        """Applies of the run's optimizer per batch: 2 when stage II shares it (its schedule counts both)."""
        return 1 if self.stage2_regime == "separate" else 2

    def optimizer_settings(self) -> dict:
        if not self.official_optimizer:
            return {}
        return {
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 5e-4,
            "coupled_weight_decay": True,
            "lr_schedule": "step",
            "lr_milestones": (0.25, 0.5),
        }

    def compile(self, optimizer="adam", make_optimizer=None, stage2_optimizer=None, **kwargs):
        """As ``WSOLModel.compile``. With ``stage2_regime="separate"``, ``stage2_optimizer`` (else
        ``make_optimizer``'s, else a copy of ``optimizer``) steps stage II; otherwise ``optimizer`` does.
        """
        super().compile(optimizer=optimizer, **kwargs)
        if self.stage2_regime != "separate":
            if stage2_optimizer is not None:
                raise ValueError(f"stage2_optimizer is for stage2_regime='separate', not {self.stage2_regime!r}")
            self.stage2_optimizer = self.optimizer
            return
        if (
            stage2_optimizer is None
            and make_optimizer is not None
            and (self.stage2_kind != "same" or self.stage2_learning_rate is not None)
        ):
            stage2_optimizer = make_optimizer(self.stage2_kind, self.stage2_learning_rate)
        if stage2_optimizer is None:
            inner = getattr(self.optimizer, "inner_optimizer", self.optimizer)
            stage2_optimizer = inner.__class__.from_config(inner.get_config())
        stage2_optimizer = keras.optimizers.get(stage2_optimizer)
        if self.dtype_policy.name == "mixed_float16" and not isinstance(
            stage2_optimizer, keras.optimizers.LossScaleOptimizer
        ):
            stage2_optimizer = keras.optimizers.LossScaleOptimizer(stage2_optimizer)
        self.stage2_optimizer = stage2_optimizer
        self.stage2_optimizer.build([self.classifier.kernel])
        set_lr_multipliers(self.stage2_optimizer, self.lr_multipliers())

    def region_losses(self, images, labels) -> tuple[tf.Tensor, tf.Tensor]:
        """Stage II's ``(CRR, FRR)`` for a batch of whole class sets, averaged over the global batch."""
        original = self.features(images, training=False)["cam"]
        # Normalized at feature resolution, then upsampled (the official order).
        maps = minmax_normalize(class_channel(self.cams(original), labels))
        maps = ops.image.resize(maps[..., None], ops.shape(images)[1:3], interpolation="bilinear")[..., 0]
        masked = self.features(self.mask_images(images, maps), training=False)["cam"]
        f, f_o = ops.mean(masked, axis=(1, 2)), ops.mean(original, axis=(1, 2))
        return replica_mean(crr_per_set(f, self.set_size)), replica_mean(frr_per_image(f, f_o))

    def _kernel_gradient_norm(self, gradient, optimizer) -> tf.Tensor:
        """The norm of a loss's gradient on the classifier kernel, the loss scale of ``optimizer`` removed."""
        scale = optimizer.scale_loss(1.0)  # 1 unless a LossScaleOptimizer scales the loss
        return ops.sqrt(ops.sum(ops.square(ops.cast(gradient, "float32")))) / ops.cast(scale, "float32")

    def stage1_step(self, images, labels) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Stage I: cross-entropy, every trainable weight stepped. Returns (loss, logits, CE gradient norm)."""
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = self.classification_loss(labels, logits)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        grads = tape.gradient(scaled, variables)
        kernel_index = next(i for i, v in enumerate(variables) if v is self.classifier.kernel)
        norm = self._kernel_gradient_norm(grads[kernel_index], self.optimizer)
        self.optimizer.apply(grads, variables)
        return loss, logits, norm

    def stage2_step(self, images, labels) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Stage II: CRR and FRR, the classifier kernel stepped (see ``stage2_regime``).

        Returns ``(loss, CRR, FRR, |grad CRR|, |grad FRR|)``, the norms of each
        weighted regularizer's gradient on the kernel (diagnostics).
        """
        kernel = self.classifier.kernel
        optimizer = self.stage2_optimizer
        with tf.GradientTape(persistent=True) as tape:
            crr, frr = self.region_losses(images, labels)
            weighted = [optimizer.scale_loss(self.lambda_crr * crr), optimizer.scale_loss(self.lambda_frr * frr)]
        grad_crr, grad_frr = (tape.gradient(term, kernel) for term in weighted)
        del tape
        grad = grad_crr + grad_frr
        if self.stage2_regime == "shared_zero_grads":
            variables = self.trainable_variables
            optimizer.apply([grad if v is kernel else ops.zeros_like(v) for v in variables], variables)
        else:
            optimizer.apply([grad], [kernel])
        norms = [self._kernel_gradient_norm(g, optimizer) for g in (grad_crr, grad_frr)]
        return self.lambda_crr * crr + self.lambda_frr * frr, crr, frr, *norms

    def train_step(self, data):
        images, labels = data[0], data[1]
        tf.debugging.assert_equal(
            tf.shape(images)[0] % self.set_size,
            0,
            message=f"a batch is not whole sets of set_size={self.set_size}; use pipeline.class_set_dataset "
            "(with sets_per_batch divisible by the number of replicas)",
        )
        loss, logits, grad_ce = self.stage1_step(images, labels)
        stage2, crr, frr, grad_crr, grad_frr = self.stage2_step(images, labels)
        parts = {
            "crr": crr,
            "frr": frr,
            "stage2_loss": stage2,
            "grad_ce": grad_ce,
            "grad_crr": grad_crr,
            "grad_frr": grad_frr,
        }
        return self._update_metrics(loss, labels, logits, parts)
