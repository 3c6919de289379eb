"""MinMaxCAM (Wang et al., BMVC 2021): Common and Full Region Regularization, two stages per mini-batch.

Every batch holds N classes x S images, consecutive by set
(:func:`keras_wsol.data.pipeline.class_set_dataset`). ``train_step`` runs:

* **Stage I**: cross-entropy on the whole batch; every trainable weight is
  stepped by ``optimizer``.
* **Stage II** on the same batch, with the weights stage I just produced: the
  backbone (and the extra head, if any) in inference mode and frozen; the CAM
  ``H`` of each image for its ground-truth class from the classifier kernel
  (Eq. 1, no bias), min-max normalized per image and upsampled bilinearly to
  the input; ``f = GAP(B*(I * H))`` and ``f_o = GAP(B*(I))`` (a constant);
  ``L = lambda_crr * CRR + lambda_frr * FRR`` (Eq. 2, 3, 5). Gradients reach
  the classifier kernel only through ``H``; only the kernel is stepped, by
  the stage-II optimizer (a fresh copy of ``optimizer``, or the run's
  ``make_optimizer(stage2_kind, stage2_learning_rate)``), so no weight
  decay or momentum touches the frozen weights.

Choices the paper leaves open, taken from the official code: ``I * H`` is
applied to the tensor the backbone sees after its preprocessing (a masked
pixel becomes the preprocessing's zero point, see ``WSOLModel.mask_images``);
the squared distances are averaged over feature channels (``MSELoss``);
CRR and FRR are averaged over the sets of the batch. A later
reimplementation used 12 sets and lambda_frr = 10.

Example:
    >>> import numpy as np, keras
    >>> model = MinMaxCAM(num_classes=2, backbone="small", image_size=32, set_size=2)
    >>> model.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> x = np.zeros((4, 32, 32, 3), "float32")
    >>> sorted(model.train_on_batch(x, np.array([0, 0, 1, 1]), return_dict=True))
    ['accuracy', 'crr', 'frr', 'loss', 'stage2_loss']
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
            aliases=("lambda_crr",),
        ),
        HyperParameter(
            "lambda_frr",
            1.0,
            "weight of Full Region Regularization (Eq. 5); the paper's Fig. 6 peaks at 10 for VGG16",
            "official train.py:183 (--w_loss_ori)",
            minimum=0,
            aliases=("lambda_frr",),
        ),
        HyperParameter(
            "stage2_kind",
            "same",
            "stage II optimizer: a fresh copy of the run's, or SGD",
            "our reading: the paper says only that stage II updates fc",
            choices=("same", "sgd"),
            aliases=("stage2_optimizer",),
        ),
        HyperParameter(
            "stage2_learning_rate",
            None,
            "stage II peak learning rate; none: the run's",
            "our reading: the paper gives one learning rate",
            kind=float,
            minimum=0,
            aliases=("stage2_learning_rate",),
        ),
    )
    uses_class_sets = True
    # Stage I: forward + backward; stage II: forward on I (H and f_o), forward on I * H, backward
    # through that pass to the input (H) and the kernel.
    train_passes = 5

    def create_method_state(self) -> None:
        self.add_part_trackers("crr", "frr", "stage2_loss")

    def compile(self, optimizer="adam", make_optimizer=None, stage2_optimizer=None, **kwargs):
        """As ``WSOLModel.compile``; ``stage2_optimizer`` (else ``make_optimizer``'s, else a copy) steps stage II."""
        super().compile(optimizer=optimizer, **kwargs)
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

    def stage1_step(self, images, labels) -> tuple[tf.Tensor, tf.Tensor]:
        """Stage I: cross-entropy, every trainable weight stepped by ``optimizer``. Returns (loss, logits)."""
        with tf.GradientTape() as tape:
            logits = self(images, training=True)
            loss = self.classification_loss(labels, logits)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss, logits

    def stage2_step(self, images, labels) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Stage II: CRR and FRR, the classifier kernel alone stepped by the stage-II optimizer."""
        kernel = self.classifier.kernel
        with tf.GradientTape() as tape:
            crr, frr = self.region_losses(images, labels)
            loss = self.lambda_crr * crr + self.lambda_frr * frr
            scaled = self.stage2_optimizer.scale_loss(loss)
        self.stage2_optimizer.apply(tape.gradient(scaled, [kernel]), [kernel])
        return loss, crr, frr

    def train_step(self, data):
        images, labels = data[0], data[1]
        tf.debugging.assert_equal(
            tf.shape(images)[0] % self.set_size,
            0,
            message=f"a batch is not whole sets of set_size={self.set_size}; use pipeline.class_set_dataset "
            "(with sets_per_batch divisible by the number of replicas)",
        )
        loss, logits = self.stage1_step(images, labels)
        stage2, crr, frr = self.stage2_step(images, labels)
        return self._update_metrics(loss, labels, logits, {"crr": crr, "frr": frr, "stage2_loss": stage2})
