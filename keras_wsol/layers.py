"""Reusable layers.

Example:
    >>> import numpy as np
    >>> float(Preprocess("tf")(np.full((1, 2, 2, 3), 255.0, "float32")).numpy().max())
    1.0
"""

from __future__ import annotations

import keras
from keras import ops

# keras.applications "caffe" preprocessing: RGB -> BGR, ImageNet mean subtracted.
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="keras_wsol")
class Preprocess(keras.layers.Layer):
    """Map RGB pixels in [0, 255] to a backbone's input range, inside the graph.

    Modes: ``"tf"`` ([-1, 1], MobileNetV2/InceptionV3), ``"caffe"`` (BGR minus
    the ImageNet mean, VGG16/ResNet50), ``"unit"`` ([0, 1], the small backbone).
    """

    MODES = ("tf", "caffe", "unit")

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}; choose one of {self.MODES}")
        self.mode = mode

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
        return tuple(reversed(_CAFFE_MEAN_BGR))

    def call(self, images):
        images = ops.cast(images, self.compute_dtype)
        if self.mode == "tf":
            return images / 127.5 - 1.0
        if self.mode == "unit":
            return images / 255.0
        return images[..., ::-1] - ops.convert_to_tensor(_CAFFE_MEAN_BGR, self.compute_dtype)

    def get_config(self) -> dict:
        return {**super().get_config(), "mode": self.mode}


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
        l = _attention_dtype_cast(ops.reshape(self.key(features), (batch, -1, self.key.filters)))
        return ops.softmax(ops.einsum("bic,bjc->bij", m, l), axis=-1)

    def call(self, features):
        k = self.attention(features)
        p = _attention_dtype_cast(self.value(features))
        shape = ops.shape(p)
        r = ops.reshape(ops.einsum("bij,bjc->bic", k, ops.reshape(p, (shape[0], -1, shape[-1]))), shape)
        return ops.cast(_attention_dtype_cast(features) + self.alpha * r, self.compute_dtype)


def hide_and_seek_masks(batch: int, height: int, width: int, patch_sizes, seed, hide_prob: float = 0.5):
    """Grid masks ``[B, H, W]`` (1 shown, 0 hidden): per image a patch size from ``patch_sizes``, each patch hidden with ``hide_prob``.

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
