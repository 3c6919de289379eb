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

import contextvars
from typing import Any, Callable

import keras
import tensorflow as tf
from keras import ops

from keras_wsol.backbones import TAPS, build_backbone, check_backbone, pretrained
from keras_wsol.distribute import MultiWorkerFit, multi_worker_logs, replica_mean
from keras_wsol.maps import class_channel, predicted_where_negative, upsample_normalized
from keras_wsol.methods.hyperparameters import HyperParameter, docstring_section
from keras_wsol.optimizers import set_lr_multipliers

#: The constructor arguments that fix a WSOLModel's network (shared by every method).
ARCHITECTURE = ("num_classes", "backbone", "image_size", "head_channels")
#: Every constructor argument a WSOLModel saves besides a method's own (hyper-parameters, model inputs).
CONSTRUCTOR = (*ARCHITECTURE, "weights", "backbone_lr_multiplier", "input_statistics", "name", "dtype", "trainable")


_RESTORING = contextvars.ContextVar("keras_wsol_restoring", default=False)


def restoring() -> bool:
    """True while :meth:`WSOLModel.from_config` rebuilds a model whose weights will come from a saved file.

    Example:
        >>> restoring()
        False
    """
    return _RESTORING.get()


@keras.saving.register_keras_serializable(package="keras_wsol")
class WSOLModel(MultiWorkerFit, keras.Model):
    """A classifier whose class activation maps localize objects (the CAM baseline).

    Args:
        num_classes: number of classes.
        backbone: a name from ``keras_wsol.backbones.BACKBONES``, or a
            backbone object: a Keras model mapping ``[B, S, S, 3]`` RGB pixels
            in [0, 255] to ``{"low", "mid", "high"}`` feature maps (it
            normalizes its input itself and brings its own weights;
            :func:`keras_wsol.backbones.check_backbone`). Methods that reshape
            their backbone (CAMs2i's S2, CAM's ``keep_resolution_after``) need a
            name.
        image_size: square input side in pixels.
        weights: backbone weights (``None``, ``"imagenet"`` or a path); not
            used again when a saved model is loaded.
        head_channels: if > 0, a 3x3 conv + ReLU of this width between the
            backbone and GAP (the 1024-channel head of VGG16 CAM).
        backbone_lr_multiplier: the backbone's learning rate relative to the
            new layers' (0.1 when fine-tuning ImageNet weights, as every paper
            here does: backbone 1e-4, new layers 1e-3); applied by ``compile``
            to every optimizer the model steps (:mod:`keras_wsol.optimizers`).
        input_statistics: ``small`` backbone: ``(mean, std)`` RGB of the
            training data to standardize the input with, so masked pixels
            (``mask_images``, the preprocessing's zero point) take the dataset's
            mean colour, as the official codes' masks of normalized tensors do.
        **hyperparameters: the method's declared hyper-parameters (below, for
            a method class), and Keras' ``name``/``dtype``/``trainable``.
    """

    #: Registry name and flag prefix: ``--<method_name>_<hyper-parameter>``.
    method_name = "cam"
    #: The method's hyper-parameters, declared once (:mod:`keras_wsol.methods.hyperparameters`).
    hyperparameters: tuple[HyperParameter, ...] = ()
    #: Keras models a method is built around (ORNet's refinement: its evaluator): required constructor
    #: arguments (a model or its serialized config), set as attributes before :meth:`create_method_state`,
    #: saved in ``get_config`` and restored with the model.
    model_inputs: tuple[str, ...] = ()
    #: Forward plus backward passes over the batch in one train step (CAM: 1 + 1); the train-step
    #: benchmark's target for a method is 1.2x its ratio to CAM's.
    train_passes = 2

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("hyperparameters") and cls.__doc__:
            cls.__doc__ = cls.__doc__.rstrip() + "\n" + docstring_section(cls.hyperparameters)

    def __init__(
        self,
        num_classes: int,
        backbone: str | keras.Model = "small",
        image_size: int = 96,
        weights: str | None = None,
        head_channels: int = 0,
        backbone_lr_multiplier: float = 1.0,
        input_statistics: tuple | None = None,
        **kwargs,
    ):
        values = {p.name: kwargs.pop(p.name, p.default) for p in self.hyperparameters}
        missing = [name for name in self.model_inputs if name not in kwargs]
        if missing:
            raise TypeError(f"{type(self).__name__} needs the argument {', '.join(missing)} (a Keras model)")
        inputs = {name: kwargs.pop(name) for name in self.model_inputs}
        unknown = sorted(set(kwargs) - {"name", "dtype", "trainable"})
        if unknown:
            declared = ", ".join(p.name for p in self.hyperparameters) or "none"
            raise TypeError(
                f"{type(self).__name__} has no argument {', '.join(unknown)}; its hyper-parameters: {declared}"
            )
        super().__init__(**kwargs)
        for name, model in inputs.items():
            setattr(self, name, keras.saving.deserialize_keras_object(model) if isinstance(model, dict) else model)
        if not backbone_lr_multiplier >= 0:
            raise ValueError(f"backbone_lr_multiplier={backbone_lr_multiplier}: a non-negative factor")
        self.backbone_lr_multiplier = float(backbone_lr_multiplier)
        self.num_classes = num_classes
        # A backbone object is saved with the model (its config); a name is rebuilt from the name.
        self.backbone_is_object = not isinstance(backbone, str)
        self.backbone_name = (
            backbone.get("config", {}).get("name", "object")
            if isinstance(backbone, dict)
            else (backbone if isinstance(backbone, str) else backbone.name)
        )
        self.image_size = image_size
        self.weights_source = weights
        self.head_channels = head_channels
        self.input_statistics = (
            None if input_statistics is None else tuple(tuple(float(v) for v in part) for part in input_statistics)
        )
        for parameter in self.hyperparameters:
            setattr(self, parameter.name, parameter.convert(values[parameter.name]))
        self.check_hyperparameters()
        self.backbone = self._backbone(backbone, image_size, weights)
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

    def _backbone(self, backbone: str | keras.Model | dict, image_size: int, weights: str | None) -> keras.Model:
        """The backbone named by ``backbone``, or ``backbone`` itself (or its saved config), checked."""
        if isinstance(backbone, str):
            shape = (image_size, image_size, 3)
            return build_backbone(
                backbone, shape, weights, input_statistics=self.input_statistics, **self.backbone_options()
            )
        if isinstance(backbone, dict):  # a saved model's backbone object
            backbone = keras.saving.deserialize_keras_object(backbone)
        if self.input_statistics is not None:
            raise ValueError("input_statistics: a backbone object normalizes its input itself")
        if pretrained(weights):
            raise ValueError(f"weights={weights!r}: a backbone object brings its own weights; give weights=None")
        if self.backbone_options():
            raise ValueError(
                f"{type(self).__name__} reshapes its backbone ({', '.join(self.backbone_options())}): give a backbone "
                "name, not an object"
            )
        check_backbone(backbone, image_size)
        return backbone

    def set_inference_settings(self, settings: dict[str, Any]) -> None:
        """Give inference-only hyper-parameters (``HyperParameter.inference_only``) of a trained model new values.

        Values may be text as on a command line. Any other name is refused,
        naming the ones that can change: training depends on those.

        Example:
            >>> from keras_wsol.methods import CAMs2i
            >>> model = CAMs2i(num_classes=2, backbone="small", image_size=32, classifier_channels=8, inter_dim=4)
            >>> model.set_inference_settings({"fusion": "min"}); model.fusion
            'min'
        """
        declared = {p.name: p for p in self.hyperparameters}
        changeable = sorted(p.name for p in self.hyperparameters if p.inference_only)
        for name, value in settings.items():
            parameter = declared.get(name)
            if parameter is None or not parameter.inference_only:
                what = "is not a hyper-parameter of" if parameter is None else "changes training in"
                raise ValueError(
                    f"{name} {what} {type(self).__name__}; what can change on a trained model: "
                    f"{', '.join(changeable) or 'nothing'}"
                )
            setattr(self, name, parameter.parse(value) if isinstance(value, str) else parameter.convert(value))
        self.check_hyperparameters()
        self.predict_function = None  # traced with the old values

    def check_hyperparameters(self) -> None:
        """Checks across hyper-parameters, before anything is built (each one alone is checked by its declaration)."""

    @classmethod
    def from_arguments(cls, arguments: dict, load: Callable[[str], keras.Model]) -> WSOLModel:
        """The model a run trains, from constructor ``arguments``; the seam for methods trained in stages.

        ``load(name)`` returns the Keras model of the checkpoint that
        hyper-parameter ``name`` points to (the CLI names the flag in its
        errors). One-stage methods are ``cls(**arguments)``.
        """
        return cls(**arguments)

    @classmethod
    def variants(cls, deterministic: bool = False, **arguments) -> dict[str, Callable[[], WSOLModel]]:
        """Every model a run of this method can train (one per stage), by name, built from constructor ``arguments``.

        The contract tests and the train-step benchmark cover each one.
        ``deterministic=True`` switches off a method's random training
        transforms (so two devices can be compared step for step).
        """
        return {cls.method_name: lambda: cls(**arguments)}

    def optimizer_settings(self) -> dict:
        """The method's own defaults for the run's optimizer flags (``optimizer``, ``learning_rate``,
        ``lr_schedule``, ``lr_milestones``, ``momentum``, ``nesterov``, ``weight_decay``,
        ``coupled_weight_decay``); a flag given on the command line wins."""
        return {}

    #: Applies of the run's optimizer per training batch (its schedule counts every one).
    optimizer_steps_per_batch = 1

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

    # -- the localizers' model protocol (keras_wsol.model_protocol.LocalizableModel) ---------------------------
    #: The taps ``logits_and_features`` returns, low to high.
    tap_names = (*TAPS, "cam")

    @property
    def classifier_taps(self) -> tuple[str, ...]:
        """The classifier's input: ``cam`` (the extra head's output, or ``high`` itself, for which it is a synonym)."""
        return ("cam",) if self.head is not None else ("high", "cam")

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

    def compile(
        self, optimizer="rmsprop", make_optimizer: Callable[..., keras.optimizers.Optimizer] | None = None, **kwargs
    ):
        """As ``keras.Model.compile``; the optimizer gets the model's parameter groups (:meth:`lr_multipliers`).

        ``make_optimizer(kind="same", learning_rate=None)`` builds another
        optimizer of the run's settings, for methods that step some variables
        with one of their own (MinMaxCAM's stage II); others ignore it.
        """
        super().compile(optimizer=optimizer, **kwargs)
        set_lr_multipliers(self.optimizer, self.lr_multipliers())

    def compile_from_config(self, config: dict) -> None:
        """Recompile a loaded model through this class's ``compile`` (parameter groups, a method's optimizers)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy, *self.part_trackers.values()]

    def add_part_trackers(self, *names: str) -> None:
        """Create a Mean tracker for each extra value a method logs."""
        self.part_trackers.update({name: keras.metrics.Mean(name=name) for name in names})

    def classification_loss(self, labels, logits) -> tf.Tensor:
        """Cross-entropy averaged over the global batch, in float32."""
        per_example = keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(logits, "float32"), from_logits=True
        )
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
        return multi_worker_logs(logs)

    def compute_losses(self, images, labels, training=True) -> tuple[tf.Tensor, dict, tf.Tensor]:
        """``(total loss, parts, logits)``: what ``train_step`` minimizes, its logged parts and the logits.

        The plain cross-entropy here; single-stage methods override this alone.
        """
        logits = self(images, training=training)
        return self.classification_loss(labels, logits), {}, logits

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
            "backbone": keras.saving.serialize_keras_object(self.backbone)
            if self.backbone_is_object
            else self.backbone_name,
            "image_size": self.image_size,
            "weights": self.weights_source,
            "head_channels": self.head_channels,
            "backbone_lr_multiplier": self.backbone_lr_multiplier,
            "input_statistics": None if self.input_statistics is None else [list(p) for p in self.input_statistics],
            **{p.name: p.to_config(getattr(self, p.name)) for p in self.hyperparameters if p.saved},
            **{name: keras.saving.serialize_keras_object(getattr(self, name)) for name in self.model_inputs},
        }

    @classmethod
    def from_config(cls, config: dict):
        # The saved file carries the trained weights: never fetch or read the
        # original backbone weights (or a method's pretrained parts) again.
        token = _RESTORING.set(True)
        try:
            return cls(**{**config, "weights": None})
        finally:
            _RESTORING.reset(token)
