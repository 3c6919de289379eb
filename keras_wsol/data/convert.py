"""Convert annotated photos (VOC, COCO, YOLO, Tiny-ImageNet) into a benchmark metadata folder.

The output is the one format the library reads (docs/DATA.md), so every
source reaches training through one loader, ``--dataset=folder``::

    OUT/images/...            the photos (hard links, copies, or re-encoded PNGs; see below)
    OUT/{train,val,test}/     image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt
    OUT/class_names.txt       line k: the name of class k
    OUT/summary.txt           images and boxes per class and split; what was skipped and why

Rules (each a line of the summary when it applies):

- An image's size is read from the file, never from the annotation.
- EXIF orientation: TensorFlow's decoders ignore it, annotation tools and browsers apply it.
  Boxes are taken as drawn on the *displayed* image, and such an image is written upright
  (EXIF applied) as a PNG, unless the annotation states the stored size and not the displayed
  one, in which case the boxes were drawn on the stored pixels and the file is used as it is.
- Files TensorFlow cannot decode (not JPEG, PNG, GIF or BMP: WebP, TIFF) are re-encoded as PNG;
  grayscale, CMYK, palette and RGBA files decode to RGB as they are.
- Skipped, counted (``strict=True`` refuses instead, naming the file): images whose objects
  name more than one class (not a WSOL example), no object, a missing or damaged file, a box
  outside the image (by more than one pixel; up to one is clipped) or empty, exact duplicates of
  an earlier file. Several boxes of one class are all kept.
- Splits: the source's when it has train, val and test; a source with train and test (or train
  and val, whose val becomes the test split) has ``val_percent`` of each training class held out;
  a source without splits is split per class by ``split`` percentages. Deterministic by ``seed``.

Example:
    >>> import os, tempfile, numpy as np
    >>> from PIL import Image
    >>> root, out = tempfile.mkdtemp(), os.path.join(tempfile.mkdtemp(), "meta")
    >>> os.makedirs(os.path.join(root, "labels"))
    >>> for k in range(6):
    ...     Image.fromarray(np.full((20, 40, 3), k, np.uint8)).save(os.path.join(root, f"{k}.png"))
    ...     _ = open(os.path.join(root, f"{k}.txt"), "w").write(f"{k % 2} 0.5 0.5 0.5 0.5\\n")
    >>> _ = open(os.path.join(root, "classes.txt"), "w").write("cat\\ndog\\n")
    >>> result = convert("yolo", root, out, split=(34, 33, 33))
    >>> sorted(os.listdir(out)), result.counts["train"]
    (['class_names.txt', 'images', 'summary.txt', 'test', 'train', 'val'], 2)
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import hashlib
import io
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from keras_wsol.data import metadata, sources
from keras_wsol.data.sources import SPLITS, Annotation, SourceError

#: EXIF orientations that swap width and height.
_TRANSPOSED = (5, 6, 7, 8)
_DECODABLE = ("JPEG", "PNG", "GIF", "BMP")


class ConversionError(ValueError):
    """A refusal of the converter; the message names the file (and line or element)."""


@dataclasses.dataclass
class ImageInfo:
    """What the file says: stored size, format, EXIF orientation, content hash; or why it cannot be read."""

    size: tuple[int, int] = (0, 0)
    format: str = ""
    orientation: int = 1
    digest: str = ""
    problem: str = ""


@dataclasses.dataclass
class Example:
    """One image to write: its source file, output id, boxes in the output's pixels, class, split."""

    source_path: str
    image_id: str
    class_key: str
    boxes: list[tuple[float, float, float, float]]
    size: tuple[int, int]
    split: str | None
    reencode: bool  # write the pixels anew as PNG instead of linking the file
    upright: bool  # when re-encoding, apply the EXIF orientation


@dataclasses.dataclass
class Result:
    """What a conversion wrote: images per split, the class names, the summary text."""

    out: str
    counts: dict[str, int]
    class_names: list[str]
    summary: str


def read_image_info(path: str) -> ImageInfo:
    """Size, format, EXIF orientation and SHA-1 of an image file, decoding every pixel (a cut file fails here).

    >>> import tempfile, numpy as np
    >>> from PIL import Image
    >>> path = tempfile.mktemp(suffix=".png")
    >>> Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(path)
    >>> info = read_image_info(path)
    >>> info.size, info.format, info.orientation, info.problem
    ((7, 5), 'PNG', 1, '')
    """
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return ImageInfo(problem="image file missing")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            orientation = int(image.getexif().get(0x0112, 1) or 1)
            return ImageInfo(image.size, image.format or "", orientation, hashlib.sha1(data).hexdigest())
    except Exception as error:  # PIL raises many kinds for damaged files
        return ImageInfo(problem=f"damaged image file ({type(error).__name__}: {error})")


