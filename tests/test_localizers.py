"""Post-hoc localizers against maps computed by hand in numpy on a tiny model with known weights."""

import keras
import numpy as np
import pytest

from keras_wsol import localizers, model_protocol
from keras_wsol.methods import CAM

B, S, K = 2, 4, 2  # batch, feature side, classes


def tiny_model(logit_bias: float = 3.0, pool: int = 1) -> keras.Model:
    """input -> (avg pool) -> 1x1 conv + ReLU ("feat") -> 1x1 conv + ReLU ("top") -> GAP -> Dense."""
    inputs = keras.Input((S * pool, S * pool, 2))
    z = keras.layers.Conv2D(3, 1, activation="relu", name="feat")(keras.layers.AveragePooling2D(pool)(inputs))
    r = keras.layers.Conv2D(3, 1, activation="relu", name="top")(z)
    logits = keras.layers.Dense(K, name="logits")(keras.layers.GlobalAveragePooling2D()(r))
    model = keras.Model(inputs, logits)
    rng = np.random.default_rng(1)  # weights under which every map is non-constant and the options matter
    model.get_layer("feat").set_weights([rng.normal(size=(1, 1, 2, 3)), rng.normal(size=3) * 0.1 + 0.5])
    model.get_layer("top").set_weights([rng.normal(size=(1, 1, 3, 3)), np.array([0.3, -0.2, 0.4])])
    model.get_layer("logits").set_weights([rng.normal(size=(3, K)), np.full(K, logit_bias)])
    return model


def images(pool: int = 1):
    return np.random.default_rng(1).normal(size=(B, S * pool, S * pool, 2)).astype("float32")


def by_hand(model, x, class_ids, guided, score="logit", log=False):
    """Features Z at "feat" and the gradient of the class score with respect to them."""
    (w1, b1), (w2, b2), (w3, b3) = (model.get_layer(n).get_weights() for n in ("feat", "top", "logits"))
    z = np.maximum(x @ w1[0, 0] + b1, 0)
    a = z @ w2[0, 0] + b2
    pooled = np.maximum(a, 0).mean(axis=(1, 2))
    logits = pooled @ w3 + b3
    if score == "logit":
        d_pooled = w3[:, class_ids].T  # [B, C]
        s = logits[np.arange(B), class_ids]
        if log:
            d_pooled = d_pooled / np.maximum(s, localizers.LOG_EPS)[:, None]
    else:
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        d_log = w3[:, class_ids].T - p @ w3.T  # d log softmax_k / d pooled
        d_pooled = d_log if log else d_log * p[np.arange(B), class_ids][:, None]
    d_r = np.broadcast_to(d_pooled[:, None, None, :] / (S * S), a.shape)
    if guided:
        d_r = np.maximum(d_r, 0)
    d_a = d_r * (a > 0)
    return z, d_a @ w2[0, 0].T


def formulas(z, g):
    gz = z * g
    g2 = g**2
    denom = 2 * g2 + (z * g**3).sum(axis=(1, 2), keepdims=True)
    alpha = g2 / (np.where(denom != 0, denom, 1) + 1e-7)
    pp_weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    return {
        "cam": np.einsum("bhwc,bc->bhw", z, g.mean(axis=(1, 2))),
        "gradcam": np.maximum(np.einsum("bhwc,bc->bhw", z, g.mean(axis=(1, 2))), 0),
        "gradcam_pp": np.maximum(np.einsum("bhwc,bc->bhw", z, pp_weights), 0),
        "pcs": np.maximum(gz.sum(-1), 0),
        "bagcams": np.maximum((1 + gz.mean(axis=(1, 2), keepdims=True)) * gz, 0).sum(-1),
    }


def bilinear(maps, size):
    """Half-pixel-centre bilinear upsampling, written out."""
    h = maps.shape[1]
    src = np.clip((np.arange(size) + 0.5) * h / size - 0.5, 0, h - 1)
    i0 = np.floor(src).astype(int)
    i1 = np.minimum(i0 + 1, h - 1)
    w = src - i0
    rows = maps[:, i0] * (1 - w)[None, :, None] + maps[:, i1] * w[None, :, None]
    return rows[:, :, i0] * (1 - w)[None, None, :] + rows[:, :, i1] * w[None, None, :]


