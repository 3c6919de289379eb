"""Synthetic benchmark determinism and ground truth; metadata folders."""

import os

import cv2
import numpy as np
import pytest

from keras_wsol.data import metadata, synthetic


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