def _displayed_size(info: ImageInfo) -> tuple[int, int]:
    w, h = info.size
    return (h, w) if info.orientation in _TRANSPOSED else (w, h)


def _boxes_on_displayed(annotation: Annotation, info: ImageInfo) -> bool:
    """Whether the boxes were drawn on the EXIF-rotated image (the module's rule)."""
    if info.orientation == 1:
        return False
    stored_only = annotation.size == info.size and annotation.size != _displayed_size(info)
    return not stored_only


def _pixel_box(obj: sources.Object, normalized: bool, size: tuple[int, int]) -> tuple[float, ...] | str:
    """The object's box in inclusive pixels clipped to the image, or why it is refused."""
    w, h = size
    if normalized:
        cx, cy, bw, bh = obj.box
        box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w - 1, (cy + bh / 2) * h - 1)
    else:
        box = obj.box
    x0, y0, x1, y1 = box
    if x0 < -1 or y0 < -1 or x1 > w or y1 > h:
        return f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) outside the {w}x{h} image"
    x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, w - 1.0), min(y1, h - 1.0)
    if x1 < x0 or y1 < y0:
        return f"empty box ({x0:g}, {y0:g}, {x1:g}, {y1:g})"
    return tuple(round(v, 2) for v in (x0, y0, x1, y1))