@pytest.mark.parametrize("method", list(localizers.LOCALIZERS))
@pytest.mark.parametrize("guided", [False, True])
def test_every_method_matches_the_hand_computed_map(method, guided):
    model, x, ids = tiny_model(), images(), np.array([1, 0])
    z, g = by_hand(model, x, ids, guided=guided, log=method == "bagcams")
    expected = formulas(z, g)[method]
    assert np.ptp(expected, axis=(1, 2)).min() > 1e-3  # a non-trivial map
    loc = localizers.get_localizer(model, method, "feat", guided=guided)
    raw, logits = loc.raw_maps(x, ids)
    np.testing.assert_allclose(np.asarray(raw), expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(logits), np.asarray(model(x)), rtol=1e-5)


def test_guided_backprop_and_the_log_of_the_raw_logit_are_the_bagcams_defaults():
    model, x, ids = tiny_model(), images(), np.array([1, 0])
    default = np.asarray(localizers.get_localizer(model, "bagcams", "feat").raw_maps(x, ids)[0])
    z, g = by_hand(model, x, ids, guided=True, log=True)
    np.testing.assert_allclose(default, formulas(z, g)["bagcams"], rtol=1e-4, atol=1e-6)
    # The choices matter on this model: without them the map differs.
    z, g = by_hand(model, x, ids, guided=False, log=True)
    assert not np.allclose(default, formulas(z, g)["bagcams"], rtol=1e-3)
    z, g = by_hand(model, x, ids, guided=True, log=False)
    assert not np.allclose(default, formulas(z, g)["bagcams"], rtol=1e-3)
    assert localizers.get_localizer(model, "gradcam", "feat").guided is False


@pytest.mark.parametrize("method", ["gradcam", "bagcams"])
def test_softmax_scores_option(method):
    model, x, ids = tiny_model(), images(), np.array([0, 1])
    z, g = by_hand(model, x, ids, guided=method == "bagcams", score="softmax", log=method == "bagcams")
    raw = localizers.get_localizer(model, method, "feat", score="softmax").raw_maps(x, ids)[0]
    np.testing.assert_allclose(np.asarray(raw), formulas(z, g)[method], rtol=1e-4, atol=1e-7)


def test_non_positive_logit_is_treated_as_the_limit_not_nan():
    model, x, ids = tiny_model(logit_bias=-50.0), images(), np.array([1, 0])
    assert (np.asarray(model(x)) < 0).all()
    raw = np.asarray(localizers.get_localizer(model, "bagcams", "feat").raw_maps(x, ids)[0])
    z, g = by_hand(model, x, ids, guided=True, log=True)  # divides by max(s, eps)
    assert np.isfinite(raw).all()
    np.testing.assert_allclose(raw, formulas(z, g)["bagcams"], rtol=1e-4)
    maps = localizers.compute_scoremaps(model, x, "bagcams", "feat", class_ids=ids)
    assert np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)


def test_maps_are_upsampled_bilinearly_and_min_max_normalized_per_image():
    model, x = tiny_model(pool=2), images(pool=2)
    pooled = x.reshape(B, S, 2, S, 2, 2).mean(axis=(2, 4))
    predicted = np.asarray(model(x)).argmax(1)
    raw = formulas(*by_hand(model, pooled, predicted, guided=True, log=True))["bagcams"]
    up = bilinear(raw, 2 * S)
    lo, hi = up.min(axis=(1, 2), keepdims=True), up.max(axis=(1, 2), keepdims=True)
    maps = localizers.compute_scoremaps(model, x, "bagcams", "feat", batch_size=1)
    assert maps.shape == (B, 2 * S, 2 * S)
    np.testing.assert_allclose(maps, (up - lo) / (hi - lo), atol=1e-5)


