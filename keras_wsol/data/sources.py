"""Readers of the annotation formats people's photos come in: Pascal VOC, COCO, YOLO and Tiny-ImageNet-200.

Each reader turns a source into :class:`Annotation` records: an image file,
its objects (class key and box) and, where the source has one, its split.
Boxes come out in this library's convention, whatever the source's:
**0-based inclusive pixel coordinates** ``x0, y0, x1, y1`` of the image as
it is displayed (docs/DATA.md). The conversion of each source:

- Pascal VOC: ``<bndbox>`` is 1-based inclusive (the VOC devkit): each corner minus 1.
- COCO: ``bbox = [x, y, w, h]`` with ``x + w`` one past the right edge: ``x1 = x + w - 1``.
- YOLO: normalized centre and size, ``x0 = (cx - w / 2) W``, ``x1 = (cx + w / 2) W - 1``;
  W and H are read from the image file (YOLO files carry none).
- Tiny-ImageNet-200: 0-based inclusive already (its boxes reach 63 on 64 px photos).

A malformed annotation is a :class:`SourceError` naming the file and line
(or XML element); readers never open images (:mod:`keras_wsol.data.convert`
does).

Example:
    >>> import os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> for folder in ("Annotations", "JPEGImages"):
    ...     os.makedirs(os.path.join(root, folder))
    >>> xml = ("<annotation><filename>a.jpg</filename><size><width>0</width><height>0</height></size>"
    ...        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>20</ymax>"
    ...        "</bndbox></object></annotation>")
    >>> _ = open(os.path.join(root, "Annotations", "a.xml"), "w").write(xml)
    >>> source = read_voc(root)
    >>> a = source.annotations[0]
    >>> a.image, a.objects[0].class_key, a.objects[0].box, a.size
    ('JPEGImages/a.jpg', 'dog', (0.0, 1.0, 9.0, 19.0), None)
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import xml.etree.ElementTree as ET

#: The source formats :func:`read_source` knows.
FORMATS = ("voc", "coco", "yolo", "tiny_imagenet")
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class SourceError(ValueError):
    """An annotation file or line that does not follow its format; the message names it."""


@dataclasses.dataclass(frozen=True)
class Object:
    """One annotated object: its class key, its box, and where the annotation says so (for messages)."""

    class_key: str
    box: tuple[float, float, float, float]  # 0-based inclusive pixels; YOLO: normalized (cx, cy, w, h)
    where: str


@dataclasses.dataclass
class Annotation:
    """One image of a source: path relative to the source root, objects, split, annotated size."""

    image: str
    objects: list[Object]
    where: str
    split: str | None = None
    size: tuple[int, int] | None = None  # (width, height) the annotation states; None when it states none (or 0)
    normalized: bool = False  # YOLO: boxes are (cx, cy, w, h) in [0, 1] until the image's size is known
    label: str | None = None  # the image's class where the source states one apart from its objects


@dataclasses.dataclass
class Source:
    """What a reader found: the annotations, the classes in id order, and the names of classes (key -> aliases)."""

    root: str
    annotations: list[Annotation]
    class_keys: list[str]
    aliases: dict[str, list[str]]  # key -> other names it may be selected by (first: the display name)

    def display_name(self, key: str) -> str:
        names = self.aliases.get(key)
        return names[0] if names else key


def _float(text: str | None, where: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise SourceError(f"{where}: {text!r} is not a number") from None


def _int(text: str | None, where: str) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        raise SourceError(f"{where}: {text!r} is not a whole number") from None


def _voc_split_lists(root: str) -> dict[str, str]:
    """``stem -> split`` from ``ImageSets/Main/{train,val,trainval,test}.txt``, the files present."""
    folder = os.path.join(root, "ImageSets", "Main")
    found = {}
    for name in ("trainval", "train", "val", "test"):
        path = os.path.join(folder, f"{name}.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8-sig") as f:
                found[name] = [line.split()[0] for line in f if line.strip()]
    if "train" in found and "trainval" in found:
        del found["trainval"]  # trainval = train + val
    return {stem: "train" if name == "trainval" else name for name, stems in found.items() for stem in stems}


def _voc_object(element: ET.Element, where: str) -> Object:
    name = (element.findtext("name") or "").strip()
    if not name:
        raise SourceError(f"{where}: <name> is missing or empty")
    box = element.find("bndbox")
    if box is None:
        raise SourceError(f"{where}: <bndbox> is missing")
    corners = [_float(box.findtext(tag), f"{where} <bndbox><{tag}>") for tag in ("xmin", "ymin", "xmax", "ymax")]
    return Object(name, tuple(c - 1 for c in corners), where)


def _voc_image(root: str, images_dir: str | None, xml_rel: str, filename: str) -> str:
    """The image an XML file annotates, relative to ``root``: ``<filename>`` in the images folder or beside the
    XML; else the XML's own stem (or a ``<filename>`` without extension) with an image suffix. Real sets name
    files loosely (``<filename>`` without extension, or the name before a rename)."""
    folders = [f for f in (images_dir, os.path.dirname(xml_rel)) if f is not None]
    base = filename.replace("\\", "/").split("/")[-1]  # a path written by a tool on another machine: its last part
    stems = [os.path.splitext(base)[0], os.path.splitext(os.path.basename(xml_rel))[0]]
    suffixes = IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES)
    candidates = [os.path.join(f, name) for f in folders for name in dict.fromkeys((filename, base))]
    candidates += [os.path.join(f, s + suffix) for f in folders for s in stems for suffix in suffixes]
    found = next((c for c in candidates if os.path.isfile(os.path.join(root, c))), None)
    return found or candidates[0]


def _child_folder(root: str, names: tuple[str, ...]) -> str | None:
    """The first child folder of ``root`` whose lower-case name is one of ``names``."""
    children = {c.lower(): c for c in sorted(os.listdir(root)) if os.path.isdir(os.path.join(root, c))}
    return next((children[n] for n in names if n in children), None)


def read_voc(root: str) -> Source:
    """A Pascal VOC folder: every ``*.xml`` below ``root`` (``Annotations/``, ``annotations/``, ``annots/``, or
    beside the images), images in ``JPEGImages/`` or ``images/`` (any case) or beside the XML.

    ``<filename>`` names the image (:func:`_voc_image` when it is loose);
    ``<size>`` is kept only as a hint (real files say 0, or the size before an
    EXIF rotation). Splits come from ``ImageSets/Main`` when it exists; an
    image in none of its lists gets the split ``"unlisted"`` (the converter
    skips it, saying so).
    """
    xml_files = sorted(glob.glob(os.path.join(root, "**", "*.xml"), recursive=True))
    if not xml_files:
        raise SourceError(f"{root}: no *.xml annotation files below it: not a Pascal VOC folder")
    splits = _voc_split_lists(root)
    images_dir = _child_folder(root, ("jpegimages", "images", "imgs"))
    annotations, keys = [], set()
    for path in xml_files:
        rel = os.path.relpath(path, root)
        try:
            tree = ET.parse(path).getroot()
        except ET.ParseError as error:
            raise SourceError(f"{rel}: not valid XML ({error})") from None
        filename = (tree.findtext("filename") or "").strip()
        if not filename:
            raise SourceError(f"{rel}: <filename> is missing")
        size = tree.find("size")
        stated = None
        if size is not None:
            w = _int(size.findtext("width") or "0", f"{rel} <size><width>")
            h = _int(size.findtext("height") or "0", f"{rel} <size><height>")
            stated = (w, h) if w > 0 and h > 0 else None
        objects = [_voc_object(o, f"{rel} <object> {k + 1}") for k, o in enumerate(tree.findall("object"))]
        keys.update(o.class_key for o in objects)
        stem = os.path.splitext(filename)[0]
        split = (
            splits.get(stem, splits.get(os.path.splitext(os.path.basename(path))[0], "unlisted")) if splits else None
        )
        image = _voc_image(root, images_dir, rel, filename)
        annotations.append(Annotation(image, objects, rel, split, stated))
    return Source(root, annotations, sorted(keys), {})


def read_coco(json_path: str, image_root: str | None = None) -> Source:
    """A COCO instances JSON; images under ``image_root`` (default: the JSON's folder).

    ``iscrowd`` annotations are kept as boxes (they are objects of the
    class). Classes in category-id order.
    """
    if not os.path.isfile(json_path):
        raise SourceError(f"{json_path}: no such file (COCO takes the instances JSON file as its source)")
    try:
        with open(json_path, encoding="utf-8-sig") as f:
            data = json.load(f)
    except json.JSONDecodeError as error:
        raise SourceError(f"{json_path}:{error.lineno}: not valid JSON ({error.msg})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SourceError(f"{json_path}: no {key!r} list: not a COCO instances file")
    name = os.path.basename(json_path)
    categories = {}
    for k, c in enumerate(data["categories"]):
        if "id" not in c or "name" not in c:
            raise SourceError(f"{name}: categories[{k}] needs 'id' and 'name'")
        categories[c["id"]] = str(c["name"])
    images = {}
    for k, image in enumerate(data["images"]):
        if "id" not in image or "file_name" not in image:
            raise SourceError(f"{name}: images[{k}] needs 'id' and 'file_name'")
        w, h = int(image.get("width") or 0), int(image.get("height") or 0)
        images[image["id"]] = Annotation(
            image["file_name"], [], f"{name} images[{k}]", None, (w, h) if w > 0 and h > 0 else None
        )
    for k, a in enumerate(data["annotations"]):
        where = f"{name} annotations[{k}]"
        if a.get("image_id") not in images:
            raise SourceError(f"{where}: image_id {a.get('image_id')!r} is not in 'images'")
        if a.get("category_id") not in categories:
            raise SourceError(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        bbox = a.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4:
            raise SourceError(f"{where}: bbox must be [x, y, width, height], got {bbox!r}")
        x, y, w, h = (_float(v, f"{where} bbox") for v in bbox)
        images[a["image_id"]].objects.append(Object(categories[a["category_id"]], (x, y, x + w - 1, y + h - 1), where))
    keys = [categories[i] for i in sorted(categories)]
    if len(set(keys)) != len(keys):
        raise SourceError(f"{name}: two categories share one name")
    root = image_root or os.path.dirname(os.path.abspath(json_path))
    return Source(root, list(images.values()), keys, {})


def _yolo_names(root: str, names_file: str | None) -> list[str]:
    candidates = [names_file] if names_file else [os.path.join(root, n) for n in ("classes.txt", "obj.names")]
    for path in candidates:
        if path and os.path.isfile(path):
            with open(path, encoding="utf-8-sig") as f:
                return [line.strip() for line in f if line.strip()]
    yaml_path = os.path.join(root, "data.yaml")
    if not names_file and os.path.isfile(yaml_path):
        return _yaml_names(yaml_path)
    raise SourceError(
        f"{names_file or root}: no class names: give --names=FILE (one name per line, line k = class k), "
        "or put classes.txt, obj.names or data.yaml (names: [...]) in the source folder"
    )


def _yaml_names(path: str) -> list[str]:
    """``names:`` of an Ultralytics data.yaml: a flow list ``[a, b]`` or a block of ``k: name`` / ``- name`` lines."""
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    for k, line in enumerate(lines):
        if line.strip().startswith("names:"):
            rest = line.split(":", 1)[1].strip()
            if rest.startswith("["):
                return [n.strip().strip("'\"") for n in rest.strip("[]").split(",") if n.strip()]
            names = []
            for item in lines[k + 1 :]:
                if not item.startswith((" ", "\t", "-")):
                    break
                text = item.strip().lstrip("-").strip()
                names.append((text.split(":", 1)[1] if ":" in text else text).strip().strip("'\""))
            return names
    raise SourceError(f"{path}: no 'names:' entry")


def read_yolo(root: str, names_file: str | None = None) -> Source:
    """A YOLO folder: ``images/[split/]x.jpg`` with ``labels/[split/]x.txt``, or images and labels side by side.

    Each label line is ``class cx cy w h``, normalized to [0, 1]. An image
    without a label file has no object. Split folders named train, val or
    test give the source's split.
    """
    names = _yolo_names(root, names_file)
    images_dir = os.path.join(root, "images")
    base = images_dir if os.path.isdir(images_dir) else root
    image_files = sorted(
        p for p in glob.glob(os.path.join(base, "**", "*"), recursive=True) if p.lower().endswith(IMAGE_SUFFIXES)
    )
    if not image_files:
        raise SourceError(f"{root}: no image files found (images/ or the folder itself)")
    annotations = []
    for path in image_files:
        rel_to_base = os.path.relpath(path, base)
        stem = os.path.splitext(rel_to_base)[0]
        label = os.path.join(root, "labels", stem) if base == images_dir else os.path.splitext(path)[0]
        label += ".txt"
        top = rel_to_base.split(os.sep)[0]
        split = top if top in SPLITS and os.sep in rel_to_base else None
        objects = []
        rel_label = os.path.relpath(label, root)
        if os.path.isfile(label):
            with open(label, encoding="utf-8-sig") as f:
                for number, line in enumerate(f.read().splitlines(), start=1):
                    if not line.strip():
                        continue
                    where = f"{rel_label}:{number}"
                    parts = line.split()
                    if len(parts) != 5:
                        raise SourceError(f"{where}: expected 'class cx cy w h', got {line!r}")
                    k = _int(parts[0], where)
                    if not 0 <= k < len(names):
                        raise SourceError(f"{where}: class {k} is not in the {len(names)} class names")
                    cx, cy, w, h = (_float(v, where) for v in parts[1:])
                    if not all(0 <= v <= 1 for v in (cx, cy)) or not 0 < w <= 1 or not 0 < h <= 1:
                        raise SourceError(f"{where}: values must be normalized to [0, 1], got {line!r}")
                    objects.append(Object(names[k], (cx, cy, w, h), where))
        annotations.append(Annotation(os.path.relpath(path, root), objects, rel_label, split, None, normalized=True))
    return Source(root, annotations, names, {})


def _tiny_lines(path: str, fields: int) -> list[tuple[str, list[str]]]:
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such file (not a Tiny-ImageNet-200 folder?)")
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f.read().splitlines(), start=1):
            if line.strip():
                parts = line.split("\t")
                if len(parts) != fields:
                    raise SourceError(f"{path}:{number}: expected {fields} tab-separated fields, got {line!r}")
                out.append((f"{os.path.basename(path)}:{number}", parts))
    return out


def read_tiny_imagenet(root: str) -> Source:
    """Tiny-ImageNet-200: ``train/<wnid>/<wnid>_boxes.txt`` (training) and ``val/val_annotations.txt``.

    Its val split becomes the test split (its own test split has no labels);
    classes are ``wnids.txt``'s WordNet ids, selectable by any lemma of
    ``words.txt`` too.
    """
    wnids = [parts[0].strip() for _, parts in _tiny_lines(os.path.join(root, "wnids.txt"), 1)]
    words = {}
    if os.path.isfile(os.path.join(root, "words.txt")):
        words = {p[0]: p[1] for _, p in _tiny_lines(os.path.join(root, "words.txt"), 2)}
    known = set(wnids)
    annotations = []
    for wnid in wnids:
        boxes_file = os.path.join(root, "train", wnid, f"{wnid}_boxes.txt")
        if not os.path.isfile(boxes_file):  # its photos have no box: each is reported as having no object
            folder = os.path.join("train", wnid, "images")
            for name in sorted(os.listdir(os.path.join(root, folder))):
                where = f"{folder}/{name} (no {wnid}_boxes.txt)"
                annotations.append(Annotation(os.path.join(folder, name), [], where, "train", label=wnid))
            continue
        for where, (name, *box) in _tiny_lines(boxes_file, 5):
            corners = tuple(float(_int(v, where)) for v in box)
            image = os.path.join("train", wnid, "images", name)
            annotations.append(Annotation(image, [Object(wnid, corners, where)], where, "train"))
    for where, (name, wnid, *box) in _tiny_lines(os.path.join(root, "val", "val_annotations.txt"), 6):
        if wnid not in known:
            raise SourceError(f"{where}: {wnid} is not in wnids.txt")
        corners = tuple(float(_int(v, where)) for v in box)
        image = os.path.join("val", "images", name)
        annotations.append(Annotation(image, [Object(wnid, corners, where)], where, "test"))
    aliases = {}
    for wnid in wnids:
        lemmas = [w.strip() for w in words.get(wnid, "").split(",") if w.strip()]
        aliases[wnid] = lemmas + ([words[wnid]] if len(lemmas) > 1 else [])
    return Source(root, annotations, wnids, aliases)


def read_source(kind: str, source: str, names_file: str | None = None, image_root: str | None = None) -> Source:
    """Dispatch to the reader of ``kind`` (one of :data:`FORMATS`)."""
    if kind not in FORMATS:
        raise SourceError(f"unknown format {kind!r}: one of {', '.join(FORMATS)}")
    if kind == "coco":
        return read_coco(source, image_root)
    if not os.path.isdir(source):
        raise SourceError(f"{source}: no such folder")
    if kind == "voc":
        return read_voc(source)
    if kind == "yolo":
        return read_yolo(source, names_file)
    return read_tiny_imagenet(source)
