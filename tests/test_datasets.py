"""Dataset sources, offline: TFDS CUB from small archives, metadata folders, ImageNet-style boxes, bad images."""

import io
import json
import os
import subprocess
import sys
import tarfile

import cv2
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_wsol import evaluation, reporting
from keras_wsol.data import metadata, pipeline, splits, synthetic, tfds_sources
from keras_wsol.evaluation import Protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _add(tar, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_cub_archives(folder, classes=3, per_class=4, seed=0) -> dict:
    """``CUB_200_2011.tgz`` and ``segmentations.tgz`` in CUB's own layout; returns what went in, by image id.

    The last image of each class goes to CUB's test split. Masks are the
    boxes' rectangles, so each box is the tight box of its mask.
    """
    rng = np.random.default_rng(seed)
    truth = {}
    for c in range(classes):
        for k in range(per_class):
            image_id = f"{c + 1:03d}.Bird_{c}/Bird_{c}_{k:04d}_{100 + k}.jpg"
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            bw, bh = int(rng.integers(5, w - x)), int(rng.integers(5, h - y))
            image = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
            mask = np.zeros((h, w), np.uint8)
            mask[y : y + bh, x : x + bw] = 255
            truth[image_id] = dict(
                label=c,
                train=k < per_class - 1,
                box=(x, y, bw, bh),
                mask=mask,
                jpeg=cv2.imencode(".jpg", image)[1].tobytes(),
            )
    ids = list(truth)
    os.makedirs(folder, exist_ok=True)
    with tarfile.open(os.path.join(folder, "CUB_200_2011.tgz"), "w:gz") as tar:
        _add(tar, "CUB_200_2011/images.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(ids)).encode())
        _add(
            tar,
            "CUB_200_2011/train_test_split.txt",
            "".join(f"{i + 1} {int(truth[n]['train'])}\n" for i, n in enumerate(ids)).encode(),
        )
        _add(
            tar,
            "CUB_200_2011/bounding_boxes.txt",
            "".join(
                f"{i + 1} " + " ".join(f"{float(v)}" for v in truth[n]["box"]) + "\n" for i, n in enumerate(ids)
            ).encode(),
        )
        for n in ids:
            _add(tar, f"CUB_200_2011/images/{n}", truth[n]["jpeg"])
    with tarfile.open(os.path.join(folder, "segmentations.tgz"), "w:gz") as tar:
        for n in ids:
            _add(tar, f"segmentations/{n[:-4]}.png", cv2.imencode(".png", truth[n]["mask"])[1].tobytes())
    return truth


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory):
    """The TFDS builder run on the archives above through its download manager's manual directory.

    Only the checksum check is switched off: the archives are not the real ones.
    """
    root = tmp_path_factory.mktemp("cub")
    truth = write_cub_archives(str(root / "manual"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tfds.download.DownloadManager, "_register_or_validate_checksums", lambda *a, **k: None)
        folder = tfds_sources.prepare_cub(str(root / "tfds"), str(root / "manual"), val_per_class=1)
    return folder, truth


def test_tfds_cub_is_exported_with_its_boxes_masks_and_splits(cub_root):
    folder, truth = cub_root
    seen = {}
    for name in ("train", "val", "test"):
        split = tfds_sources.cub_split(folder, name)
        assert split.num_classes == 200 and split.has_boxes and split.masks is not None
        for i, image_id in enumerate(split.image_ids):
            t = truth[image_id]
            x, y, w, h = t["box"]
            assert split.labels[i] == t["label"] and tuple(split.sizes[i]) == t["mask"].shape[::-1]
            assert split.boxes[i].tolist() == [[x, y, x + w, y + h]]  # x1 = x + w, as the WSOL metadata writes it
            foreground, ignore = split.masks(i, 64)
            expected = cv2.resize(t["mask"].astype(np.float32), (64, 64), interpolation=cv2.INTER_NEAREST) > 0.5
            np.testing.assert_array_equal(foreground, expected)
            assert not ignore.any()
            with open(split.paths[i], "rb") as f:
                assert f.read() == t["jpeg"]  # bytes unchanged
            seen[image_id] = name
    assert sorted(seen) == sorted(truth)
    assert {i for i, s in seen.items() if s == "test"} == {i for i, t in truth.items() if not t["train"]}
    assert sorted(truth[i]["label"] for i, s in seen.items() if s == "val") == [0, 1, 2]  # one per class
    # Prepared once: a second call finds the finished folder without TFDS.
    assert tfds_sources.prepare_cub(os.path.dirname(folder), None, val_per_class=1) == folder


def test_train_py_runs_on_the_prepared_cub(cub_root, tmp_path):
    folder, _ = cub_root
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--dataset=cub",
            f"--tfds_data_dir={os.path.dirname(folder)}",
            "--cub_val_per_class=1",
            "--image_size=32",
            "--batch_size=3",
            "--epochs=1",
            f"--workdir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "eval_test" / "metrics.json"))["model"]
    assert metrics["num_images"] == 3 and "PxAP" in metrics and "MaxBoxAccV2" in metrics


def test_cub_images_read_back_through_the_pipeline(cub_root):
    folder, truth = cub_root
    split = tfds_sources.cub_split(folder, "train")
    images = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(split, 4, image_size=32)])
    for image, image_id in zip(images, split.image_ids):
        decoded = tf.io.decode_jpeg(truth[image_id]["jpeg"]).numpy()
        np.testing.assert_allclose(image, tf.image.resize(decoded.astype(np.float32), (32, 32)).numpy(), atol=1e-3)
    batch, labels = next(iter(pipeline.training_dataset(split, 3, image_size=32, seed=1)))
    assert batch.shape == (3, 32, 32, 3) and set(labels.numpy()) <= {0, 1, 2}
    sets = next(iter(pipeline.class_set_dataset(split, set_size=2, sets_per_batch=3, image_size=32)))[1].numpy()
    assert sorted(sets.reshape(3, 2)[:, 0]) == [0, 1, 2] and (sets.reshape(3, 2) == sets.reshape(3, 2)[:, :1]).all()


