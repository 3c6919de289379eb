"""Synthetic benchmark determinism and ground truth; metadata folders."""

import os

import cv2
import numpy as np
import pytest

from keras_wsol.data import metadata, splits, synthetic


def test_generator_is_deterministic_for_a_seed():
    a = synthetic.generate("val", num_classes=3, images_per_class=2, image_size=48, seed=5)
    b = synthetic.generate("val", num_classes=3, images_per_class=2, image_size=48, seed=5)
    c = synthetic.generate("val", num_classes=3, images_per_class=2, image_size=48, seed=6)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.images, c.images)


def test_boxes_and_masks_agree_with_drawn_pixels():
    rng = np.random.default_rng(3)
    for label in range(6):
        image, background, mask = synthetic.render(rng, label, 64)
        changed = (image != background).any(axis=-1)
        assert not (changed & ~mask).any()  # nothing drawn outside the mask
        assert changed[mask].mean() > 0.9  # and the mask is where the object was drawn
        colour, _ = synthetic.badge_of(label)
        assert (np.abs(image[mask].astype(int) - colour).sum(-1) == 0).any()  # the badge is on the object
    split = synthetic.generate("test", num_classes=2, images_per_class=3, image_size=40)
    for box, mask in zip(split.boxes, split.masks):
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_metadata_folder_round_trip(tmp_path):
    split = synthetic.generate("val", num_classes=2, images_per_class=2, image_size=40)
    synthetic.write_metadata_folder(split, str(tmp_path), "val")
    boxes = metadata.read_metadata(str(tmp_path / "metadata" / "val"))
    assert boxes.image_ids == split.image_ids
    for image_id, box, label, image in zip(split.image_ids, split.boxes, split.labels, split.images):
        assert boxes.boxes[image_id] == [tuple(float(v) for v in box)]
        assert boxes.labels[image_id] == label and boxes.sizes[image_id] == (40, 40)
        np.testing.assert_array_equal(cv2.imread(str(tmp_path / "images" / image_id))[..., ::-1], image)
    masks = metadata.read_metadata(str(tmp_path / "metadata_masks" / "val"))
    assert masks.is_mask_dataset
    for image_id, mask in zip(split.image_ids, split.masks):
        fg, ignore = metadata.load_masks(masks, image_id, str(tmp_path / "masks"), 40)
        np.testing.assert_array_equal(fg, mask)
        assert not ignore.any()


