"""``WSOLModel``: backbone + CAM head, the base every method subclasses.

``call`` returns logits (and class activation maps when asked);
``class_maps`` gives the raw map of one class per image at feature
resolution (what the protocol resizes); ``localization_maps`` gives it
resized to the input and min-max normalized, in the graph. ``train_step`` is
plain cross-entropy, following the keras.io custom-``fit`` idiom; methods
override it (and ``class_maps`` where their maps differ).

Example:
    >>> import numpy as np
    >>> model = WSOLModel(num_classes=3, backbone="small", image_size=32)
    >>> logits, maps = model(np.zeros((2, 32, 32, 3), "float32"), return_maps=True)
    >>> tuple(logits.shape), tuple(maps.shape)
    ((2, 3), (2, 4, 4, 3))
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.backbones import build_backbone
from keras_wsol.optimizers import set_lr_multipliers


def replica_mean(per_example: tf.Tensor) -> tf.Tensor:
    """Mean over the global batch: per-replica sum / (replica batch x replicas).

    Under ``tf.distribute`` the optimizer sums gradients over replicas, so
    each replica's loss is scaled by the global batch size.
    """
    per_example = ops.cast(per_example, "float32")
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return ops.sum(per_example) / ops.cast(ops.shape(per_example)[0] * replicas, "float32")


def minmax_normalize(maps: tf.Tensor) -> tf.Tensor:
    """Per-map ``(x - min) / (max - min)`` over the last two axes; constant or NaN maps give zeros."""
    maps = ops.cast(maps, "float32")
    low = ops.min(maps, axis=(-2, -1), keepdims=True)
    high = ops.max(maps, axis=(-2, -1), keepdims=True)
    span = high - low
    out = ops.where(span > 0, (maps - low) / ops.where(span > 0, span, 1.0), 0.0)
    return ops.where(ops.isnan(high), 0.0, out)


def predicted_where_negative(class_ids, logits) -> tf.Tensor:
    """``class_ids`` as int32, with ``None`` or negative entries replaced by the argmax of ``logits``."""
    predicted = ops.cast(ops.argmax(logits, axis=-1), "int32")
    if class_ids is None:
        return predicted
    class_ids = ops.cast(class_ids, "int32")
    return ops.where(class_ids < 0, predicted, class_ids)


def class_channel(maps: tf.Tensor, class_ids) -> tf.Tensor:
    """The map of one class per image: ``[B, h, w, C]`` -> ``[B, h, w]``."""
    return ops.take_along_axis(maps, ops.reshape(ops.cast(class_ids, "int32"), (-1, 1, 1, 1)), axis=-1)[..., 0]


def upsample_normalized(maps: tf.Tensor, size) -> tf.Tensor:
    """Raw maps ``[B, h, w]`` -> ``[B, H, W]``: bilinear (half-pixel centres), then per-map min-max.

    ``size`` may hold tensors (sizes known only when the graph runs).
    """
    maps = ops.cast(maps, "float32")[..., None]
    return minmax_normalize(tf.image.resize(maps, size, method="bilinear")[..., 0])


@keras.saving.register_keras_serializable(package="keras_wsol")
class WSOLModel(keras.Model):
    """A classifier whose class activation maps localize objects (the CAM baseline).

    Args:
        num_classes: number of classes.
        backbone: a name from ``keras_wsol.backbones.BACKBONES``.
        image_size: square input side in pixels.
        weights: backbone weights (``None``, ``"imagenet"`` or a path); not
            used again when a saved model is loaded.
        head_channels: if > 0, a 3x3 conv + ReLU of this width between the
            backbone and GAP (the 1024-channel head of VGG16 CAM).
        backbone_lr_multiplier: the backbone's learning rate relative to the
            new layers' (0.1 when fine-tuning ImageNet weights, as every paper
            here does: backbone 1e-4, new layers 1e-3); applied by ``compile``
            to every optimizer the model steps (:mod:`keras_wsol.optimizers`).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "small",
        image_size: int = 96,
        weights: str | None = None,
        head_channels: int = 0,
        backbone_lr_multiplier: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not backbone_lr_multiplier >= 0:
            raise ValueError(f"backbone_lr_multiplier={backbone_lr_multiplier}: a non-negative factor")
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.image_size = image_size
        self.weights_source = weights
        self.head_channels = head_channels
        self.backbone = build_backbone(backbone, (image_size, image_size, 3), weights, **self.backbone_options())
        self.head = (
            keras.layers.Conv2D(head_channels, 3, padding="same", activation="relu", name="cam_head")
            if head_channels
            else None
        )
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.classifier = keras.layers.Dense(num_classes, name="classifier")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        #: Mean trackers of a method's extra logged values, by name (``compute_losses``'s ``parts``).
        self.part_trackers: dict[str, keras.metrics.Mean] = {}
        self.create_method_state()
        # Create every variable now (one forward pass on zeros): weight loading
        # and BackupAndRestore need them before fit.
        self(ops.zeros((1, image_size, image_size, 3)))

    def backbone_options(self) -> dict:
        """Extra ``build_backbone`` arguments of a method (called by ``__init__``; plain attributes are set)."""
        return {}

    def create_method_state(self) -> None:
        """Create a method's own layers and metrics (called by ``__init__`` before the model is built)."""

    #: Whether training batches must be class sets (``pipeline.class_set_dataset``).
    uses_class_sets = False
    #: ``parts`` that hold one value for the whole batch on every replica (not a per-replica loss share).
    replica_constant_parts: tuple[str, ...] = ()
    #: Whether the maps are one per image, not per class (gradient localizers then have no class map to explain).
    class_agnostic_maps = False

    # -- forward -----------------------------------------------------------
    def features(self, images, training=False) -> dict:
        """The backbone taps plus ``"cam"``, the map the classifier sees."""
        taps = dict(self.backbone(images, training=training))
        taps["cam"] = self.head(taps["high"]) if self.head is not None else taps["high"]
        return taps

    def cams(self, feature_map, classifier: keras.layers.Dense | None = None) -> tf.Tensor:
        """Class activation maps ``[B, h, w, C]``: features weighted by a classifier's kernel (Eq. 1 of CAM).

        ``classifier`` defaults to the model's own (methods with two pass theirs).
        """
        kernel = (classifier or self.classifier).kernel
        return ops.einsum("bhwk,kc->bhwc", ops.cast(feature_map, "float32"), ops.cast(kernel, "float32"))

    def logits_and_features(self, images, training=False) -> tuple[tf.Tensor, dict]:
        """Logits and every feature tap (``low``, ``mid``, ``high``, ``cam``) of one forward pass.

        The taps are the tensors the logits were computed from, so gradients
        of the logits with respect to them are defined (post-hoc localizers).
        """
        taps = self.features(images, training=training)
        return self.classifier(self.gap(taps["cam"])), taps

    def call(self, images, training=False, return_maps=False):
        logits, taps = self.logits_and_features(images, training=training)
        if return_maps:
            return logits, self.cams(taps["cam"])
        return logits

    def logits_and_class_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Logits and the raw maps ``[B, h, w]`` of ``class_ids``.

        ``class_ids`` ``None`` (or a negative entry) means the predicted class.
        Methods whose maps differ from CAM override this one method.
        """
        logits, maps = self(images, training=False, return_maps=True)
        return logits, class_channel(maps, predicted_where_negative(class_ids, logits))

    def class_maps(self, images, class_ids=None) -> tf.Tensor:
        """Raw maps ``[B, h, w]`` of ``class_ids`` (default: the predicted class)."""
        return self.logits_and_class_maps(images, class_ids)[1]

    def localization_maps(self, images, class_ids=None) -> tf.Tensor:
        """Maps ``[B, H, W]`` at the input size (bilinear), min-max normalized per image."""
        return upsample_normalized(self.class_maps(images, class_ids), ops.shape(images)[1:3])

    def mask_images(self, images, maps) -> tf.Tensor:
        """``I * H`` as the backbone sees it: pixels pulled towards the value its preprocessing maps to 0.

        ``maps`` is ``[B, H, W]`` at the input size, in [0, 1]; a pixel with
        map 0 becomes the preprocessing's zero point (black for ``unit``
        preprocessing, the ImageNet mean for ``caffe``).
        """
        zero = ops.convert_to_tensor(self.backbone.get_layer("preprocess").zero_point, "float32")
        return zero + (ops.cast(images, "float32") - zero) * ops.cast(maps, "float32")[..., None]

    # -- training ------------------------------------------------------------
    def lr_multipliers(self) -> list[tuple[keras.Variable, float]]:
        """``(variable, learning-rate multiplier)`` pairs: the backbone's weights at ``backbone_lr_multiplier``."""
        return [(v, self.backbone_lr_multiplier) for v in self.backbone.trainable_variables]

    def compile(self, optimizer="rmsprop", **kwargs):
        """As ``keras.Model.compile``; the optimizer gets the model's parameter groups (:meth:`lr_multipliers`)."""
        super().compile(optimizer=optimizer, **kwargs)
        set_lr_multipliers(self.optimizer, self.lr_multipliers())

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy, *self.part_trackers.values()]

    def add_part_trackers(self, *names: str) -> None:
        """Create a Mean tracker for each extra value a method logs."""
        self.part_trackers.update({name: keras.metrics.Mean(name=name) for name in names})

    def classification_loss(self, labels, logits) -> tf.Tensor:
        """Cross-entropy averaged over the global batch, in float32."""
        per_example = keras.losses.sparse_categorical_crossentropy(labels, ops.cast(logits, "float32"), from_logits=True)
        return replica_mean(per_example)

    def _update_metrics(self, loss, labels, logits, parts: dict | None = None) -> dict:
        """Update loss, accuracy and the part trackers; returns the logs.

        Losses are per-replica shares of the global mean (``replica_mean``), so
        each is scaled by the replica count before the trackers average them.
        """
        strategy = tf.distribute.get_strategy()
        replicas = strategy.num_replicas_in_sync
        self.loss_tracker.update_state(loss * replicas)
        self.accuracy.update_state(labels, logits)
        logs = {m.name: m.result() for m in (self.loss_tracker, self.accuracy)}
        for name, value in (parts or {}).items():
            self.part_trackers[name].update_state(value if name in self.replica_constant_parts else value * replicas)
            logs[name] = self.part_trackers[name].result()
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras 3 averages multi-worker logs with strategy.reduce("MEAN", axis=0), which needs an
            # axis to reduce (keras-team/keras#20585): one-element vectors come out as scalars.
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """``(total loss, parts, logits)``: what ``train_step`` minimizes, its logged parts and the logits.

        The plain cross-entropy here; single-stage methods override this alone.
        """
        logits = self(images, training=training)
        return self.classification_loss(labels, logits), {}, logits

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras's pre-fit build, made to work under MultiWorkerMirroredStrategy.

        Keras 3 reduces the first distributed batch with
        ``strategy.reduce("MEAN", ...)`` to learn its shapes, which
        MultiWorkerMirroredStrategy cannot do eagerly ("Attempt to convert a
        value (PerReplica...)", keras-team/keras#20585). One replica's local
        batch has the shapes the build needs.
        """
        strategy = self._distribute_strategy
        if iterator is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x, next(it))
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def train_step(self, data):
        images, labels = data[0], data[1]
        with tf.GradientTape() as tape:
            loss, parts, logits = self.compute_losses(images, labels, training=True)
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(scaled, variables), variables)
        return self._update_metrics(loss, labels, logits, parts)

    def test_step(self, data):
        images, labels = data[0], data[1]
        logits = self(images, training=False)
        return self._update_metrics(self.classification_loss(labels, logits), labels, logits)

    # -- serialization ---------------------------------------------------------
    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "backbone": self.backbone_name,
            "image_size": self.image_size,
            "weights": self.weights_source,
            "head_channels": self.head_channels,
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
        }

    @classmethod
    def from_config(cls, config: dict):
        # The saved file carries the trained weights: never fetch or read the
        # original backbone weights again.
        return cls(**{**config, "weights": None})
