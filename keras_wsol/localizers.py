"""Post-hoc localizers: CAM, GradCAM, GradCAM++, PCS and BagCAMs on any layer of any Keras classifier.

One base class, :class:`Localizer`, holds the shared machinery: it finds the
layer, runs one batched forward pass under a ``GradientTape`` (compiled with
``tf.function``), takes the gradient ``G`` of the class score with respect to
the layer's features ``Z`` and hands ``(Z, G)`` to :meth:`Localizer.weigh`,
the one method each variant overrides. Maps are ReLU'd by the variant where
it says so, upsampled bilinearly (half-pixel centres) and min-max normalized
per image.

The formulas follow BagCAMs (Zhu et al., ECCV 2022), Eq. 12 and Table 1, with
the choices of its official implementation as defaults:

* ``bagcams``: ``G = d log(s_k) / dZ`` with ``s_k`` the raw logit of class
  ``k`` (the logit gradient divided by the logit), gradients clamped at zero
  at every ReLU between the layer and the logits (guided backpropagation),
  ``map = sum_c ReLU((1 + mean_m (G*Z)_c) * (G*Z)_c)``.
* ``gradcam``: raw-logit gradient, ``ReLU(sum_c mean_m(G_c) Z_c)``.
* ``gradcam_pp``: ``alpha = G^2 / (2 G^2 + sum_m Z G^3)``, weights
  ``sum_m alpha * ReLU(exp(s_k) G)``, ``ReLU(sum_c w_c Z_c)``. The factor
  ``exp(s_k)`` is one positive number per image, so it only scales the map
  and disappears in the min-max normalization; it is left out, which also
  avoids ``exp`` overflowing for logits above ~88.
* ``pcs``: ``ReLU(sum_c G_c Z_c)``.
* ``cam``: ``sum_c mean_m(G_c) Z_c`` without ReLU, which is Zhou et al.'s CAM
  up to a positive factor when the layer feeds GAP and a linear classifier.
  On a :class:`~keras_wsol.methods.base.WSOLModel` at its classifier layer it
  is the model's own map (``logits_and_class_maps``), so methods whose maps
  differ from plain CAM keep them.

Options: ``score="softmax"`` differentiates the softmax probability (its log
for BagCAMs) instead of the raw logit; ``guided`` switches guided
backpropagation on or off for any variant (on by default for BagCAMs only).

Non-positive logits: ``log(s_k)`` is undefined for ``s_k <= 0``. The
gradient of ``log(s_k)`` is computed as ``dS_k/dZ / max(s_k, eps)`` with
``eps = 1e-6``: for a positive logit this is exact, and a non-positive one is
treated as the limit ``s_k -> 0+`` (the map becomes
``sum_c ReLU(mean(GZ)_c (GZ)_c)`` up to scale). Maps stay finite.

Example:
    >>> import keras, numpy as np
    >>> inputs = keras.Input((16, 16, 3))
    >>> x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inputs)
    >>> logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    >>> model = keras.Model(inputs, logits)
    >>> images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    >>> compute_scoremaps(model, images, "bagcams", layer="feat").shape
    (2, 16, 16)
"""

from __future__ import annotations

import functools
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_wsol.maps import predicted_where_negative, upsample_normalized
from keras_wsol.model_protocol import (
    LocalizableModel,
    all_operations,
    classifier_layer,
    default_layer,
    find_layer,
    logits_model,
    output_rank,
    token_grid,
)

SCORES = ("logit", "softmax")
LOG_EPS = 1e-6
_MISSING = object()


@tf.custom_gradient
def _positive_gradient(x):
    """Identity forward; the gradient flowing back is clamped at zero (guided ReLU)."""
    return x, tf.nn.relu


def _ends_in_relu(op) -> bool:
    """Whether ``op``'s output is a ReLU (a ReLU layer, a relu activation, a ``keras.ops.relu`` node)."""
    if isinstance(op, keras.Model):
        return False
    if isinstance(op, keras.layers.ReLU) or type(op).__name__ in ("Relu", "Relu6"):
        return True
    return getattr(getattr(op, "activation", None), "__name__", "") in ("relu", "relu6")