def test_metadata_errors_name_file_and_line(tmp_path):
    files = {
        "image_ids.txt": "a.jpg\nb.jpg\n",
        "class_labels.txt": "a.jpg,0\nb.jpg,x\n",
        "image_sizes.txt": "a.jpg,10,10\nb.jpg,10,10",
        "localization.txt": "a.jpg,1,1,5,5\nb.jpg,1,1,5,5\na.jpg,0,0,2,2",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(metadata.MetadataError, match=r"class_labels.txt:2: 'x' is not a valid int"):
        metadata.read_metadata(str(tmp_path))
    (tmp_path / "class_labels.txt").write_text("a.jpg,0\nb.jpg,1\n")
    meta = metadata.read_metadata(str(tmp_path))
    assert meta.boxes["a.jpg"] == [(1.0, 1.0, 5.0, 5.0), (0.0, 0.0, 2.0, 2.0)]  # several boxes per image
    (tmp_path / "localization.txt").write_text("a.jpg,1,1,5\n")
    with pytest.raises(metadata.MetadataError, match=r"localization.txt:1: expected 3 or 5"):
        metadata.read_metadata(str(tmp_path))
    os.remove(tmp_path / "image_sizes.txt")
    with pytest.raises(metadata.MetadataError, match="image_sizes.txt: file not found"):
        metadata.read_metadata(str(tmp_path))


GOOD = {
    "image_ids.txt": "a.jpg\nb.jpg\n",
    "class_labels.txt": "a.jpg,0\nb.jpg,1\n",
    "image_sizes.txt": "a.jpg,10,8\nb.jpg,10,8\n",
    "localization.txt": "a.jpg,1,1,5,5\nb.jpg,0,0,10,8\n",
}


@pytest.mark.parametrize(
    "name,text,message",
    [
        (
            "image_ids.txt",
            "a.jpg\nb.jpg\na.jpg\n",
            r"image_ids.txt:3: image 'a.jpg' is listed twice \(first on line 1\)",
        ),
        ("class_labels.txt", "a.jpg,0\nb.jpg,1\na.jpg,2\n", r"class_labels.txt:3: a second line for image 'a.jpg'"),
        ("class_labels.txt", "a.jpg,0\nb.jpg,-1\n", r"class_labels.txt:2: class label must be >= 0, got -1"),
        ("image_sizes.txt", "a.jpg,10,8\nb.jpg,10,8\nb.jpg,12,8\n", r"image_sizes.txt:3: a second line for image"),
        ("localization.txt", "a.jpg,1,1,5,5\nb.jpg,0,0,30,8\n", r"localization.txt:2: box \(0, 0, 30, 8\) is outside"),
        ("localization.txt", "a.jpg,-3,1,5,5\nb.jpg,0,0,10,8\n", r"localization.txt:1: box \(-3, 1, 5, 5\) is outside"),
    ],
)
def test_metadata_refuses_duplicates_negative_labels_and_boxes_outside_the_image(tmp_path, name, text, message):
    for file, content in {**GOOD, name: text}.items():
        (tmp_path / file).write_text(content)
    with pytest.raises(metadata.MetadataError, match=message):
        metadata.read_metadata(str(tmp_path))


def test_a_byte_order_mark_is_not_part_of_the_first_id(tmp_path):
    for file, content in GOOD.items():
        (tmp_path / file).write_text(content, encoding="utf-8-sig")  # as some editors save
    meta = metadata.read_metadata(str(tmp_path))
    assert meta.image_ids == ["a.jpg", "b.jpg"] and meta.sizes["a.jpg"] == (10, 8)


def test_image_files_are_checked_for_existence_damage_and_size_before_training(tmp_path):
    data = synthetic.generate("val", num_classes=2, images_per_class=2, image_size=40)
    synthetic.write_metadata_folder(data, str(tmp_path), "val")
    split = splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata" / "val"))
    splits.check_image_files(split, "val")  # as written: no problem
    sizes = tmp_path / "metadata" / "val" / "image_sizes.txt"
    sizes.write_text(sizes.read_text().replace(",40,40", ",80,60", 1))
    os.remove(split.paths[1])
    png = open(split.paths[2], "rb").read()
    open(split.paths[2], "wb").write(png[:60] + b"\0" * 40 + png[100:])  # damaged inside, end marker intact
    split = splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata" / "val"))
    with pytest.raises(metadata.MetadataError) as error:
        splits.check_image_files(split, "val")
    text = str(error.value)
    assert "val split: 3 image file(s) with problems" in text
    assert f"{split.paths[0]}: the file is 40x40, image_sizes.txt says 80x60" in text
    assert f"{split.paths[1]}: no such file" in text and f"{split.paths[2]}: not a readable image" in text


def test_splits_that_disagree_are_refused():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    stray = splits.Split.from_arrays(images, np.array([0, 1, 1, 9]), image_ids=["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"classes 2..8 have no training image.*image 'd' has label 9"):
        splits.check_splits({"train": stray})
    train = splits.Split.from_arrays(images, np.array([0, 1, 1, 0]))
    empty = splits.Split.from_arrays(images[:0], np.zeros(0, np.int64), num_classes=2)
    with pytest.raises(ValueError, match="val split: no images"):
        splits.check_splits({"train": train, "val": empty})
    splits.check_splits({"train": train, "test": splits.Split.from_arrays(images[:2], np.array([1, 0]))})


def test_the_cache_fingerprint_changes_when_the_files_or_labels_change(tmp_path):
    data = synthetic.generate("val", num_classes=2, images_per_class=2, image_size=40)
    synthetic.write_metadata_folder(data, str(tmp_path), "val")

    def current():
        return splits.fingerprint(
            splits.metadata_split(str(tmp_path / "images"), str(tmp_path / "metadata" / "val")), 40
        )

    first = current()
    assert current() == first
    path = tmp_path / "images" / data.image_ids[0]
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file was replaced
    assert current() != first


def test_boxes_that_look_normalized_are_refused_or_scaled_with_the_flag():
    images = np.zeros((2, 40, 40, 3), np.uint8)
    split = splits.Split.from_arrays(images, np.array([0, 1]), boxes=[[0.1, 0.25, 0.5, 1.0], [0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(
        metadata.MetadataError, match=r"test split: every box coordinate lies in \[0, 1\].*--boxes_norm"
    ):
        splits.pixel_boxes(split, "test", normalized=False)
    scaled = splits.pixel_boxes(split, "test", normalized=True)
    assert scaled.boxes[0].tolist() == [[4.0, 10.0, 19.0, 39.0]] and scaled.boxes[1].tolist() == [
        [0.0, 0.0, 39.0, 39.0]
    ]
    pixels = splits.Split.from_arrays(images, np.array([0, 1]), boxes=[[1, 2, 30, 39], [0, 0, 1, 1]])
    assert splits.pixel_boxes(pixels, "test", normalized=False) is pixels  # one box beyond 1 px: pixels