def test_keras_applications_classifier_by_layer_name():
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(64, 64, 3), weights=None, classes=3, classifier_activation=None)
    x = np.random.default_rng(2).uniform(-1, 1, (3, 64, 64, 3)).astype("float32")
    assert model_protocol.default_layer(model) == "out_relu"
    for method in localizers.LOCALIZERS:
        maps = localizers.compute_scoremaps(model, x, method, layer="block_13_expand_relu", batch_size=2)
        assert maps.shape == (3, 64, 64) and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
    # Guided backprop reaches the ReLU6 layers of the application and is undone afterwards.
    unguided = localizers.compute_scoremaps(model, x, "bagcams", "block_13_expand_relu", guided=False)
    assert not np.allclose(unguided, localizers.compute_scoremaps(model, x, "bagcams", "block_13_expand_relu"))
    assert all("call" not in op.__dict__ for op in model_protocol.all_operations(model))
    # Its default softmax head: the localizers take the logits before it, on the same weights.
    softmax = keras.applications.MobileNetV2(input_shape=(64, 64, 3), weights=None, classes=3)
    softmax.set_weights(model.get_weights())
    for method in localizers.LOCALIZERS:
        np.testing.assert_allclose(
            localizers.get_localizer(softmax, method, "block_13_expand_relu")(x),
            localizers.get_localizer(model, method, "block_13_expand_relu")(x),
            atol=1e-5,
        )


def test_wsol_model_taps_match_the_layers_behind_them():
    keras.utils.set_random_seed(3)
    model = CAM(num_classes=3, backbone="small", image_size=32)
    x = np.random.default_rng(3).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    for method in ("gradcam", "bagcams"):
        by_tap = localizers.compute_scoremaps(model, x, method, "mid")
        np.testing.assert_allclose(by_tap, localizers.compute_scoremaps(model, x, method, "block3_relu"), atol=1e-5)
    # The same maps, traced (compute_scoremaps) and eager (localization_maps): float32 rounding differs by up
    # to ~1.4e-6 on [0, 1] maps with TensorFlow 2.21 on this machine's CPU, so the other checks' 1e-5 applies.
    np.testing.assert_allclose(
        localizers.compute_scoremaps(model, x, "cam", class_ids=[2, 1]),
        np.asarray(model.localization_maps(x, [2, 1])),
        atol=1e-5,
    )
    assert model_protocol.feature_layers(model) == ["low", "mid", "high"]
    with pytest.raises(ValueError, match="classifier's input only"):
        localizers.get_localizer(model, "cam", "low")
    with pytest.raises(ValueError, match="no layer named 'nope'.*low, mid, high"):
        localizers.get_localizer(model, "pcs", "nope")
    with pytest.raises(ValueError, match="choose one of cam, gradcam"):
        localizers.get_localizer(model, "scorecam")


def test_usable_inside_a_tf_data_pipeline():
    import tensorflow as tf

    model, x = tiny_model(), images()
    loc = localizers.get_localizer(model, "bagcams", "feat")
    ds = tf.data.Dataset.from_tensor_slices(x).batch(1).map(lambda batch: loc(batch))
    np.testing.assert_allclose(np.concatenate([np.asarray(m) for m in ds]), np.asarray(loc(x)), atol=1e-6)


def test_repeated_compute_scoremaps_calls_on_new_batches_reuse_one_trace():
    keras.utils.set_random_seed(0)
    model = CAM(num_classes=3, backbone="small", image_size=32)
    rng = np.random.default_rng(0)
    first = localizers.compute_scoremaps(model, rng.uniform(0, 255, (4, 32, 32, 3)), "gradcam", "mid")
    localizer = localizers.cached_localizer(model, "gradcam", "mid")
    for _ in range(3):
        batch = rng.uniform(0, 255, (4, 32, 32, 3)).astype("float32")
        maps = localizers.compute_scoremaps(model, batch, "gradcam", "mid")
        np.testing.assert_allclose(maps, np.asarray(localizer(batch)), atol=1e-6)
    assert localizer._raw.experimental_get_tracing_count() == 1
    assert first.shape == (4, 32, 32)
    other = localizers.cached_localizer(model, "gradcam", "mid", score="softmax")
    assert other is not localizer  # other options, another localizer


def test_a_softmax_layer_head_is_skipped_not_taken_for_logits():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="feat")(inputs)
    logits = keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling2D()(features))
    with_logits = keras.Model(inputs, logits)
    with_softmax = keras.Model(inputs, keras.layers.Softmax()(logits))
    x = np.random.default_rng(3).uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    for method in ("gradcam", "bagcams"):
        np.testing.assert_allclose(
            localizers.get_localizer(with_softmax, method, "feat")(x),
            localizers.get_localizer(with_logits, method, "feat")(x),
            atol=1e-6,
        )