class _Hooks:
    """While active (during tracing), wrap ``call`` of chosen ops.

    Every ReLU's output goes through :func:`_positive_gradient` when
    ``guided`` (clamping the gradient at the ReLU output, then the ReLU's own
    mask, is the official code's ``relu(grad_in)``), and the output of
    ``capture`` is recorded after that, so the gradient read at the layer is
    the one arriving from above, as a backward hook sees it.
    """

    def __init__(self, model, capture=None, guided=False):
        self.targets = {}
        for op in all_operations(model):
            relu = guided and _ends_in_relu(op)
            if relu or op is capture:
                self.targets[id(op)] = (op, relu, op is capture)
        self.captured = []

    def _wrap(self, call, relu, capture):
        def wrapped(*args, **kwargs):
            out = call(*args, **kwargs)
            if relu:
                out = _positive_gradient(out)
            if capture:
                self.captured.append(out)
            return out

        return wrapped

    def __enter__(self):
        self.saved = []
        for op, relu, capture in self.targets.values():
            self.saved.append((op, op.__dict__.get("call", _MISSING)))
            op.call = self._wrap(op.call, relu, capture)
        return self

    def __exit__(self, *exc):
        for op, original in self.saved:
            if original is _MISSING:
                del op.call
            else:
                op.call = original