def match_classes(source: sources.Source, wanted: list[str]) -> list[str]:
    """The class keys ``wanted`` names (a key, or any alias: a WordNet lemma), in the order given."""
    lookup = {}
    for key in source.class_keys:
        for name in (key, *source.aliases.get(key, [])):
            lookup.setdefault(name.lower(), key)
    keys = []
    for name in wanted:
        key = lookup.get(name.strip().lower())
        if key is None:
            close = difflib.get_close_matches(name.lower(), list(lookup), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConversionError(f"--classes: {name!r} is not a class of {source.root}{hint}")
        if key in keys:
            raise ConversionError(f"--classes: {name!r} names class {key!r} a second time")
        keys.append(key)
    return keys


class _Skips:
    """Skipped images by reason, with the first few files named; ``strict`` turns the first into an error."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.by_reason: dict[str, list[str]] = collections.defaultdict(list)

    def add(self, reason: str, where: str, detail: str = "") -> None:
        if self.strict:
            raise ConversionError(f"{where}: {reason}{': ' + detail if detail else ''} (refused: --strict)")
        self.by_reason[reason].append(f"{where}{': ' + detail if detail else ''}")


def _examples(source: sources.Source, keys: set[str], skips: _Skips, notes: collections.Counter) -> list[Example]:
    """Every annotation that is a WSOL example, its file read and its boxes converted (files read in threads)."""
    paths = [os.path.join(source.root, a.image) for a in source.annotations]
    with ThreadPoolExecutor(8) as pool:
        infos = list(pool.map(read_image_info, paths))
    examples, first_of = [], {}
    for annotation, path, info in zip(source.annotations, paths, infos):
        classes = {o.class_key for o in annotation.objects}
        stated = classes or {annotation.label} - {None}
        if stated and not stated & keys:
            continue  # a class not selected
        if not annotation.objects:
            skips.add("no object", annotation.where)
            continue
        if annotation.split == "unlisted":
            skips.add("in none of the source's split lists", annotation.where)
            continue
        if len(classes) > 1:
            skips.add("objects of several classes", annotation.where, ", ".join(sorted(classes)))
            continue
        if info.problem:
            skips.add(info.problem, path)
            continue
        if info.digest in first_of:
            skips.add("duplicate file", path, f"same bytes as {first_of[info.digest]}")
            continue
        first_of[info.digest] = path
        upright = _boxes_on_displayed(annotation, info)
        size = _displayed_size(info) if upright else info.size
        reencode = upright or info.format not in _DECODABLE
        if annotation.size is not None and annotation.size not in (info.size, _displayed_size(info)):
            notes[f"annotation states a size the file does not have (the file's is used), e.g. {annotation.where}"] += 1
        if info.orientation != 1:
            notes[
                "EXIF-rotated: boxes on the displayed image, written upright"
                if upright
                else "EXIF-rotated: annotation states the stored size, boxes kept on the stored pixels"
            ] += 1
        elif reencode:
            notes[f"{info.format or 'unknown'} file re-encoded as PNG (TensorFlow decodes JPEG, PNG, GIF, BMP)"] += 1
        boxes = [_pixel_box(o, annotation.normalized, size) for o in annotation.objects]
        bad = next(((o, b) for o, b in zip(annotation.objects, boxes) if isinstance(b, str)), None)
        if bad:
            skips.add(bad[1].split(" (")[0], bad[0].where, bad[1])
            continue
        image_id = os.path.relpath(path, source.root).replace(os.sep, "/") + (".png" if reencode else "")
        examples.append(Example(path, image_id, classes.pop(), boxes, size, annotation.split, reencode, upright))
    return examples


def _assign_splits(
    examples: list[Example], split: tuple[int, int, int], val_percent: int, seed: int
) -> tuple[dict[str, list[Example]], str]:
    """Examples per split, and a sentence saying where the splits came from."""
    present = {e.split for e in examples}
    by_split: dict[str, list[Example]] = {s: [] for s in SPLITS}
    if None in present and present != {None}:
        raise ConversionError("the source names a split for some images and not for others")
    if present <= {None, "train"}:  # no split to follow
        pool, shares = examples, split
        rule = f"split per class by seed {seed}: {split[0]}/{split[1]}/{split[2]} %"
    else:
        for e in examples:
            by_split["test" if e.split == "val" and "test" not in present else e.split].append(e)
        if {"val", "test"} <= present:
            return by_split, "the source's train, val and test splits"
        pool, by_split["train"] = by_split["train"], []
        shares = (100 - val_percent, val_percent, 0)
        rule = f"the source's splits; val = {val_percent} % of each training class (seed {seed})"
        if "test" not in present:
            rule += "; the source's val split is the test split"
    rng = np.random.default_rng(seed)
    per_class = collections.defaultdict(list)
    for e in pool:
        per_class[e.class_key].append(e)
    for key in sorted(per_class):
        members = sorted(per_class[key], key=lambda e: e.image_id)
        order = rng.permutation(len(members))
        n_val = int(round(len(members) * shares[1] / 100))
        n_test = int(round(len(members) * shares[2] / 100))
        for rank, index in enumerate(order):
            name = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            by_split[name].append(members[index])
    return by_split, rule


def _cap(by_split: dict[str, list[Example]], caps: tuple[int, int, int], seed: int) -> None:
    """At most ``caps[k]`` images per class in split k (0: all), a seeded choice."""
    rng = np.random.default_rng(seed + 1)
    for name, cap in zip(SPLITS, caps):
        if not cap:
            continue
        per_class = collections.defaultdict(list)
        for e in sorted(by_split[name], key=lambda e: e.image_id):
            per_class[e.class_key].append(e)
        kept = []
        for key in sorted(per_class):
            members = per_class[key]
            kept += [members[i] for i in sorted(rng.permutation(len(members))[:cap])]
        by_split[name] = kept


def _write_image(example: Example, images_dir: str, copy: bool) -> None:
    target = os.path.join(images_dir, example.image_id)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if example.reencode:
        from PIL import Image, ImageOps

        with Image.open(example.source_path) as image:
            (ImageOps.exif_transpose(image) if example.upright else image).convert("RGB").save(target, format="PNG")
        return
    if not copy:
        try:
            os.link(example.source_path, target)
            return
        except OSError:  # another file system, or links not allowed: copy instead
            pass
    shutil.copyfile(example.source_path, target)


def _box_text(box: tuple[float, ...]) -> str:
    return ",".join(f"{v:g}" for v in box)


def _summary(by_split, names, keys, rule, skips, notes, source_root, kind) -> str:
    lines = [f"Converted {kind} source {source_root}", f"Splits: {rule}", ""]
    header = f"{'id':>4}  {'class':<30}" + "".join(f"{s + ' img/box':>16}" for s in SPLITS)
    lines.append(header)
    for k, key in enumerate(keys):
        cells = []
        for s in SPLITS:
            members = [e for e in by_split[s] if e.class_key == key]
            cells.append(f"{len(members):>9}/{sum(len(e.boxes) for e in members):<6}")
        label = names[k] if names[k] == key else f"{names[k]} ({key})"
        lines.append(f"{k:>4}  {label[:30]:<30}" + "".join(cells))
    totals = "".join(f"{len(by_split[s]):>9}/{sum(len(e.boxes) for e in by_split[s]):<6}" for s in SPLITS)
    lines.append(f"{'':>4}  {'total':<30}" + totals)
    skipped = sum(len(v) for v in skips.by_reason.values())
    lines += ["", f"Skipped: {skipped} image(s)" + (":" if skipped else "")]
    for reason, wheres in sorted(skips.by_reason.items()):
        lines.append(f"  {len(wheres):>6}  {reason}; first: {'; '.join(wheres[:3])}")
    for note, count in sorted(notes.items()):
        lines.append(f"Note: {count} image(s): {note}")
    return "\n".join(lines) + "\n"


def convert(
    kind: str,
    source: str,
    out: str,
    classes: list[str] | None = None,
    split: tuple[int, int, int] = (60, 10, 30),
    val_percent: int = 10,
    seed: int = 0,
    max_per_class: tuple[int, int, int] = (0, 0, 0),
    strict: bool = False,
    copy: bool = False,
    overwrite: bool = False,
    names_file: str | None = None,
    image_root: str | None = None,
) -> Result:
    """Convert ``source`` (a folder; COCO: the instances JSON) of format ``kind`` into the metadata folder ``out``.

    Written whole or not at all: into a temporary folder beside ``out``,
    renamed into place at the end. ``out`` existing is refused unless
    ``overwrite``. Raises :class:`ConversionError` (or
    :class:`~keras_wsol.data.sources.SourceError`) naming the file.
    """
    if len(split) != 3 or sum(split) != 100 or min(split) < 0:
        shares = ",".join(map(str, split))
        raise ConversionError(f"--split={shares}: three percentages (train, val, test) adding to 100")
    if not 0 < val_percent < 100:
        raise ConversionError(f"--val_percent={val_percent}: must be in (0, 100)")
    if os.path.exists(out) and not overwrite:
        raise ConversionError(f"{out}: exists; give --overwrite to replace it")
    src = sources.read_source(kind, source, names_file, image_root)
    keys = match_classes(src, classes) if classes else list(src.class_keys)
    skips, notes = _Skips(strict), collections.Counter()
    examples = _examples(src, set(keys), skips, notes)
    by_split, rule = _assign_splits(examples, split, val_percent, seed)
    _cap(by_split, max_per_class, seed)
    trained = {e.class_key for e in by_split["train"]}
    dropped = [k for k in keys if k not in trained]
    if dropped:
        notes[f"classes without a training image dropped: {', '.join(dropped[:10])}"] += len(dropped)
        keys = [k for k in keys if k in trained]
        for name in SPLITS:
            by_split[name] = [e for e in by_split[name] if e.class_key in trained]
    if not keys:
        raise ConversionError(f"{source}: no image is a WSOL example (one class, boxes inside the image)")
    names = _unique_names(src, keys)
    label = {k: i for i, k in enumerate(keys)}
    tmp = f"{out.rstrip(os.sep)}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        everything = [e for s in SPLITS for e in by_split[s]]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda e: _write_image(e, os.path.join(tmp, "images"), copy), everything))
        for name in SPLITS:
            members = sorted(by_split[name], key=lambda e: e.image_id)
            metadata.write_split(
                os.path.join(tmp, name),
                [e.image_id for e in members],
                [label[e.class_key] for e in members],
                [e.size for e in members],
                [f"{e.image_id},{_box_text(b)}" for e in members for b in e.boxes],
            )
        with open(os.path.join(tmp, "class_names.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(names) + "\n")
        summary = _summary(by_split, names, keys, rule, skips, notes, source, kind)
        with open(os.path.join(tmp, "summary.txt"), "w", encoding="utf-8") as f:
            f.write(summary)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Result(out, {s: len(by_split[s]) for s in SPLITS}, names, summary)


def _unique_names(source: sources.Source, keys: list[str]) -> list[str]:
    """Display names of ``keys``; a name two classes share gets its key in brackets (no commas: one line each)."""
    names = [source.display_name(k).replace(",", " ") for k in keys]
    counts = collections.Counter(names)
    return [n if counts[n] == 1 else f"{n} ({k})" for n, k in zip(names, keys)]


__all__ = ["ConversionError", "SourceError", "convert", "match_classes", "read_image_info"]