def test_the_names_evaluate_offers_without_tensorflow_are_the_localizers():
    from keras_wsol import choices

    assert choices.LOCALIZER_NAMES == tuple(localizers.LOCALIZERS)


def small_functional_model():
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    flat = keras.layers.Flatten(name="flat")(features)
    return inputs, features, pooled, flat, keras.layers.Dense(3, name="head")(pooled)


@pytest.mark.parametrize(
    "case,message",
    [
        ("class beyond", r"class_ids \[5\] outside \[0, 3\)"),
        ("class below -1", r"class_ids \[-2\] outside \[0, 3\)"),
        ("too many ids", "3 class_ids for 2 images"),
        ("float ids", "class_ids must be integers"),
        ("2-D ids", r"class_ids has shape \(2, 1\)"),
        ("two outputs", "has 2 outputs; a localizer needs one"),
        ("dict output", "has 2 outputs; a localizer needs one"),
        ("subclassed dict output", "returns a dict; a localizer needs one"),
        ("flat layer", r"layer 'flat' outputs shape \(None, 3600\): a localizer needs a 4-D"),
    ],
)
def test_localizers_refuse_bad_class_ids_outputs_and_layers_clearly(case, message):
    inputs, features, pooled, flat, logits = small_functional_model()
    model, layer, ids = keras.Model(inputs, logits), "conv", None
    if case == "class beyond":
        ids = [5, 0]
    elif case == "class below -1":
        ids = [-2, 0]
    elif case == "too many ids":
        ids = [0, 1, 2]
    elif case == "float ids":
        ids = [0.5, 1.0]
    elif case == "2-D ids":
        ids = [[0], [1]]
    elif case == "two outputs":
        model = keras.Model(inputs, [logits, pooled])
    elif case == "dict output":
        model = keras.Model(inputs, {"logits": logits, "pooled": pooled})
    elif case == "subclassed dict output":

        class TwoHeads(keras.Model):
            def __init__(self):
                super().__init__()
                self.conv, self.head = keras.layers.Conv2D(4, 3, name="conv"), keras.layers.Dense(3)

            def call(self, x):
                return {"logits": self.head(keras.ops.mean(self.conv(x), axis=(1, 2)))}

        model = TwoHeads()
        model(np.zeros((1, 32, 32, 3), "float32"))
    elif case == "flat layer":
        model, layer = keras.Model(inputs, keras.layers.Dense(3)(flat)), "flat"
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    with pytest.raises(ValueError, match=message):
        localizers.compute_scoremaps(model, images, "gradcam", layer=layer, class_ids=ids)


def test_one_class_id_for_every_image_and_minus_one_for_the_predicted_class():
    inputs, _, _, _, logits = small_functional_model()
    model = keras.Model(inputs, logits)
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    predicted = np.asarray(model(images)).argmax(-1)
    one = localizers.compute_scoremaps(model, images, "gradcam", layer="conv", class_ids=2)
    np.testing.assert_allclose(
        one, localizers.compute_scoremaps(model, images, "gradcam", layer="conv", class_ids=[2] * 3)
    )
    minus = localizers.compute_scoremaps(model, images, "gradcam", layer="conv", class_ids=[-1, -1, -1])
    np.testing.assert_allclose(
        minus, localizers.compute_scoremaps(model, images, "gradcam", layer="conv", class_ids=predicted)
    )


def test_a_float_tensor_of_class_ids_is_refused_not_truncated():
    import tensorflow as tf

    inputs, _, _, _, logits = small_functional_model()
    localizer = localizers.get_localizer(keras.Model(inputs, logits), "gradcam", "conv")
    images = np.zeros((2, 32, 32, 3), "float32")
    with pytest.raises(ValueError, match="class_ids must be integers, got float32"):
        localizer.raw_maps(images, tf.constant([0.5, 1.0]))
    assert localizer.raw_maps(images, tf.constant([0, 2]))[0].shape[0] == 2


def normalized(maps):
    low, high = maps.min(axis=(1, 2), keepdims=True), maps.max(axis=(1, 2), keepdims=True)
    return (maps - low) / np.where(high > low, high - low, 1)


