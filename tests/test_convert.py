"""The converters: VOC, COCO, YOLO and Tiny-ImageNet into metadata folders, against hand-written expected lines."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from test_cli import TINY, run, run_reporting_imports

from keras_wsol.data import convert, metadata
from keras_wsol.data.sources import SourceError

RNG = np.random.default_rng(0)


def noise(width, height):
    """A random RGB picture: no two test images share their bytes unless a test copies one."""
    return Image.fromarray(RNG.integers(0, 255, (height, width, 3), np.uint8))


def lines(folder, name):
    with open(os.path.join(folder, name)) as f:
        return f.read().splitlines()


def voc_xml(filename, objects, size=(0, 0)):
    body = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
        f"<ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{body}</annotation>"
    )


@pytest.fixture
def voc(tmp_path):
    """A VOC folder with every case the converter must handle (see the comments)."""
    root = tmp_path / "voc"
    images, notes = root / "JPEGImages", root / "Annotations"
    for folder in (images, notes, root / "ImageSets" / "Main"):
        folder.mkdir(parents=True)
    noise(50, 40).save(images / "a.jpg")  # two boxes of one class
    noise(30, 30).save(images / "b.jpg")  # two classes: not a WSOL example
    noise(30, 30).convert("P").save(images / "c.png")  # palette PNG; the XML says width 0
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:4, :4] = 255  # top-left of the stored pixels: top-right once displayed (orientation 6)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(images / "d.jpg", exif=exif, quality=100)
    noise(30, 20).convert("CMYK").save(images / "e.jpg")  # CMYK JPEG
    noise(30, 30).save(images / "g.jpg")  # its box is outside the image
    (images / "h.jpg").write_bytes((images / "a.jpg").read_bytes())  # a duplicate of a.jpg
    noise(30, 30).save(images / "t.jpg")
    (images / "t.jpg").write_bytes((images / "t.jpg").read_bytes()[:-200])  # cut short
    xmls = {
        "a": voc_xml("a.jpg", [("dog", (1, 1, 10, 20)), ("dog", (20, 5, 50, 40))], (50, 40)),
        "b": voc_xml("b.jpg", [("dog", (1, 1, 5, 5)), ("cat", (6, 6, 9, 9))]),
        "c": voc_xml("c.png", [("cat", (5, 5, 30, 30))]),
        "d": voc_xml("d.jpg", [("cat", (1, 1, 20, 10))], (20, 40)),  # drawn on the displayed picture
        "e": voc_xml("e.jpg", [("dog", (2, 2, 30, 20))], (99, 99)),  # a wrong size in the XML
        "f": voc_xml("f.jpg", [("dog", (1, 1, 5, 5))]),  # no image file
        "g": voc_xml("g.jpg", [("dog", (1, 1, 45, 10))]),
        "h": voc_xml("h.jpg", [("dog", (1, 1, 5, 5))]),
        "t": voc_xml("t.jpg", [("dog", (1, 1, 5, 5))]),
    }
    for stem, text in xmls.items():
        (notes / f"{stem}.xml").write_text(text)
    for split, stems in (("train", "abdfght"), ("val", "c"), ("test", "e")):
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
    return root


def test_voc_converts_to_the_expected_lines_and_reports_what_it_skipped(voc, tmp_path):
    out = str(tmp_path / "out")
    result = convert.convert("voc", str(voc), out)
    train, val, test = (os.path.join(out, s) for s in ("train", "val", "test"))
    assert lines(train, "image_ids.txt") == ["JPEGImages/a.jpg", "JPEGImages/d.jpg.png"]
    assert lines(train, "class_labels.txt") == ["JPEGImages/a.jpg,1", "JPEGImages/d.jpg.png,0"]  # cat 0, dog 1
    assert lines(train, "image_sizes.txt") == ["JPEGImages/a.jpg,50,40", "JPEGImages/d.jpg.png,20,40"]
    assert lines(train, "localization.txt") == [  # VOC's 1-based corners minus one
        "JPEGImages/a.jpg,0,0,9,19",
        "JPEGImages/a.jpg,19,4,49,39",
        "JPEGImages/d.jpg.png,0,0,19,9",
    ]
    assert lines(val, "localization.txt") == ["JPEGImages/c.png,4,4,29,29"] and lines(val, "image_sizes.txt") == [
        "JPEGImages/c.png,30,30"
    ]
    assert lines(test, "localization.txt") == ["JPEGImages/e.jpg,1,1,29,19"]
    assert lines(test, "image_sizes.txt") == ["JPEGImages/e.jpg,30,20"]  # the file's size, not the XML's 99x99
    assert lines(out, "class_names.txt") == ["cat", "dog"] and result.class_names == ["cat", "dog"]
    summary = result.summary
    for text in (
        "objects of several classes; first: Annotations/b.xml: cat, dog",
        "image file missing; first: " + str(voc / "JPEGImages" / "f.jpg"),
        "box (0, 0, 44, 9) outside the 30x30 image",
        "Annotations/g.xml",
        "duplicate file; first: " + str(voc / "JPEGImages" / "h.jpg"),
        "damaged image file",
        "EXIF-rotated: boxes on the displayed image, written upright",
        "annotation states a size the file does not have",
    ):
        assert text in summary, text
    assert open(os.path.join(out, "summary.txt")).read() == summary
    # The rotated photo is written upright: the stored top-left corner is now the top-right one.
    upright = np.asarray(Image.open(os.path.join(out, "images", "JPEGImages", "d.jpg.png")))
    assert upright.shape == (40, 20, 3) and upright[:3, -3:].mean() > 200 and upright[:3, :3].mean() < 50
    # Linked photos are the source's bytes; the metadata reads back.
    linked = open(os.path.join(out, "images", "JPEGImages", "a.jpg"), "rb").read()
    assert linked == (voc / "JPEGImages/a.jpg").read_bytes()
    assert metadata.read_metadata(train).boxes["JPEGImages/a.jpg"] == [(0, 0, 9, 19), (19, 4, 49, 39)]


def test_strict_refuses_naming_the_file_and_nothing_is_written(voc, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(convert.ConversionError, match=r"Annotations/b.xml: objects of several classes.*--strict"):
        convert.convert("voc", str(voc), str(out), strict=True)
    assert not out.exists() and os.listdir(tmp_path) == ["voc"]  # no half-written folder either
    convert.convert("voc", str(voc), str(out))
    with pytest.raises(convert.ConversionError, match="exists; give --overwrite"):
        convert.convert("voc", str(voc), str(out))


def test_voc_zero_size_xml_is_read_from_the_file_and_a_bad_element_is_named(tmp_path):
    (tmp_path / "Annotations").mkdir()
    noise(8, 8).save(tmp_path / "x.jpg")
    (tmp_path / "Annotations" / "x.xml").write_text(
        "<annotation><filename>x.jpg</filename><object><name>dog</name><bndbox><xmin>a</xmin></bndbox></object>"
        "</annotation>"
    )
    with pytest.raises(SourceError, match=r"Annotations/x.xml <object> 1 <bndbox><xmin>: 'a' is not a number"):
        convert.convert("voc", str(tmp_path), str(tmp_path / "out"))


def test_coco_converts_bboxes_to_inclusive_pixels(tmp_path):
    for name in ("a", "b", "c"):
        noise(40, 30).save(tmp_path / f"{name}.jpg")
    data = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30},
            {"id": 2, "file_name": "b.jpg", "width": 40, "height": 30},
            {"id": 3, "file_name": "c.jpg", "width": 40, "height": 30},
        ],
        "categories": [{"id": 7, "name": "person"}, {"id": 3, "name": "bike"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [5.5, 5, 10, 20], "iscrowd": 1},
            {"id": 3, "image_id": 2, "category_id": 7, "bbox": [0, 0, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]},
            {"id": 5, "image_id": 3, "category_id": 3, "bbox": [30, 0, 20, 10]},
        ],
    }
    (tmp_path / "instances.json").write_text(json.dumps(data))
    out = str(tmp_path / "out")
    result = convert.convert("coco", str(tmp_path / "instances.json"), out, split=(100, 0, 0))
    train = os.path.join(out, "train")
    assert lines(train, "localization.txt") == ["a.jpg,0,0,9,9", "a.jpg,5.5,5,14.5,24"]
    assert lines(train, "class_labels.txt") == ["a.jpg,0"] and result.class_names == ["person"]  # bike: no image
    assert "instances.json annotations[4]: box (30, 0, 49, 9) outside the 40x30 image" in result.summary
    assert "instances.json images[1]: bike, person" in result.summary
    assert lines(os.path.join(out, "test"), "image_ids.txt") == []
    data["annotations"][0]["category_id"] = 99
    (tmp_path / "instances.json").write_text(json.dumps(data))
    with pytest.raises(SourceError, match=r"instances.json annotations\[0\]: category_id 99 is not in 'categories'"):
        convert.convert("coco", str(tmp_path / "instances.json"), str(tmp_path / "out2"))


def test_yolo_denormalizes_with_the_file_size_and_follows_its_split_folders(tmp_path):
    for split, stems in (("train", ("p", "q", "r", "s")), ("val", ("v",))):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        for k, stem in enumerate(stems):
            noise(40, 20).save(tmp_path / "images" / split / f"{stem}.jpg")
            (tmp_path / "labels" / split / f"{stem}.txt").write_text(f"{k % 2} 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("path: .\nnames:\n  0: cat\n  1: dog\n")
    out = str(tmp_path / "out")
    result = convert.convert("yolo", str(tmp_path), out, val_percent=50)
    assert result.counts == {"train": 2, "val": 2, "test": 1}  # YOLO's val split is the test split
    assert lines(os.path.join(out, "test"), "localization.txt") == ["images/val/v.jpg,10,5,29,14"]
    assert lines(out, "class_names.txt") == ["cat", "dog"]
    (tmp_path / "labels" / "train" / "p.txt").write_text("0 0.5 0.5 0.5\n")
    with pytest.raises(SourceError, match=r"labels/train/p.txt:1: expected 'class cx cy w h'"):
        convert.convert("yolo", str(tmp_path), str(tmp_path / "out2"))


def tiny_imagenet(root, train_per_class=6, val_per_class=3):
    """A Tiny-ImageNet-200 layout of two boxed classes and one without a boxes file, 64 px noise photos."""
    wnids = ["n001", "n002", "n003"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n001\tgoldfish, Carassius auratus\nn002\ttabby, tabby cat\nn003\tbroken\n")
    (root / "val" / "images").mkdir(parents=True)
    val = []
    for k, wnid in enumerate(wnids):
        (root / "train" / wnid / "images").mkdir(parents=True)
        boxes = []
        for i in range(train_per_class):
            noise(64, 64).save(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
            boxes.append(f"{wnid}_{i}.JPEG\t{i}\t2\t{40 + i}\t63\n")
        if wnid != "n003":
            (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
            for i in range(val_per_class):
                name = f"val_{k * val_per_class + i}.JPEG"
                noise(64, 64).save(root / "val" / "images" / name)
                val.append(f"{name}\t{wnid}\t0\t{i}\t30\t50\n")
    (root / "val" / "val_annotations.txt").write_text("".join(val))
    return root


def test_tiny_imagenet_val_is_the_test_split_and_classes_are_selected_by_lemma(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny")
    out = str(tmp_path / "out")
    result = convert.convert("tiny_imagenet", str(root), out, classes=["tabby cat", "n001"], val_percent=34)
    assert result.class_names == ["tabby", "goldfish"]  # the order given; the first lemma names a class
    assert result.counts == {"train": 8, "val": 4, "test": 6}
    test = os.path.join(out, "test")
    assert lines(test, "localization.txt")[:2] == ["val/images/val_0.JPEG,0,0,30,50", "val/images/val_1.JPEG,0,1,30,50"]
    assert lines(test, "class_labels.txt")[:1] == ["val/images/val_0.JPEG,1"]
    assert "no object" not in result.summary  # n003 was not selected
    result = convert.convert("tiny_imagenet", str(root), out, overwrite=True, max_per_class=(2, 1, 0))
    assert result.counts == {"train": 4, "val": 2, "test": 6}
    assert "6  no object; first: train/n003/images/n003_0.JPEG (no n003_boxes.txt)" in result.summary
    assert "n003" in result.summary and "classes without a training image dropped: n003" in result.summary
    with pytest.raises(convert.ConversionError, match="'tabby cot' is not a class .* did you mean tabby cat"):
        convert.convert("tiny_imagenet", str(root), str(tmp_path / "x"), classes=["tabby cot"])


def test_a_seeded_split_is_stratified_and_deterministic(tmp_path):
    for k in range(20):
        noise(16, 16).save(tmp_path / f"{k}.png")
        (tmp_path / f"{k}.txt").write_text(f"{k % 2} 0.5 0.5 0.2 0.2\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    first = convert.convert("yolo", str(tmp_path), str(tmp_path / "o1"), split=(60, 20, 20), seed=3)
    again = convert.convert("yolo", str(tmp_path), str(tmp_path / "o2"), split=(60, 20, 20), seed=3)
    other = convert.convert("yolo", str(tmp_path), str(tmp_path / "o3"), split=(60, 20, 20), seed=4)
    assert first.counts == {"train": 12, "val": 4, "test": 4}
    ids = lambda out, s: lines(os.path.join(out, s), "class_labels.txt")  # noqa: E731
    assert ids(first.out, "test") == ids(again.out, "test") != ids(other.out, "test")
    assert sorted(line[-1] for line in ids(first.out, "test")) == ["0", "0", "1", "1"]


def test_the_command_prints_the_summary_needs_no_tensorflow_and_names_bad_input(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny")
    out = str(tmp_path / "out")
    result = run_reporting_imports("convert.py", "tiny_imagenet", str(root), out, "--classes=n001,n002")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "goldfish" in result.stdout and f"--data_root={out}/images --metadata_root={out}" in result.stdout
    assert result.stdout.strip().endswith("IMPORTED []")
    result = run("convert.py", "voc", str(tmp_path / "nowhere"), str(tmp_path / "o2"))
    assert result.returncode == 2 and "nowhere: no such folder" in result.stderr
    result = run("convert.py", "tiny_imagenet", str(root), str(tmp_path / "o"), "--split=50,50")
    assert result.returncode != 0 and "--split=50,50: three whole numbers" in result.stderr


def test_a_converted_folder_trains_and_evaluates_through_the_folder_dataset(tmp_path):
    root = tiny_imagenet(tmp_path / "tiny", train_per_class=8, val_per_class=3)
    out = str(tmp_path / "out")
    convert.convert("tiny_imagenet", str(root), out, classes=["n001", "n002"], val_percent=25)
    flags = ["--dataset=folder", f"--data_root={out}/images", f"--metadata_root={out}"]
    result = run("train.py", f"--workdir={tmp_path}/run", *TINY[:1], "--batch_size=4", "--epochs=1", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "run" / "eval_test" / "metrics.json"))["model"]
    assert metrics["num_images"] == 6 and 0 <= metrics["MaxBoxAccV2"] <= 100
    # The run's class_names.txt names the classes of --images, which takes folders; a repeated name is kept apart.
    (tmp_path / "other").mkdir()
    noise(300, 100).save(tmp_path / "other" / "val_0.JPEG", format="JPEG")
    folder, twin = root / "val" / "images", tmp_path / "other" / "val_0.JPEG"
    result = run("evaluate.py", f"--workdir={tmp_path}/run", f"--images={folder},{twin}", f"--output_dir={tmp_path}/i")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "goldfish (0)" in result.stdout and "tabby (1)" in result.stdout
    assert len(os.listdir(tmp_path / "i")) == 7  # 6 photos of the folder and the twin
    assert Image.open(tmp_path / "i" / "val_0_2_cam.png").size == (500, 250)  # the twin's own, 300 x 100 px
    result = run("evaluate.py", f"--workdir={tmp_path}/run", f"--images={tmp_path}/none*.jpg")
    assert result.returncode == 2 and "none*.jpg: no such image file, folder with images, or matching" in result.stderr


def test_voc_folders_named_loosely_as_real_sets_name_them(tmp_path):
    """annots/ and images/ (lower case), a <filename> without extension, one with another name, a .JPG file, and
    an ImageSets list that leaves an image out."""
    (tmp_path / "annots").mkdir()
    (tmp_path / "images").mkdir()
    for stem, suffix in (("k1", ".jpg"), ("k2", ".JPG"), ("k3", ".jpg"), ("k4", ".jpg")):
        noise(20, 10).save(tmp_path / "images" / f"{stem}{suffix}", format="JPEG")
    for stem, filename in (("k1", "k1"), ("k2", "C:\\labels\\k2.jpg"), ("k3", "renamed.jpg"), ("k4", "k4.jpg")):
        (tmp_path / "annots" / f"{stem}.xml").write_text(voc_xml(filename, [("roo", (1, 1, 20, 10))]))
    source = convert.sources.read_voc(str(tmp_path))
    assert [a.image for a in source.annotations] == ["images/k1.jpg", "images/k2.JPG", "images/k3.jpg", "images/k4.jpg"]
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    for split, stems in (("train", "k1\nk2\n"), ("val", "k3\n"), ("test", "k3\n")):
        (tmp_path / "ImageSets" / "Main" / f"{split}.txt").write_text(stems)
    result = convert.convert("voc", str(tmp_path), str(tmp_path / "out"))
    assert "in none of the source's split lists; first: annots/k4.xml" in result.summary
    assert lines(tmp_path / "out" / "train", "localization.txt") == ["images/k1.jpg,0,0,19,9", "images/k2.JPG,0,0,19,9"]