def test_synthetic_metadata_folder_reads_back_identical_boxes_masks_and_images(tmp_path):
    data = synthetic.generate("test", num_classes=3, images_per_class=3, image_size=40, seed=4)
    synthetic.write_metadata_folder(data, str(tmp_path), "test")
    split = splits.metadata_split(
        str(tmp_path / "images"),
        str(tmp_path / "metadata" / "test"),
        str(tmp_path / "masks"),
        str(tmp_path / "metadata_masks" / "test"),
    )
    memory = data.as_split()
    assert split.image_ids == memory.image_ids and (split.labels == memory.labels).all()
    assert all((a == b).all() for a, b in zip(split.boxes, memory.boxes)) and (split.sizes == memory.sizes).all()
    for i in range(len(split)):
        for got, want in zip(split.masks(i, 56), memory.masks(i, 56)):
            np.testing.assert_array_equal(got, want)
    on_disk = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(split, 4, image_size=40)])
    np.testing.assert_array_equal(on_disk, data.images.astype(np.float32))  # PNG is lossless
    # The same maps give the same numbers from either source.
    maps = reporting.baseline_maps("center_gaussian", len(split), 56)
    results = []
    for source in (split, memory):
        run = evaluation.SplitEvaluation(source, Protocol(0.01, 56, 0.2))
        run.update(maps)
        results.append(run.result())
    assert results[0] == results[1] and "PxAP" in results[0]


