"""SavedModel export: graph boxes against OpenCV, a fresh process serving both signatures, bad input, versions."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import POLICIES, precision_policy

from keras_wsol import contours, evaluation, export, localizers
from keras_wsol.data import pipeline, synthetic
from keras_wsol.graph_boxes import largest_contour_boxes
from keras_wsol.maps import upsample_normalized
from keras_wsol.methods import CAM

SIDE = 32


def smooth_maps(rng, count, size, sigma):
    maps = []
    for _ in range(count):
        field = cv2.GaussianBlur(rng.normal(size=(size, size)).astype(np.float32), (0, 0), sigma)
        maps.append(evaluation.normalize_scoremap(field))
    return np.stack(maps)


def test_graph_boxes_equal_opencv_largest_contour():
    rng = np.random.default_rng(0)
    cases = [smooth_maps(rng, 24, size, sigma) for size, sigma in ((24, 1.0), (40, 2.0), (40, 4.0))]
    cases.append((rng.random((24, 32, 32)) < 0.45).astype(np.float32))  # many ragged components
    special = np.zeros((5, 16, 16), np.float32)
    special[0, 2:5, 2:5] = special[0, 9:12, 9:12] = 1  # equal areas: OpenCV's tie order
    special[1, 1:14, 1:14] = 1
    special[1, 3:12, 3:12] = 0  # a ring: its outer contour encloses the hole ...
    special[1, 5:10, 5:10] = 1  # ... and the blob inside it
    special[2, 0:16, 0] = 1  # a line on the border (area 0) beside a single pixel
    special[2, 8, 8] = 1
    special[3, 4:8, 4:8] = 1  # a blob beside a larger ring with fewer pixels
    special[3, 9:16, 9:16] = 1
    special[3, 10:15, 10:15] = 0
    cases.append(special)  # special[4] is all zeros: no contour
    cases.append(np.zeros((2, 8, 8), np.float32))  # no contour anywhere in the batch
    for maps in cases:
        for tau in (0.0, 0.3, 0.5, 0.8):
            expected = np.stack([contours.boxes_at_threshold(m, tau)[0] for m in maps])
            np.testing.assert_array_equal(largest_contour_boxes(maps, tau).numpy(), expected, err_msg=f"tau {tau}")


def test_scale_boxes_truncates_to_each_image():
    boxes = export.scale_boxes(tf.constant([[0, 3, 31, 31]]), 32, tf.constant([64]), tf.constant([20]))
    assert boxes.numpy().tolist() == [[0, 6, 19, 62]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    keras.utils.set_random_seed(0)
    train = synthetic.generate("train", num_classes=3, images_per_class=24, image_size=SIDE, seed=1)
    val = synthetic.generate("val", num_classes=3, images_per_class=8, image_size=SIDE, seed=1)
    model = CAM(num_classes=3, backbone="small", image_size=SIDE)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(pipeline.training_dataset(train.as_split(), 16, seed=0), epochs=3, verbose=0)
    localizer = localizers.get_localizer(model, "cam")
    threshold, _ = export.validation_threshold(localizer, val.as_split())
    root = str(tmp_path_factory.mktemp("saved_models"))
    path = export.export_model(model, root, "synthetic", threshold)
    return model, threshold, path


def expected_outputs(model, threshold, images, map_size=None):
    """What the export must give, from the in-process model, TF's resize and OpenCV's contours."""
    resized = tf.image.resize(np.asarray(images, np.float32), (SIDE, SIDE))
    logits, raw = model.logits_and_class_maps(resized)
    boxes = []
    for m, image in zip(np.asarray(upsample_normalized(raw, (SIDE, SIDE))), images):
        x0, y0, x1, y1 = contours.boxes_at_threshold(m, threshold)[0]
        h, w = image.shape[:2]
        boxes.append([int(x0 * w / SIDE), int(y0 * h / SIDE), int(x1 * w / SIDE), int(y1 * h / SIDE)])
    return {
        "probabilities": np.asarray(tf.nn.softmax(logits)),
        "classes": np.asarray(logits).argmax(axis=1),
        "scoremaps": np.asarray(upsample_normalized(raw, map_size or images.shape[1:3])),
        "boxes": np.array(boxes),
    }


FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    sys.modules["keras_wsol"] = None  # importing it would fail: the export must not need it
    import numpy as np
    import tensorflow as tf

    path, data, out = sys.argv[1:]
    inputs = np.load(data, allow_pickle=True)
    model = tf.saved_model.load(path)
    serve, encoded = model.signatures["serving_default"], model.signatures["localize_encoded"]
    results = {}
    for key, value in serve(images=tf.constant(inputs["images"])).items():
        results["images/" + key] = value.numpy()
    for key, value in encoded(image_bytes=tf.constant(list(inputs["encoded"]))).items():
        results["encoded/" + key] = value.numpy()
    bad = {
        "rank": lambda: serve(images=tf.zeros((SIDE, SIDE, 3))),
        "channels": lambda: serve(images=tf.zeros((1, SIDE, SIDE, 4))),
        "empty": lambda: serve(images=tf.zeros((1, 0, SIDE, 3))),
        "not_an_image": lambda: encoded(image_bytes=tf.constant([inputs["encoded"][0], b"<html>not an image</html>"])),
    }
    errors = {}
    for name, call in bad.items():
        try:
            call()
            errors[name] = "no error"
        except tf.errors.InvalidArgumentError as error:
            errors[name] = error.message
    # TF Serving runs the graph in a session: the same errors come back as a status there.
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        graph = tf.compat.v1.saved_model.load(session, ["serve"], path)
        signature = graph.signature_def["serving_default"]
        feed = {signature.inputs["images"].name: np.zeros((1, SIDE, SIDE, 4), np.float32)}
        try:
            session.run(signature.outputs["boxes"].name, feed)
            errors["session_channels"] = "no error"
        except tf.errors.InvalidArgumentError as error:
            errors["session_channels"] = error.message
    after = serve(images=tf.constant(inputs["images"]))["classes"].numpy()  # still serving
    np.savez(out, errors=np.array(errors, dtype=object), after=after, **results)
    """
).replace("SIDE", str(SIDE))