@pytest.mark.parametrize("fusion", ["max", "mean"])
def test_several_layers_fuse_their_normalized_maps_as_by_hand(fusion):
    model, x = tiny_model(pool=2), images(pool=2)
    # Class 1 is not the predicted class of image 0: every layer must explain the class asked for.
    for ids in (np.array([1, 1]), None):
        singles = [localizers.get_localizer(model, "gradcam_pp", name).raw_maps(x, ids) for name in ("feat", "top")]
        upsampled = [normalized(bilinear(np.asarray(raw), 2 * S)) for raw, _ in singles]
        expected = normalized(np.max(upsampled, axis=0) if fusion == "max" else np.mean(upsampled, axis=0))
        fused = localizers.get_localizer(model, "gradcam_pp", "feat,top", fusion=fusion)
        raw, logits = fused.raw_maps(x, ids)
        assert fused.layer == "feat,top" and np.ptp(expected) > 0.1
        np.testing.assert_allclose(np.asarray(raw), expected, atol=1e-5)
        np.testing.assert_allclose(np.asarray(fused(x, ids)), expected, atol=1e-5)
        np.testing.assert_allclose(np.asarray(logits), np.asarray(singles[0][1]), rtol=1e-6)
    with pytest.raises(ValueError, match="give two or more different layers"):
        localizers.get_localizer(model, "gradcam", "feat,feat")
    with pytest.raises(ValueError, match="fusion='sum'; choose one of max, mean"):
        localizers.get_localizer(model, "gradcam", "feat,top", fusion="sum")


def test_a_target_callable_is_differentiated_instead_of_one_class():
    model, x = tiny_model(), images()
    z, g0 = by_hand(model, x, np.array([0, 0]), guided=False)
    _, g1 = by_hand(model, x, np.array([1, 1]), guided=False)
    g = g0 - 2.0 * g1  # the gradient of logit 0 - 2 logit 1: linear in the logits
    for method in ("gradcam", "pcs"):
        loc = localizers.get_localizer(model, method, "feat", target=lambda t: t[:, 0] - 2.0 * t[:, 1])
        np.testing.assert_allclose(np.asarray(loc.raw_maps(x)[0]), formulas(z, g)[method], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="a target needs a gradient localizer"):
        localizers.get_localizer(model, "cam", "feat", target=lambda t: t[:, 0])
    with pytest.raises(ValueError, match="target: a callable taking the logits"):
        localizers.get_localizer(model, "gradcam", "feat", target=lambda t: t[:, 0], score="softmax")
    with pytest.raises(ValueError, match=r"target returned shape \(2, 2\)"):
        localizers.get_localizer(model, "gradcam", "feat", target=lambda t: t).raw_maps(x)


def tiny_vit():
    """16 x 16 images, 4 x 4 patches (a 4 x 4 grid), a class token, two transformer blocks, a linear head."""
    keras.utils.set_random_seed(3)
    embed = keras.layers.Conv2D(8, 4, strides=4, name="patches")
    cls = keras.layers.Dense(8, name="cls")  # the class token, from a constant input

    def block(name):
        inputs = keras.Input((17, 8))
        norm = keras.layers.LayerNormalization()(inputs)
        x = inputs + keras.layers.MultiHeadAttention(2, 4)(norm, norm)
        x = x + keras.layers.Dense(8)(keras.layers.Dense(16, activation="gelu")(keras.layers.LayerNormalization()(x)))
        return keras.Model(inputs, x, name=name)

    block1, block2, head = block("block1"), block("block2"), keras.layers.Dense(3, name="head")

    def tokens(images):
        patches = keras.layers.Reshape((16, 8))(embed(images))
        token = keras.layers.Reshape((1, 8))(cls(keras.ops.ones_like(images[:, 0, 0, :1])))
        return keras.layers.Concatenate(axis=1)([token, patches])

    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, head(block2(block1(tokens(inputs)))[:, 0]))
    return model, tokens, block1, lambda z: head(block2(z)[:, 0])