def write_imagenet_style_folder(root) -> list[list[tuple[int, int, int, int]]]:
    """ILSVRC-style val folder: JPEGs of several sizes, two or three boxes an image, 0-based labels."""
    rng = np.random.default_rng(7)
    sizes = [(80, 60), (50, 100), (120, 90)]
    all_boxes = [
        [(5, 5, 30, 40), (40, 10, 70, 50)],
        [(0, 0, 49, 20), (10, 30, 40, 90), (20, 60, 45, 99)],
        [(30, 20, 100, 80), (2, 2, 20, 20)],
    ]
    lines = {"image_ids.txt": [], "class_labels.txt": [], "image_sizes.txt": [], "localization.txt": []}
    for k, ((w, h), boxes) in enumerate(zip(sizes, all_boxes)):
        image_id = f"val/ILSVRC2012_val_{k + 1:08d}.JPEG"
        os.makedirs(root / "images" / "val", exist_ok=True)
        cv2.imwrite(str(root / "images" / image_id), rng.integers(0, 255, (h, w, 3)).astype(np.uint8))
        lines["image_ids.txt"].append(image_id)
        lines["class_labels.txt"].append(f"{image_id},{k}")
        lines["image_sizes.txt"].append(f"{image_id},{w},{h}")
        lines["localization.txt"] += [f"{image_id},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in boxes]
    os.makedirs(root / "metadata" / "val")
    for name, text in lines.items():
        (root / "metadata" / "val" / name).write_text("\n".join(text))  # last line without a newline
    return all_boxes


def test_imagenet_style_folder_with_several_boxes_per_image(tmp_path):
    all_boxes = write_imagenet_style_folder(tmp_path)
    split = splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata" / "val"))
    assert [b.tolist() for b in split.boxes] == [[list(b) for b in boxes] for boxes in all_boxes]
    r = 64
    run = evaluation.SplitEvaluation(split, Protocol(0.01, r, 0.2))
    expected = [[evaluation.resize_box(b, split.sizes[i], r) for b in boxes] for i, boxes in enumerate(all_boxes)]
    assert [g.tolist() for g in run.gt_boxes] == [[list(b) for b in e] for e in expected]
    # A map that lights only the last box of each image: IoU 1 against that box (best over the GT boxes).
    maps = np.zeros((3, r, r), np.float32)
    for m, boxes in zip(maps, expected):
        x0, y0, x1, y1 = boxes[-1]
        m[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    run.update(maps)
    assert run.result()["MaxBoxAccV2"] == 100.0
    images = np.concatenate([x.numpy() for x, _ in pipeline.eval_dataset(split, 2, image_size=48)])
    assert images.shape == (3, 48, 48, 3)  # each whole image resized, no crop


def test_imagenet_training_stream_from_tfds():
    with tfds.testing.mock_data(num_examples=6):
        split = tfds_sources.imagenet_train(None, shuffle_buffer=4)
        assert len(split) == 6 and split.num_classes == 1000 and not split.indexable
        images, labels = next(iter(pipeline.training_dataset(split, 3, image_size=32, seed=0)))
    assert images.shape == (3, 32, 32, 3) and labels.dtype == tf.int32
    with pytest.raises(ValueError, match="class-set batches"):
        pipeline.class_set_dataset(split, 2, 2, image_size=32)


@pytest.mark.parametrize(
    "damage,message",
    [
        ("missing", "No such file"),
        ("truncated", "truncated image"),
        ("garbage", "not a JPEG, PNG, GIF or BMP image"),
    ],
)
def test_a_bad_image_is_an_error_naming_the_file(tmp_path, damage, message):
    data = synthetic.generate("val", num_classes=2, images_per_class=2, image_size=32)
    synthetic.write_metadata_folder(data, str(tmp_path), "val")
    bad = tmp_path / "images" / data.image_ids[2]
    if damage == "missing":
        os.remove(bad)
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:-30])
    else:
        bad.write_bytes(b"<html>not found</html>")
    split = splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata" / "val"))
    for ds in (pipeline.eval_dataset(split, 2, 32), pipeline.training_dataset(split, 4, 32, seed=0)):
        with pytest.raises(tf.errors.OpError, match=message) as error:
            list(ds)
        assert str(bad) in str(error.value)


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(metadata.MetadataError, match="image_ids.txt: file not found"):
        splits.metadata_split(str(tmp_path), str(tmp_path / "metadata" / "train"), localization=False)
    data = synthetic.generate("val", num_classes=2, images_per_class=1, image_size=32)
    synthetic.write_metadata_folder(data, str(tmp_path), "val")
    with pytest.raises(metadata.MetadataError, match="a mask root is needed"):
        splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata_masks" / "val"))
    train_only = splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata" / "val"), localization=False)
    assert not train_only.has_boxes and train_only.masks is None and len(train_only) == 2