def test_fresh_process_serves_both_signatures_like_the_model(trained, tmp_path):
    model, threshold, path = trained
    val = synthetic.generate("test", num_classes=3, images_per_class=2, image_size=SIDE, seed=1)
    # Float images at another size (non-square); encoded PNGs of two sizes (PNG is lossless).
    images = np.asarray(tf.image.resize(val.images[:4].astype(np.float32), (40, 56)))
    pictures = [cv2.resize(val.images[4], (SIDE, SIDE)), cv2.resize(val.images[5], (24, 48))]
    encoded = np.array([cv2.imencode(".png", p[..., ::-1])[1].tobytes() for p in pictures], dtype=object)
    np.savez(tmp_path / "inputs.npz", images=images, encoded=encoded)
    script = tmp_path / "serve.py"
    script.write_text(FRESH_PROCESS)
    done = subprocess.run(
        [sys.executable, str(script), path, str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "out.npz", allow_pickle=True)

    want = expected_outputs(model, threshold, images)
    decoded = [
        cv2.cvtColor(cv2.imdecode(np.frombuffer(e, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for e in encoded
    ]
    want_encoded = [expected_outputs(model, threshold, d[None].astype(np.float32), (SIDE, SIDE)) for d in decoded]
    for key in ("probabilities", "scoremaps"):
        np.testing.assert_allclose(got["images/" + key], want[key], atol=1e-4)
        np.testing.assert_allclose(got["encoded/" + key], np.concatenate([w[key] for w in want_encoded]), atol=1e-4)
    for key in ("classes", "boxes"):
        np.testing.assert_array_equal(got["images/" + key], want[key])
        np.testing.assert_array_equal(got["encoded/" + key], np.concatenate([w[key] for w in want_encoded]))
    assert got["images/scoremaps"].shape == (4, 40, 56) and got["encoded/scoremaps"].shape == (2, SIDE, SIDE)
    assert got["images/boxes"].dtype == np.int32 and got["images/classes"].dtype == np.int64
    assert (got["encoded/boxes"][1, [0, 2]] < 24).all() and (got["encoded/boxes"][1, [1, 3]] < 48).all()

    errors = got["errors"].item()
    assert "images must be [batch, height, width, 3]" in errors["rank"]
    assert "images must have 3 (RGB) channels" in errors["channels"]
    assert "images must be at least 1x1 pixels" in errors["empty"]
    assert "not JPEG or PNG" in errors["not_an_image"] and "[1]" in errors["not_an_image"]
    assert "images must have 3 (RGB) channels" in errors["session_channels"]
    np.testing.assert_array_equal(got["after"], want["classes"])


def test_export_metadata_and_signatures(trained):
    _, threshold, path = trained
    record = json.load(open(os.path.join(path, export.METADATA_FILE)))
    assert record["threshold"] == threshold and record["localizer"] == "cam" and record["image_size"] == SIDE
    assert os.path.basename(path) == "1"
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == set(export.SIGNATURES)


def test_gradient_localizer_is_baked_in(trained, tmp_path):
    model = trained[0]
    localizer = localizers.get_localizer(model, "bagcams", "mid")
    loaded = tf.saved_model.load(export.export_model(model, str(tmp_path), "bag", 0.5, localizer))
    images = synthetic.generate("val", num_classes=3, images_per_class=1, image_size=SIDE, seed=2).images.astype(
        np.float32
    )
    got = loaded.signatures["serving_default"](images=tf.constant(images))["scoremaps"].numpy()
    np.testing.assert_allclose(got, np.asarray(localizer(images)), atol=1e-4)
    assert json.load(open(tmp_path / "bag" / "1" / export.METADATA_FILE))["layer"] == "mid"


@pytest.mark.parametrize("policy", POLICIES)
def test_mixed_precision_model_exports_float32_outputs(policy, tmp_path):
    with precision_policy(policy):
        model = CAM(num_classes=2, backbone="small", image_size=SIDE)
    loaded = tf.saved_model.load(export.export_model(model, str(tmp_path), "half", 0.5))
    out = loaded.signatures["serving_default"](images=tf.zeros((2, SIDE, SIDE, 3)))
    assert out["probabilities"].dtype == tf.float32 and out["scoremaps"].dtype == tf.float32
    assert np.isfinite(out["probabilities"].numpy()).all()


def test_versions_names_and_thresholds(tmp_path):
    for name in ("1", "3", "notes", ".hidden-9"):
        os.makedirs(tmp_path / "m" / name)
    assert export.next_version(str(tmp_path / "m")) == 4
    os.makedirs(tmp_path / "m" / ".incomplete-7")  # claimed by an export still running
    assert export.next_version(str(tmp_path / "m")) == 8
    os.rmdir(tmp_path / "m" / ".incomplete-7")
    assert export.next_version(str(tmp_path / "none")) == 1
    model = CAM(num_classes=2, backbone="small", image_size=SIDE)
    with pytest.raises(FileExistsError, match="m/3 exists already"):
        export.export_model(model, str(tmp_path), "m", 0.5, version=3)
    for name in ("", "../up", ".hidden", "a/b"):
        with pytest.raises(ValueError, match="model name"):
            export.export_model(model, str(tmp_path), name, 0.5)
    with pytest.raises(ValueError, match="threshold"):
        export.export_model(model, str(tmp_path), "m", 1.0)
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        export.export_model(model, str(tmp_path), "file", 0.5)


def test_interrupted_export_leaves_no_version(tmp_path, monkeypatch):
    model = CAM(num_classes=2, backbone="small", image_size=SIDE)

    def interrupted(*arguments):  # dies halfway through writing inside its claim
        claim = arguments[-2]
        os.makedirs(os.path.join(claim, "savedmodel", "variables"))
        open(os.path.join(claim, "savedmodel", "saved_model.pb"), "wb").write(b"partial")
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(export, "_write_version", interrupted)
        with pytest.raises(KeyboardInterrupt):
            export.export_model(model, str(tmp_path), "m", 0.5)
    assert os.listdir(tmp_path / "m") == []


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from keras_wsol import export
    from keras_wsol.methods import CAM

    def killed(source, target):  # everything is written; the process dies before the rename
        os.kill(os.getpid(), signal.SIGKILL)

    os.rename = killed
    export.export_model(CAM(num_classes=2, backbone="small", image_size=SIDE), sys.argv[1], "m", 0.5)
    """
).replace("SIDE", str(SIDE))


def test_killed_export_leaves_no_version_and_is_cleaned_up(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    root = tmp_path / "saved_models"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, str(script), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": repo},
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert os.listdir(root / "m") == [".incomplete-1"]  # hidden: TF Serving loads numeric folders only
    assert os.path.isfile(root / "m" / ".incomplete-1" / "savedmodel" / "saved_model.pb")
    path = export.export_model(CAM(num_classes=2, backbone="small", image_size=SIDE), str(root), "m", 0.5)
    assert path == str(root / "m" / "1") and os.listdir(root / "m") == ["1"]


def test_a_second_export_at_once_takes_the_next_version_or_fails_before_writing(tmp_path):
    model = CAM(num_classes=2, backbone="small", image_size=SIDE)
    claim = tmp_path / "m" / ".incomplete-1"  # another export, still running, has claimed version 1
    os.makedirs(claim)
    (claim / "owner.pid").write_text(str(os.getppid()))
    with pytest.raises(FileExistsError, match="being exported"):
        export.export_model(model, str(tmp_path), "m", 0.5, version=1)
    assert sorted(os.listdir(tmp_path / "m")) == [".incomplete-1"]  # nothing written
    assert export.export_model(model, str(tmp_path), "m", 0.5) == str(tmp_path / "m" / "2")
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (claim / "owner.pid").write_text(finished.stdout.strip())  # its process has gone: the claim is abandoned
    assert export.export_model(model, str(tmp_path), "m", 0.5) == str(tmp_path / "m" / "3")
    assert sorted(os.listdir(tmp_path / "m")) == ["2", "3"]
