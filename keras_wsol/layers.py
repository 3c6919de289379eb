"""Reusable layers.

Example:
    >>> import numpy as np
    >>> float(Preprocess("tf")(np.full((1, 2, 2, 3), 255.0, "float32")).numpy().max())
    1.0
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

# keras.applications' "caffe" preprocessing (RGB -> BGR, this mean subtracted): fixed by the VGG16 and ResNet50
# weights, which were trained with it.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
# torchvision's ImageNet normalization (RGB mean and std of [0, 1] pixels, scaled to [0, 255]): fixed by the
# PyTorch weights that use it (EfficientNet-Lite0's, the "torch" mode).
TORCHVISION_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
TORCHVISION_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# The ImageNet pixel statistics this project uses wherever it chooses them (the complementary method's hide fill
# without dataset statistics, the small backbone's fallback for a stream): the mean is caffe's (the one the
# VGG16 and ResNet50 weights carry, in RGB), the std torchvision's (caffe has none).
IMAGENET_MEAN_RGB = tuple(reversed(CAFFE_MEAN_BGR))
IMAGENET_STD_RGB = TORCHVISION_STD_RGB


@keras.saving.register_keras_serializable(package="keras_wsol")
class Preprocess(keras.layers.Layer):
    """Map RGB pixels in [0, 255] to a backbone's input range, inside the graph.

    Modes: ``"tf"`` ([-1, 1], MobileNetV2/InceptionV3), ``"caffe"`` (BGR minus
    the ImageNet mean, VGG16/ResNet50), ``"torch"`` (RGB minus the ImageNet
    mean, divided by its std: torchvision's ``Normalize``, EfficientNet-Lite0's
    PyTorch weights), ``"unit"`` ([0, 1], the small backbone), ``"standardize"``
    (minus ``mean``, divided by ``std``: RGB in [0, 255] units, e.g. a
    dataset's statistics, so its zero point is the dataset's mean colour).
    """

    MODES = ("tf", "caffe", "torch", "unit", "standardize")

    def __init__(self, mode: str, mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {self.MODES}")
        if (mode == "standardize") != (mean is not None and std is not None):
            raise ValueError("mean and std (RGB) go with mode 'standardize', and only with it")
        if mode == "standardize" and (len(mean) != 3 or len(std) != 3 or min(std) <= 0):
            raise ValueError(f"mean={mean}, std={std}: three values each, std positive")
        self.mode = mode
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)

    @property
    def zero_point(self) -> tuple[float, float, float]:
        """The RGB pixel value this layer maps to 0.

        Preprocessing is affine per channel, so
        ``preprocess(z + (I - z) * H) == preprocess(I) * H``: masking an image
        around ``z`` is masking the tensor the network sees (MinMaxCAM's I * H
        on normalized inputs).
        """
        if self.mode == "tf":
            return (127.5, 127.5, 127.5)
        if self.mode == "unit":
            return (0.0, 0.0, 0.0)
        if self.mode == "torch":
            return TORCHVISION_MEAN_RGB
        if self.mode == "standardize":
            return self.mean
        return IMAGENET_MEAN_RGB

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "unit":
            return images / 255.0
        if self.mode in ("torch", "standardize"):
            statistics = (TORCHVISION_MEAN_RGB, TORCHVISION_STD_RGB) if self.mode == "torch" else (self.mean, self.std)
            mean, std = (ops.convert_to_tensor(v, self.compute_dtype) for v in statistics)
            return (images - mean) / std
        return images[..., ::-1] - ops.convert_to_tensor(CAFFE_MEAN_BGR, self.compute_dtype)

    def get_config(self) -> dict:
        extra = {"mean": list(self.mean), "std": list(self.std)} if self.mode == "standardize" else {}
        return {**super().get_config(), "mode": self.mode, **extra}


def _attention_dtype_cast(x):
    """Attention energies are sums over many positions or channels: computed in float32."""
    return ops.cast(x, "float32")


@keras.saving.register_keras_serializable(package="keras_wsol")
class ChannelAssistedAttention(keras.layers.Layer):
    """CAAM (Babar & Das, Eq. 1-6): channel attention between the features of two complementary inputs.

    ``Q_x = softmax(F_x F_x~^T)`` over ``C x C`` (rows), ``F_x^c = F_x +
    delta_x Q_x^T F_x~``; ``Q_x~`` is taken as ``Q_x^T`` (the paper's shortcut,
    Eq. 5) so ``F_x~^c = F_x~ + delta_x~ Q_x F_x``. ``delta_x`` and
    ``delta_x~`` start at 0, so the layer starts as the identity.

    Example:
        >>> import numpy as np
        >>> f = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
        >>> caam = ChannelAssistedAttention()
        >>> out_x, out_xt = caam(f, f[::-1])
        >>> bool(np.allclose(out_x, f))   # delta = 0 at the start
        True
    """

    def build(self, features_shape, complement_shape):
        self.delta_x = self.add_weight(shape=(), initializer="zeros", name="delta_x")
        self.delta_xt = self.add_weight(shape=(), initializer="zeros", name="delta_xt")

    def attentions(self, features, complement) -> tuple:
        """``(Q_x, Q_x~)``, each ``[B, C, C]``, ``Q_x~ = Q_x^T``."""
        f = _attention_dtype_cast(ops.reshape(features, (ops.shape(features)[0], -1, ops.shape(features)[-1])))
        ft = _attention_dtype_cast(ops.reshape(complement, (ops.shape(complement)[0], -1, ops.shape(complement)[-1])))
        q_x = ops.softmax(ops.einsum("bnc,bnd->bcd", f, ft), axis=-1)
        return q_x, ops.transpose(q_x, (0, 2, 1))

    def call(self, features, complement):
        q_x, q_xt = self.attentions(features, complement)
        # Y_x = Q_x^T F_x~ (Eq. 2), Y_x~ = Q_x~^T F_x (channels mix, positions stay).
        y_x = ops.einsum("bkc,bhwk->bhwc", q_x, _attention_dtype_cast(complement))
        y_xt = ops.einsum("bkc,bhwk->bhwc", q_xt, _attention_dtype_cast(features))
        out_x = _attention_dtype_cast(features) + self.delta_x * y_x
        out_xt = _attention_dtype_cast(complement) + self.delta_xt * y_xt
        return ops.cast(out_x, self.compute_dtype), ops.cast(out_xt, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_wsol")
class SpatialSelfAttention(keras.layers.Layer):
    """SSAM (Babar & Das, Eq. 7-8; SAGAN's self-attention): ``F + alpha P K^T``, ``K = softmax(M^T L)``.

    ``M`` and ``L`` are 1x1 convs to ``C / 8`` channels, ``P`` a 1x1 conv to
    ``C``; ``K`` is ``N x N`` over the positions, softmax over its rows;
    ``alpha`` starts at 0, so the layer starts as the identity.

    Example:
        >>> import numpy as np
        >>> f = np.ones((1, 4, 4, 16), "float32")
        >>> bool(np.allclose(SpatialSelfAttention()(f), f))
        True
    """

    def build(self, input_shape):
        channels = int(input_shape[-1])
        reduced = max(channels // 8, 1)
        self.query = keras.layers.Conv2D(reduced, 1, name="m")
        self.key = keras.layers.Conv2D(reduced, 1, name="l")
        self.value = keras.layers.Conv2D(channels, 1, name="p")
        for conv in (self.query, self.key, self.value):
            conv.build(input_shape)
        self.alpha = self.add_weight(shape=(), initializer="zeros", name="alpha")

    def attention(self, features):
        """``K`` ``[B, N, N]``: row ``i`` weighs every position ``j`` for position ``i``."""
        batch = ops.shape(features)[0]
        m = _attention_dtype_cast(ops.reshape(self.query(features), (batch, -1, self.query.filters)))
        k = _attention_dtype_cast(ops.reshape(self.key(features), (batch, -1, self.key.filters)))
        return ops.softmax(ops.einsum("bic,bjc->bij", m, k), axis=-1)

    def call(self, features):
        k = self.attention(features)
        p = _attention_dtype_cast(self.value(features))
        shape = ops.shape(p)
        r = ops.reshape(ops.einsum("bij,bjc->bic", k, ops.reshape(p, (shape[0], -1, shape[-1]))), shape)
        return ops.cast(_attention_dtype_cast(features) + self.alpha * r, self.compute_dtype)


def hide_and_seek_masks(batch: int, height: int, width: int, patch_sizes, seed, hide_prob: float = 0.5):
    """Grid masks ``[B, H, W]`` (1 shown, 0 hidden): a patch size per image, each patch hidden w.p. ``hide_prob``.

    A grid starts at the top-left corner; edge patches are cut by the image
    border. ``1 - mask`` hides exactly the patches this one shows
    (complementary inputs, Babar & Das Algorithm 1).

    Example:
        >>> import keras
        >>> m = hide_and_seek_masks(2, 8, 8, (4,), keras.random.SeedGenerator(0))
        >>> tuple(m.shape), sorted(set(m.numpy().ravel().tolist())) in ([0.0, 1.0], [0.0], [1.0])
        ((2, 8, 8), True)
    """
    choice = keras.random.randint((batch,), 0, len(patch_sizes), seed=seed)
    mask = ops.zeros((batch, height, width))
    for index, size in enumerate(patch_sizes):
        rows, cols = -(-height // size), -(-width // size)
        shown = ops.cast(keras.random.uniform((batch, rows, cols), seed=seed) >= hide_prob, "float32")
        shown = ops.repeat(ops.repeat(shown, size, axis=1), size, axis=2)[:, :height, :width]
        mask = ops.where(ops.reshape(choice == index, (-1, 1, 1)), shown, mask)
    return mask


def _conv_bn_relu(filters: int, strides: int, name: str) -> list[keras.layers.Layer]:
    return [
        keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"),
        keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn"),
        keras.layers.ReLU(name=f"{name}_relu"),
    ]


@keras.saving.register_keras_serializable(package="keras_wsol")
class ActivationMapGenerator(keras.layers.Layer):
    """ORNet's generator F^g (Eq. 2): an encoder-decoder F^d on low-level features, then Conv + BN + sigmoid.

    Returns ``(f^a [B, h, w, k], p^a [B, h, w])``: the decoder's ``k``-channel
    features (``k`` = classes, for the auxiliary head of Eq. 4) and the
    one-channel activation map in (0, 1), float32, at the input's
    resolution. The paper does not give F^d; here it is two stride-2
    conv-BN-ReLU blocks (``channels``, ``2 * channels``) and two
    upsample-conv-BN-ReLU blocks, U-Net style: each decoder block also sees
    the encoder features of its resolution, so p^a keeps the low-level
    detail the method is about while the bottleneck removes
    high-frequency noise (Section 3.1).

    Example:
        >>> import numpy as np
        >>> f_a, p_a = ActivationMapGenerator(num_classes=3, channels=8)(np.ones((2, 12, 10, 4), "float32"))
        >>> tuple(f_a.shape), tuple(p_a.shape), bool(0 < float(p_a.numpy().min()) < 1)
        ((2, 12, 10, 3), (2, 12, 10), True)
    """

    def __init__(self, num_classes: int, channels: int = 64, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.encoder1 = _conv_bn_relu(channels, 2, "encoder1")
        self.encoder2 = _conv_bn_relu(2 * channels, 2, "encoder2")
        self.decoder1 = _conv_bn_relu(channels, 1, "decoder1")
        self.decoder0 = _conv_bn_relu(num_classes, 1, "decoder0")
        self.map_conv = keras.layers.Conv2D(1, 1, name="map_conv")
        self.map_bn = keras.layers.BatchNormalization(momentum=0.9, name="map_bn")

    def encoder_layers(self) -> list:
        """The encoder blocks' layers (frozen in the official stage 2)."""
        return [*self.encoder1, *self.encoder2]

    def decoder_layers(self) -> list:
        """The decoder blocks' and the map head's layers: what the official stage 2 trains."""
        return [*self.decoder1, *self.decoder0, self.map_conv, self.map_bn]

    @staticmethod
    def _run(blocks, x, training):
        for layer in blocks:
            x = layer(x, training=training)
        return x

    def _up_and_join(self, x, skip):
        """Bilinear upsampling to ``skip``'s exact size (odd sizes included), concatenated with it."""
        x = ops.cast(tf.image.resize(x, ops.shape(skip)[1:3], method="bilinear"), skip.dtype)
        return ops.concatenate([x, skip], axis=-1)

    def call(self, features, training=False):
        e1 = self._run(self.encoder1, features, training)
        e2 = self._run(self.encoder2, e1, training)
        d1 = self._run(self.decoder1, self._up_and_join(e2, e1), training)
        f_a = self._run(self.decoder0, self._up_and_join(d1, features), training)
        logits = self.map_bn(self.map_conv(f_a), training=training)
        return f_a, ops.sigmoid(ops.cast(logits, "float32"))[..., 0]

    def get_config(self) -> dict:
        return {**super().get_config(), "num_classes": self.num_classes, "channels": self.channels}


def attentive_erasing(maps, seed, threshold: float = 0.5, size_range=(0.25, 0.75), drop_prob: float = 0.5):
    """ORNet's attentive erasing, this library's first reading (``erasing_recipe="fixed"``): ``(dropped, rectangles)``.

    Both ``[B, h, w]`` booleans. Per map, a rectangle centred on the peak of
    the map, with height and width drawn uniformly from ``size_range``
    (fractions of the map's side) and cut by the border; pixels inside it
    with a value above ``threshold`` are the candidates, each dropped with
    ``drop_prob``. Every map is erased. The official code's recipe is
    :func:`official_attentive_erasing`.

    Example:
        >>> import keras, numpy as np
        >>> maps = np.zeros((1, 6, 6), "float32"); maps[0, 2, 3] = 0.9
        >>> dropped, rect = attentive_erasing(maps, keras.random.SeedGenerator(0), drop_prob=1.0)
        >>> int(dropped.numpy().sum()), bool(rect.numpy()[0, 2, 3])
        (1, True)
    """
    maps = ops.cast(maps, "float32")
    shape = ops.shape(maps)
    batch, height, width = shape[0], shape[1], shape[2]
    peak_y, peak_x = _peak(maps)
    low, high = size_range
    half_h = keras.random.uniform((batch,), low, high, seed=seed) * ops.cast(height, "float32") / 2.0
    half_w = keras.random.uniform((batch,), low, high, seed=seed) * ops.cast(width, "float32") / 2.0
    rows = ops.abs(ops.cast(ops.arange(height)[None, :] - peak_y[:, None], "float32")) <= half_h[:, None]
    cols = ops.abs(ops.cast(ops.arange(width)[None, :] - peak_x[:, None], "float32")) <= half_w[:, None]
    rectangles = ops.logical_and(rows[:, :, None], cols[:, None, :])
    dropped = ops.logical_and(
        ops.logical_and(rectangles, maps > threshold), keras.random.uniform(shape, seed=seed) < drop_prob
    )
    return dropped, rectangles


def _peak(maps) -> tuple[tf.Tensor, tf.Tensor]:
    """Row and column of each map's maximum (the first in row-major order)."""
    width = ops.shape(maps)[2]
    peak = ops.argmax(ops.reshape(maps, (ops.shape(maps)[0], -1)), axis=-1)
    return peak // width, peak % width


#: ORNet's squashing of the map the evaluator sees in training: ``0.6 p + 0.2`` (official models/erasing.py).
SQUASH_SCALE, SQUASH_SHIFT = 0.6, 0.2


def erasing_draws(maps, seed) -> dict[str, tf.Tensor]:
    """The uniform draws of one :func:`official_attentive_erasing` call, in [0, 1).

    ``factor`` (one per batch), ``gate``, ``height`` and ``width`` (one per
    map), ``drop`` (one per pixel): drawn apart from the erasing so a test
    can replay them.
    """
    batch = ops.shape(maps)[0]
    draws = {"factor": keras.random.uniform((), seed=seed)}
    for name in ("gate", "height", "width"):
        draws[name] = keras.random.uniform((batch,), seed=seed)
    draws["drop"] = keras.random.uniform(ops.shape(maps), seed=seed)
    return draws


def _extent(above) -> tuple[tf.Tensor, tf.Tensor]:
    """``(any, last - first)`` index of the True entries along the last axis of ``above`` ``[B, n]``."""
    n = ops.shape(above)[1]
    first = ops.argmax(ops.cast(above, "int32"), axis=1)
    last = n - 1 - ops.argmax(ops.cast(ops.flip(above, axis=1), "int32"), axis=1)
    return ops.any(above, axis=1), last - first


def official_attentive_erasing(
    maps, draws: dict, gate_prob: float = 0.5, max_factor: float = 0.5, min_half: int = 4
) -> tuple[tf.Tensor, tf.Tensor]:
    """ORNet's attentive erasing as the official code runs it (models/erasing.py): ``(dropped, candidates)``.

    Both ``[B, h, w]`` booleans, from ``maps`` (``p^a`` in (0, 1)) and the
    uniforms of :func:`erasing_draws`:

    * one ``factor ~ U(0, max_factor)`` per batch; each map is erased with
      probability ``gate_prob`` (``AttentiveErasing.p``);
    * the threshold is relative, ``max - factor (max - min)`` of the map; the
      pixels above it span ``H x W`` rows and columns (last minus first);
    * half-sides ``h ~ randint(min_half, H // 2)``, ``w ~ randint(min_half,
      W // 2)`` (upper bound excluded); when a bound is not above
      ``min_half`` the official ``randint`` raises and that map is not
      erased; ``min_half`` is 4 at the official 56 x 56 maps;
    * the candidates are the above-threshold pixels strictly inside the
      rectangle ``(peak - h, peak + h) x (peak - w, peak + w)``, cut by the
      border; each is dropped with probability ``0.6 p + 0.2``
      (``SQUASH_SCALE``, ``SQUASH_SHIFT``: the paper's adaptive probability).

    The caller sets dropped pixels to 0 in the map the evaluator sees, the
    squashed ``0.6 p + 0.2`` (official) or ``p``; the gradient flows through
    the pixels that are kept, as the official ``Dropout`` function's does.

    Example:
        >>> import numpy as np
        >>> maps = np.full((1, 20, 20), 0.1, "float32"); maps[0, 5:17, 5:17] = 0.9; maps[0, 9, 9] = 1.0
        >>> draws = {"factor": 0.5, "gate": np.zeros(1), "height": np.zeros(1), "width": np.zeros(1),
        ...          "drop": np.zeros((1, 20, 20))}
        >>> dropped, candidates = official_attentive_erasing(maps, draws)
        >>> int(candidates.numpy().sum()), bool((dropped.numpy() == candidates.numpy()).all())
        (49, True)
    """
    maps = ops.cast(maps, "float32")
    shape = ops.shape(maps)
    height, width = shape[1], shape[2]
    flat = ops.reshape(maps, (shape[0], -1))
    top, bottom = ops.max(flat, axis=1), ops.min(flat, axis=1)
    threshold = top - (top - bottom) * ops.cast(draws["factor"], "float32") * max_factor
    above = maps > threshold[:, None, None]
    any_rows, span_h = _extent(ops.any(above, axis=2))
    _, span_w = _extent(ops.any(above, axis=1))
    bound_h, bound_w = span_h // 2, span_w // 2

    def half_side(bound, uniform):
        choices = ops.cast(ops.maximum(bound - min_half, 1), "float32")
        return min_half + ops.cast(ops.floor(ops.cast(uniform, "float32") * choices), "int32")

    half_h = half_side(ops.cast(bound_h, "int32"), draws["height"])
    half_w = half_side(ops.cast(bound_w, "int32"), draws["width"])
    erased = ops.cast(draws["gate"], "float32") < gate_prob
    erased = ops.logical_and(erased, ops.logical_and(any_rows, (bound_h > min_half) & (bound_w > min_half)))
    peak_y, peak_x = (ops.cast(p, "int32") for p in _peak(maps))

    def inside(index, centre, half, size):
        start = ops.maximum(centre - half, 0)[:, None]
        end = ops.minimum(centre + half, size)[:, None]
        return (index[None, :] > start) & (index[None, :] < end)

    rows = inside(ops.arange(height, dtype="int32"), peak_y, half_h, height)
    cols = inside(ops.arange(width, dtype="int32"), peak_x, half_w, width)
    candidates = above & rows[:, :, None] & cols[:, None, :] & erased[:, None, None]
    squashed = SQUASH_SCALE * maps + SQUASH_SHIFT
    return candidates & (ops.cast(draws["drop"], "float32") < squashed), candidates