class Localizer:
    """Score maps of one localization rule at one layer of ``model``; subclasses override :meth:`weigh`.

    Args:
        model: a Keras model mapping images to class logits, or a WSOLModel.
        layer: layer name (``low``/``mid``/``high``/``cam`` taps on a
            WSOLModel); ``None`` for :func:`default_layer`.
        score: ``"logit"`` (raw logits, the official choice) or ``"softmax"``.
        guided: clamp gradients at every ReLU above the layer; ``None`` for
            the method's default (on for BagCAMs only).
        target: instead of one class's score, a callable ``target(logits) ->
            [B]`` whose gradient the map follows (a sum of classes, a margin,
            a regression output); class ids are then not used. Gradient
            localizers only: ``cam`` is a class's own map.
        reshape: for a layer of tokens ``[B, N, C]`` (a vision transformer's
            block), a callable laying them out as ``[B, h, w, C]``; default
            :func:`token_grid` (drop the leading class/register tokens, a
            square grid).

    Calling it on a batch gives maps ``[B, H, W]`` in ``[0, 1]`` at the input
    size; :meth:`raw_maps` gives the maps at feature resolution and the logits.
    """

    name = ""
    log_score = False
    guided_default = False

    def __init__(
        self,
        model,
        layer: str | None = None,
        score: str = "logit",
        guided: bool | None = None,
        target=None,
        reshape=None,
    ):
        if score not in SCORES:
            raise ValueError(f"score={score!r}; choose one of {', '.join(SCORES)}")
        if target is not None and (not callable(target) or score != "logit"):
            raise ValueError(
                "target: a callable taking the logits [B, K] and returning one score per image [B] (it replaces "
                "the class id and score='softmax': apply a softmax inside it if wanted)"
            )
        self.target = target
        self.reshape = reshape or token_grid
        model = logits_model(model)
        if getattr(model, "class_agnostic_maps", False) and self.name != "cam":
            raise ValueError(
                f"{type(model).__name__} maps are class-agnostic (its own, e.g. ORNet's p^a): use the cam "
                f"localizer; {self.name} needs a class map at a feature layer"
            )
        outputs = getattr(model, "outputs", None) or []  # known for functional models; checked again when traced
        if len(outputs) > 1:
            raise ValueError(
                f"{model.name} has {len(outputs)} outputs; a localizer needs one [batch, classes] output: "
                f"pass keras.Model(model.inputs, <the class scores output>)"
            )
        self.model = model
        self.layer = layer or default_layer(model)
        self.score = score
        self.guided = self.guided_default if guided is None else bool(guided)
        if not self.supports(model, self.layer):
            raise ValueError(self.unsupported(model, self.layer))
        self._is_tap = isinstance(model, LocalizableModel) and self.layer in model.tap_names
        self._target = None if self._is_tap else find_layer(model, self.layer)
        self.num_classes = getattr(model, "num_classes", None) or (outputs[0].shape[-1] if outputs else None)
        if self._target is not None and output_rank(self._target) not in (0, 3, 4):
            raise ValueError(
                f"layer {self.layer!r} outputs shape {tuple(self._target.output.shape)}: a localizer needs a 4-D "
                f"[batch, h, w, channels] feature map or [batch, tokens, channels] tokens "
                f"(e.g. {default_layer(model)!r})"
            )
        # A partial (no __code__) so TensorFlow keys its retracing warning to
        # this localizer, not to the method shared by all of them.
        self._raw = tf.function(functools.partial(type(self)._raw_maps, self), reduce_retracing=True)

    @classmethod
    def supports(cls, model, layer: str) -> bool:
        """Whether this localizer is defined for ``model`` at ``layer`` (the one place such a rule lives)."""
        return True

    @classmethod
    def unsupported(cls, model, layer: str) -> str:
        """Why :meth:`supports` is false, and what to do."""
        return f"{cls.name} is not defined at layer {layer!r} of {model.name}"

    def weigh(self, features: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
        """Maps ``[B, h, w]`` from features and gradients ``[B, h, w, C]`` (float32)."""
        raise NotImplementedError

    def _forward(self, images, hooks: _Hooks):
        """Logits and the layer's features, from one forward pass (inside the tape)."""
        if self._is_tap:
            logits, taps = self.model.logits_and_features(images, training=False)
            return logits, taps[self.layer]
        logits = self.model(images, training=False)
        if not hasattr(logits, "shape"):  # a dict, list or tuple of outputs
            raise ValueError(
                f"{self.model.name} returns a {type(logits).__name__}; a localizer needs one [batch, classes] "
                "output: wrap it, e.g. keras.Model(model.inputs, model.outputs[0]) or a model returning the logits"
            )
        if len(logits.shape) != 2:
            raise ValueError(
                f"{self.model.name} outputs shape {tuple(logits.shape)}; a localizer needs [batch, classes]"
            )
        if len(hooks.captured) != 1:
            raise ValueError(
                f"layer {self.layer!r} ran {len(hooks.captured)} times in one forward pass; need exactly once"
            )
        if len(hooks.captured[0].shape) not in (3, 4):
            raise ValueError(
                f"layer {self.layer!r} outputs shape {tuple(hooks.captured[0].shape)}: a localizer needs a 4-D "
                "[batch, h, w, channels] feature map or [batch, tokens, channels] tokens"
            )
        return logits, hooks.captured[0]

    def _target_score(self, logits, class_ids):
        """The differentiated score per image; for ``log_score``, the factor that turns its gradient into d log s."""
        logits = ops.cast(logits, "float32")
        if self.target is not None:
            s = ops.cast(self.target(logits), "float32")
            if len(s.shape) != 1:
                raise ValueError(f"target returned shape {tuple(s.shape)}; one score per image, [batch]")
            return s, (1.0 / ops.maximum(s, LOG_EPS) if self.log_score else None)
        picked = lambda t: ops.take_along_axis(t, ops.reshape(class_ids, (-1, 1)), axis=1)[:, 0]  # noqa: E731
        if self.score == "softmax":
            if self.log_score:
                return picked(tf.nn.log_softmax(logits)), None
            return picked(tf.nn.softmax(logits)), None
        s = picked(logits)
        return s, (1.0 / ops.maximum(s, LOG_EPS) if self.log_score else None)

    def _raw_maps(self, images, class_ids):
        """Class id -1 means "the predicted class" (one traced signature for both)."""
        images = ops.cast(images, "float32")
        hooks = _Hooks(self.model, capture=self._target, guided=self.guided)
        with hooks, tf.GradientTape() as tape:
            logits, features = self._forward(images, hooks)
            classes = tf.shape(logits)[-1]
            tf.debugging.assert_equal(
                tf.shape(class_ids)[0], tf.shape(logits)[0], message="class_ids: one id per image"
            )
            tf.debugging.assert_less(class_ids, classes, message="class_ids: beyond the model's classes")
            tf.debugging.assert_greater_equal(class_ids, -1, message="class_ids: below -1 (-1: the predicted class)")
            class_ids = predicted_where_negative(class_ids, logits)
            score, log_factor = self._target_score(logits, class_ids)
        # Images are independent in inference mode, so the gradient of the
        # sum is each image's own gradient.
        grads = ops.cast(tape.gradient(score, features), "float32")
        features = ops.cast(features, "float32")
        if len(features.shape) == 3:  # tokens: the patch tokens laid out on their grid
            features, grads = self.reshape(features), self.reshape(grads)
        if log_factor is not None:
            grads = grads * log_factor[:, None, None, None]
        return self.weigh(features, grads), logits

    def raw_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(maps [B, h, w] at feature resolution, logits [B, K])``; one compiled tape pass.

        ``class_ids``: one integer per image in ``[0, K)``, or -1 for the
        predicted class; one integer for every image; None: predicted.
        """
        images = tf.convert_to_tensor(images)
        return self._raw(images, self.class_id_tensor(images, class_ids))

    def class_id_tensor(self, images: tf.Tensor, class_ids) -> tf.Tensor:
        """``class_ids`` checked against the model's classes, as int32 ``[B]`` (-1: the predicted class)."""
        if class_ids is None:
            class_ids = -1
        if not tf.is_tensor(class_ids):
            ids = np.asarray(class_ids)
            if ids.dtype.kind not in "iu" and not (ids.dtype.kind == "f" and np.all(ids == np.round(ids))):
                raise ValueError(f"class_ids must be integers, got {ids.dtype} values")
            if ids.ndim > 1 or (ids.ndim == 1 and images.shape[0] is not None and len(ids) != images.shape[0]):
                raise ValueError(f"class_ids has shape {ids.shape}; one id per image: ({images.shape[0]},)")
            wrong = ids[(ids < -1) | (ids >= (self.num_classes or np.inf))]
            if wrong.size:
                raise ValueError(
                    f"class_ids {sorted(set(wrong.tolist()))[:5]} outside [0, {self.num_classes}) "
                    f"(-1: the predicted class); {self.model.name} has {self.num_classes} classes"
                )
            class_ids = tf.fill(tf.shape(images)[:1], int(ids)) if ids.ndim == 0 else ids
        elif not class_ids.dtype.is_integer:  # a float tensor's values cannot be checked before the cast
            raise ValueError(f"class_ids must be integers, got {class_ids.dtype.name}")
        return tf.cast(class_ids, tf.int32)

    def __call__(self, images, class_ids=None) -> tf.Tensor:
        return upsample_normalized(self.raw_maps(images, class_ids)[0], ops.shape(images)[1:3])


class CAMLocalizer(Localizer):
    """Class activation mapping: channel weights are the spatially averaged gradient, no ReLU."""

    name = "cam"

    def __init__(self, model, layer: str | None = None, target=None, **options):
        if target is not None:
            raise ValueError("cam maps one class by its classifier weights; a target needs a gradient localizer")
        super().__init__(model, layer, **options)
        # A model that computes its own class maps (a WSOLModel: each method's maps) gives them; else the
        # gradient form below, which is CAM for a GAP + linear classifier.
        self._own_maps = self._is_tap and hasattr(model, "logits_and_class_maps")

    @classmethod
    def supports(cls, model, layer: str) -> bool:
        """CAM weighs features by the classifier's kernel: at the classifier's input only, where a model names it."""
        return not isinstance(model, LocalizableModel) or layer in model.classifier_taps

    @classmethod
    def unsupported(cls, model, layer: str) -> str:
        return (
            f"cam is defined at the classifier's input only (layer {classifier_layer(model)!r}), not {layer!r}; "
            "use gradcam, gradcam_pp, pcs or bagcams for other layers"
        )

    def _raw_maps(self, images, class_ids):
        if self._own_maps:
            logits, maps = self.model.logits_and_class_maps(ops.cast(images, "float32"), class_ids)
            return ops.cast(maps, "float32"), logits
        return super()._raw_maps(images, class_ids)

    def weigh(self, features, grads):
        return ops.einsum("bhwc,bc->bhw", features, ops.mean(grads, axis=(1, 2)))


class GradCAM(Localizer):
    """Selvaraju et al.: channel weights are the spatially averaged gradient."""

    name = "gradcam"

    def weigh(self, features, grads):
        return ops.relu(ops.einsum("bhwc,bc->bhw", features, ops.mean(grads, axis=(1, 2))))


class GradCAMPlusPlus(Localizer):
    """Chattopadhyay et al.: channel weights are alpha-weighted positive gradients."""

    name = "gradcam_pp"

    def weigh(self, features, grads):
        g2 = ops.square(grads)
        denom = 2.0 * g2 + ops.sum(features * g2 * grads, axis=(1, 2), keepdims=True)
        alpha = g2 / (ops.where(denom != 0.0, denom, 1.0) + 1e-7)
        weights = ops.sum(alpha * ops.relu(grads), axis=(1, 2))
        return ops.relu(ops.einsum("bhwc,bc->bhw", features, weights))


class PCS(Localizer):
    """Pixel-level class selection (Tan et al.): ``ReLU(sum_c G Z)``, Table 1 of BagCAMs."""

    name = "pcs"

    def weigh(self, features, grads):
        return ops.relu(ops.sum(features * grads, axis=-1))


class BagCAMs(Localizer):
    """Bagging regional localizers (Eq. 12 of BagCAMs, as in its official code).

    ``G`` is the gradient of ``log s_k``; the product ``G*Z`` averaged over
    positions gives each channel's bagging weight ``1 + mean``; a per-channel
    ReLU precedes the channel sum.
    """

    name = "bagcams"
    log_score = True
    guided_default = True

    def weigh(self, features, grads):
        product = features * grads
        return ops.sum(ops.relu((1.0 + ops.mean(product, axis=(1, 2), keepdims=True)) * product), axis=-1)


LOCALIZERS: dict[str, type[Localizer]] = {c.name: c for c in (CAMLocalizer, GradCAM, GradCAMPlusPlus, PCS, BagCAMs)}
LAYER_FUSIONS = ("max", "mean")


class LayerFusion:
    """One localizer at several layers: each layer's map min-max normalized at the input size, then fused.

    ``fusion="max"`` keeps, per pixel, the strongest layer's evidence (a
    part one layer sees is kept); ``"mean"`` averages them (a consensus). The
    fused map is min-max normalized again. Every layer explains the same
    class: the predicted one is taken from the first layer's pass. The raw
    maps are at the input resolution, so the protocol's resizing is the same
    as for any map.

    Example:
        >>> from keras_wsol.methods import CAM
        >>> model = CAM(num_classes=2, backbone="small", image_size=32)
        >>> fused = get_localizer(model, "gradcam", "mid,high")
        >>> fused.layer, tuple(fused(np.zeros((2, 32, 32, 3), "float32")).shape)
        ('mid,high', (2, 32, 32))
    """

    def __init__(self, parts: list[Localizer], fusion: str = "max"):
        if fusion not in LAYER_FUSIONS:
            raise ValueError(f"fusion={fusion!r}; choose one of {', '.join(LAYER_FUSIONS)}")
        if len(parts) < 2 or len({p.layer for p in parts}) != len(parts):
            raise ValueError(f"layers {[p.layer for p in parts]}: give two or more different layers to fuse")
        self.parts, self.fusion = list(parts), fusion
        first = self.parts[0]
        self.model, self.name, self.num_classes = first.model, first.name, first.num_classes
        self.layer = ",".join(p.layer for p in self.parts)
        self._fused = tf.function(self._fused_maps, reduce_retracing=True)

    def _fused_maps(self, images, class_ids):
        first, logits = self.parts[0]._raw_maps(images, class_ids)
        class_ids = predicted_where_negative(class_ids, logits)  # every layer explains the first one's class
        size = ops.shape(images)[1:3]
        maps = [upsample_normalized(first, size)]
        maps += [upsample_normalized(part._raw_maps(images, class_ids)[0], size) for part in self.parts[1:]]
        stacked = ops.stack(maps, axis=0)
        fused = ops.max(stacked, axis=0) if self.fusion == "max" else ops.mean(stacked, axis=0)
        return upsample_normalized(fused, size), logits

    def raw_maps(self, images, class_ids=None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(fused maps [B, H, W] at the input size, logits [B, K])``; one compiled pass over every layer."""
        images = tf.convert_to_tensor(images)
        return self._fused(images, self.parts[0].class_id_tensor(images, class_ids))

    def __call__(self, images, class_ids=None) -> tf.Tensor:
        return self.raw_maps(images, class_ids)[0]


def get_localizer(
    model, localizer: str, layer: str | None = None, fusion: str = "max", **options
) -> Localizer | LayerFusion:
    """The localizer named ``localizer`` (:data:`LOCALIZERS`) for ``model`` at ``layer``; ``options`` are
    ``score``, ``guided``, ``target`` and ``reshape``.

    ``layer`` may name several layers, comma-separated (``"mid,high"``): their
    maps are fused by ``fusion`` (:class:`LayerFusion`).
    """
    if localizer not in LOCALIZERS:
        raise ValueError(f"unknown localizer {localizer!r}; choose one of {', '.join(LOCALIZERS)}")
    if layer and "," in layer:
        names = [name.strip() for name in layer.split(",")]
        return LayerFusion([LOCALIZERS[localizer](model, name, **options) for name in names], fusion)
    return LOCALIZERS[localizer](model, layer, **options)


# The localizers compute_scoremaps has built, per model: a call on a new batch reuses the compiled pass.
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cached_localizer(model, localizer: str, layer: str | None = None, **options) -> Localizer:
    """:func:`get_localizer`, built once per model, localizer, layer and options and then reused.

    Example:
        >>> from keras_wsol.methods import CAM
        >>> model = CAM(num_classes=2, backbone="small", image_size=32)
        >>> cached_localizer(model, "gradcam", "mid") is cached_localizer(model, "gradcam", "mid")
        True
    """
    key = (localizer, layer, tuple(sorted(options.items())))
    built = _CACHE.setdefault(model, {})
    if key not in built:
        built[key] = get_localizer(model, localizer, layer, **options)
    return built[key]


def compute_scoremaps(
    model, images, localizer: str, layer: str | None = None, class_ids=None, batch_size: int = 32, **options
) -> np.ndarray:
    """Score maps ``[B, H, W]`` in ``[0, 1]`` at the input size, for ``class_ids`` (default: predicted).

    The localizer is built and compiled on the first call for a model, localizer,
    layer and options, and reused by later calls (:func:`cached_localizer`),
    so calling this once per batch costs one compiled pass per batch.

    Example:
        >>> from keras_wsol.methods import CAM
        >>> model = CAM(num_classes=2, backbone="small", image_size=32)
        >>> compute_scoremaps(model, np.zeros((3, 32, 32, 3), "float32"), "gradcam", layer="mid").shape
        (3, 32, 32)
    """
    built = cached_localizer(model, localizer, layer, **options)
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [batch, height, width, channels], got shape {images.shape}")
    if np.ndim(class_ids) == 1 and len(class_ids) != len(images):
        raise ValueError(f"{len(class_ids)} class_ids for {len(images)} images; one id per image, or one for all")
    out = []
    for start in range(0, len(images), batch_size):
        ids = class_ids if np.ndim(class_ids) == 0 else np.asarray(class_ids)[start : start + batch_size]
        out.append(np.asarray(built(images[start : start + batch_size], ids)))
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:3], np.float32)