def test_token_layers_of_a_vit_give_gradcam_on_their_patch_grid_as_numpy_does():
    model, tokens, block1, rest = tiny_vit()
    x = np.random.default_rng(2).normal(size=(2, 16, 16, 3)).astype("float32")
    ids = np.array([2, 0])
    import tensorflow as tf

    z = block1(tokens(x))
    with tf.GradientTape() as tape:
        tape.watch(z)
        score = tf.gather(rest(z), ids, batch_dims=1)
    g = tape.gradient(score, z).numpy()[:, 1:].reshape(2, 4, 4, 8)  # the class token dropped, the grid row by row
    z = z.numpy()[:, 1:].reshape(2, 4, 4, 8)
    expected = formulas(z, g)
    for method in ("gradcam", "bagcams"):
        if method == "bagcams":  # d log(s) / dZ on the raw logit, no ReLU in this model to guide through
            g_log = g / np.maximum(np.asarray(model(x))[np.arange(2), ids], localizers.LOG_EPS)[:, None, None, None]
            expected[method] = formulas(z, g_log)[method]
        raw, _ = localizers.get_localizer(model, method, "block1").raw_maps(x, ids)
        assert np.ptp(expected[method]) > 1e-4
        np.testing.assert_allclose(np.asarray(raw), expected[method], rtol=1e-3, atol=1e-6)
    own = localizers.get_localizer(
        model, "gradcam", "block1", reshape=lambda t: keras.ops.reshape(t[:, 1:], (-1, 4, 4, 8))
    )
    np.testing.assert_allclose(np.asarray(own.raw_maps(x, ids)[0]), expected["gradcam"], rtol=1e-3, atol=1e-6)
    assert tuple(model_protocol.token_grid(tf.zeros((1, 1 + 4 + 9, 2))).shape) == (
        1,
        3,
        3,
        2,
    )  # class token + 4 registers


def test_a_tapped_classifier_gives_the_maps_of_its_layers_and_names_them_for_sweeps():
    """TappedClassifier (the localizers' model protocol around any functional classifier) reads its taps from one
    pass: the same maps as hooking the layers by name; --layer=all sweeps its taps; CAM only at its classifier tap."""
    from keras_wsol.model_protocol import LocalizableModel, TappedClassifier

    model, x, ids = tiny_model(), images(), np.array([0, 1])
    tapped = TappedClassifier(model, {"mid": "feat", "high": "top"})
    assert isinstance(tapped, LocalizableModel) and not isinstance(model, LocalizableModel)
    assert (
        model_protocol.feature_layers(tapped) == ["mid", "high"] and model_protocol.classifier_layer(tapped) == "high"
    )
    np.testing.assert_allclose(np.asarray(tapped(x)), np.asarray(model(x)), atol=1e-6)
    for name in localizers.LOCALIZERS:
        for tap, layer in (("mid", "feat"), ("high", "top")):
            if not localizers.LOCALIZERS[name].supports(tapped, tap):
                assert name == "cam" and tap == "mid"
                with pytest.raises(ValueError, match="cam is defined at the classifier's input only"):
                    localizers.get_localizer(tapped, name, tap)
                continue
            by_tap = localizers.get_localizer(tapped, name, tap).raw_maps(x, ids)[0]
            by_name = localizers.get_localizer(model, name, layer).raw_maps(x, ids)[0]
            np.testing.assert_allclose(np.asarray(by_tap), np.asarray(by_name), atol=1e-5, err_msg=f"{name}@{tap}")
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        TappedClassifier(model, ["feat", "nope"])
    with pytest.raises(ValueError, match="classifier_tap='low' is not one of the taps"):
        TappedClassifier(model, ["feat", "top"], classifier_tap="low")


def test_the_cam_rule_lives_in_supports():
    with_head = CAM(num_classes=2, backbone="small", image_size=32, head_channels=8)
    without = CAM(num_classes=2, backbone="small", image_size=32)
    cam = localizers.LOCALIZERS["cam"]
    assert [layer for layer in ("low", "mid", "high", "cam") if cam.supports(with_head, layer)] == ["cam"]
    assert [layer for layer in ("low", "mid", "high", "cam") if cam.supports(without, layer)] == ["high", "cam"]
    assert all(localizers.LOCALIZERS["gradcam"].supports(with_head, layer) for layer in ("low", "mid", "cam"))
    assert cam.supports(tiny_model(), "feat")  # a model that names no classifier input: the gradient form anywhere
    assert model_protocol.feature_layers(with_head) == ["low", "mid", "high", "cam"]
    assert model_protocol.feature_layers(without) == ["low", "mid", "high"]
