"""TFDS sources: CUB-200-2011 (``caltech_birds2011``) and ImageNet training images (``imagenet2012``).

CUB is prepared by TFDS (download, or the archives ``CUB_200_2011.tgz`` and
``segmentations.tgz`` in a manual directory), then exported once, bytes
unchanged, as a benchmark metadata folder (docs/DATA.md) next to the TFDS
data: ``images/``, ``masks/``, ``metadata/{train,val,test}`` (boxes) and
``metadata_masks/{train,val,test}`` (segmentations). From there it is read
like any benchmark folder, by index, so class-set batches work. TFDS's
``train`` split gives ``val_per_class`` images per class to ``val`` (as the
protocol's CUBV2 has 5 per class); ``test`` is TFDS's ``test``.

ImageNet training images are streamed from the TFDS ``imagenet2012``
records (prepared from the tar files in the manual directory); the val and
test splits, with boxes, come from a metadata folder.

Example:
    >>> cub_box_line("a/b.jpg", (0.1, 0.2, 0.5, 1.0), width=300, height=200)
    'a/b.jpg,60,20,300,100'
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from keras_wsol.data import metadata
from keras_wsol.data.splits import Split, metadata_split

CUB_SPLITS = ("train", "val", "test")
_COMPLETE = "COMPLETE"


def _coordinate(value: float) -> str:
    """A box coordinate in original pixels, rounded to 1/1000 (TFDS stores them normalized in float32)."""
    return f"{round(value, 3):.3f}".rstrip("0").rstrip(".")


def cub_box_line(image_id: str, bbox, width: int, height: int) -> str:
    """A ``localization.txt`` line from a TFDS ``bbox`` (ymin, xmin, ymax, xmax in [0, 1]).

    TFDS divided ``x, y, x + w, y + h`` of CUB's ``bounding_boxes.txt`` by
    the image size (capping at 1), so this gives back the benchmark's
    ``x0, y0, x1, y1`` (``x1 = x + w``, as the WSOL metadata writes them).
    """
    ymin, xmin, ymax, xmax = (float(v) for v in bbox)
    coords = (xmin * width, ymin * height, xmax * width, ymax * height)
    return ",".join([image_id, *(_coordinate(v) for v in coords)])


def export_cub(builder, root: str, val_per_class: int, seed: int = 0) -> None:
    """Write a prepared ``caltech_birds2011`` builder's splits as a benchmark folder under ``root``."""
    import cv2
    import tensorflow_datasets as tfds

    skip = {"image": tfds.decode.SkipDecoding(), "segmentation_mask": tfds.decode.SkipDecoding()}
    records = {}
    for tfds_split in ("train", "test"):
        rows = []
        for ex in tfds.as_numpy(builder.as_dataset(split=tfds_split, shuffle_files=False, decoders=skip)):
            image_id = "/".join(ex["image/filename"].decode().replace("\\", "/").split("/")[-2:])
            mask = cv2.imdecode(np.frombuffer(ex["segmentation_mask"], np.uint8), cv2.IMREAD_UNCHANGED)
            if mask is None:
                raise ValueError(f"caltech_birds2011 {tfds_split}: the segmentation of {image_id} does not decode")
            height, width = mask.shape[:2]
            for sub, name, data in (
                ("images", image_id, ex["image"]),
                ("masks", os.path.splitext(image_id)[0] + ".png", ex["segmentation_mask"]),
            ):
                path = os.path.join(root, sub, name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
            rows.append((image_id, int(ex["label"]), width, height, cub_box_line(image_id, ex["bbox"], width, height)))
        records[tfds_split] = sorted(rows)
    rng = np.random.default_rng(seed)
    labels = np.array([row[1] for row in records["train"]])
    held_out = set()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        held_out.update(rng.permutation(members)[:val_per_class].tolist())
    splits = {
        "train": [row for i, row in enumerate(records["train"]) if i not in held_out],
        "val": [row for i, row in enumerate(records["train"]) if i in held_out],
        "test": records["test"],
    }
    for name, rows in splits.items():
        ids, labels, sizes = [r[0] for r in rows], [r[1] for r in rows], [(r[2], r[3]) for r in rows]
        masks = [f"{i},{os.path.splitext(i)[0]}.png," for i in ids]
        for sub, localization in (("metadata", [r[4] for r in rows]), ("metadata_masks", masks)):
            metadata.write_split(os.path.join(root, sub, name), ids, labels, sizes, localization)


def prepare_cub(data_dir: str | None, manual_dir: str | None = None, val_per_class: int = 5, seed: int = 0) -> str:
    """TFDS ``caltech_birds2011`` exported as a benchmark folder; returns its root (made once, then reused).

    Args:
        data_dir: TFDS data directory (None: TFDS's default).
        manual_dir: where ``CUB_200_2011.tgz`` and ``segmentations.tgz``
            already are; otherwise TFDS downloads them.
        val_per_class: training images per class held out as ``val``.
        seed: which images are held out.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder("caltech_birds2011", data_dir=data_dir)
    root = os.path.join(str(builder.data_dir_root), f"keras_wsol_cub_val{val_per_class}_seed{seed}")
    if os.path.isfile(os.path.join(root, _COMPLETE)):
        return root
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    partial = root + ".incomplete"
    shutil.rmtree(partial, ignore_errors=True)
    export_cub(builder, partial, val_per_class, seed)
    open(os.path.join(partial, _COMPLETE), "w").close()
    shutil.rmtree(root, ignore_errors=True)
    os.replace(partial, root)
    return root


def cub_split(root: str, split: str) -> Split:
    """One split of a :func:`prepare_cub` folder: boxes and segmentation masks."""
    return metadata_split(
        os.path.join(root, "images"),
        os.path.join(root, "metadata", split),
        mask_root=os.path.join(root, "masks"),
        mask_split_root=os.path.join(root, "metadata_masks", split),
        num_classes=200,
    )


def imagenet_train(data_dir: str | None, manual_dir: str | None = None, shuffle_buffer: int = 10000) -> Split:
    """The TFDS ``imagenet2012`` train split as a stream of ``(uint8 image, label)`` (no boxes)."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from keras_wsol.data.pipeline import decode_image

    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    num_classes = builder.info.features["label"].num_classes

    def records(seed: int) -> tf.data.Dataset:
        return builder.as_dataset(
            split="train",
            shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    size = int(records(0).cardinality())  # TFDS knows its splits' sizes
    if size <= 0:
        raise ValueError(f"imagenet2012 train in {builder.data_dir}: the number of images is not known")

    def stream(seed: int) -> tf.data.Dataset:
        ds = records(seed).shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return ds.map(
            lambda ex: (decode_image(ex["image"], ex["file_name"]), tf.cast(ex["label"], tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    return Split(image_ids=[], labels=np.zeros(0, np.int64), num_classes=num_classes, stream=stream, stream_size=size)
