"""The dataset a run's data settings describe, split by split, and the checks made before any long work.

The commands fill :class:`DataSettings` from their flags (one field per data
flag, same name) and call :func:`load_split` and :func:`check_data`; errors
are ``ValueError`` whose message names the flag, file or line to fix, which
the commands print as they are.

Example:
    >>> settings = DataSettings(num_classes=2, train_images_per_class=3, eval_images_per_class=2, image_size=32)
    >>> data = {name: load_split(settings, name) for name in ("train", "val", "test")}
    >>> check_data(settings, data); [len(split.image_ids) for split in data.values()]
    [6, 4, 4]
"""

from __future__ import annotations

import dataclasses
import os

from absl import logging

from keras_wsol.data import metadata, splits, synthetic, tfds_sources
from keras_wsol.data.splits import Split

DATASETS = ("synthetic", "cub", "folder", "imagenet")

#: The data settings only some sources read: given with another ``dataset`` they are refused, not ignored (a
#: user's ``--data_root`` without ``--dataset=folder`` would otherwise train on the synthetic benchmark, silently).
SOURCE_FIELDS = {
    "num_classes": ("synthetic",),
    "train_images_per_class": ("synthetic",),
    "eval_images_per_class": ("synthetic",),
    "data_seed": ("synthetic", "cub"),
    "tfds_data_dir": ("cub", "imagenet"),
    "tfds_manual_dir": ("cub", "imagenet"),
    "cub_val_per_class": ("cub",),
    "data_root": ("folder", "imagenet"),
    "metadata_root": ("folder", "imagenet"),
    "mask_root": ("folder", "imagenet"),
    "mask_metadata_root": ("folder", "imagenet"),
    "boxes_normalized": ("folder", "imagenet"),
}


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """Which data a run uses; each field is the data flag of the same name (``python train.py --helpfull``).

    ``given``: the fields set explicitly (a flag on the command line), so a
    field of another source than ``dataset`` is refused rather than ignored.
    """

    dataset: str = "synthetic"
    image_size: int = 96
    num_classes: int = 8
    train_images_per_class: int = 120
    eval_images_per_class: int = 40
    data_seed: int = 0
    tfds_data_dir: str | None = None
    tfds_manual_dir: str | None = None
    cub_val_per_class: int = 5
    data_root: str | None = None
    metadata_root: str | None = None
    mask_root: str | None = None
    mask_metadata_root: str | None = None
    boxes_normalized: bool = False
    given: frozenset = frozenset()

    def source(self) -> str:
        """The flags that say where the data comes from, for error messages."""
        if self.dataset in ("folder", "imagenet"):
            return f"--data_root={self.data_root} --metadata_root={self.metadata_root}"
        return f"--dataset={self.dataset}"


def _check_sources(settings: DataSettings) -> None:
    for name, readers in SOURCE_FIELDS.items():
        if name in settings.given and settings.dataset not in readers:
            raise ValueError(
                f"--{name} is read by --dataset={' or '.join(readers)} only, and this run has --dataset="
                f"{settings.dataset}: give --dataset={' or --dataset='.join(readers)}, or drop --{name}"
            )


def _metadata_split(settings: DataSettings, split: str, localization: bool) -> Split:
    missing = [f"--{n}" for n in ("data_root", "metadata_root") if not getattr(settings, n)]
    if missing:
        raise ValueError(f"--dataset={settings.dataset} needs {' and '.join(missing)}")
    mask_split = None
    if settings.mask_metadata_root:
        if not os.path.isdir(settings.mask_metadata_root):
            raise ValueError(f"--mask_metadata_root={settings.mask_metadata_root}: no such folder")
        mask_split = os.path.join(settings.mask_metadata_root, split)
        if not os.path.isdir(mask_split):  # masks often exist for the test split only
            logging.info("--mask_metadata_root has no %s folder: the %s split is scored on boxes alone", split, split)
            mask_split = None
    try:
        loaded = splits.metadata_split(
            settings.data_root,
            os.path.join(settings.metadata_root, split),
            settings.mask_root,
            mask_split,
            localization=localization,
        )
        return splits.pixel_boxes(loaded, split, settings.boxes_normalized)
    except metadata.MetadataError as error:
        raise ValueError(f"--metadata_root={settings.metadata_root}: {error}") from None


def load_split(settings: DataSettings, split: str) -> Split:
    """The ``split`` (train, val or test) of the dataset ``settings`` describe.

    A missing folder or malformed file is an error naming the flag and file;
    a setting of another source is refused (:data:`SOURCE_FIELDS`).
    """
    _check_sources(settings)
    if settings.dataset == "synthetic":
        data = synthetic.generate(
            split,
            num_classes=settings.num_classes,
            images_per_class=settings.train_images_per_class if split == "train" else settings.eval_images_per_class,
            image_size=settings.image_size,
            seed=settings.data_seed,
        )
        return data.as_split(settings.num_classes)
    if settings.dataset == "cub" or (settings.dataset == "imagenet" and split == "train"):
        name = "caltech_birds2011" if settings.dataset == "cub" else "imagenet2012"
        try:
            if settings.dataset == "imagenet":
                return tfds_sources.imagenet_train(settings.tfds_data_dir, settings.tfds_manual_dir)
            root = tfds_sources.prepare_cub(
                settings.tfds_data_dir, settings.tfds_manual_dir, settings.cub_val_per_class, settings.data_seed
            )
        except Exception as error:  # TFDS raises many kinds (network, checksums, missing manual files)
            raise ValueError(
                f"--dataset={settings.dataset}: TFDS could not prepare {name} in --tfds_data_dir="
                f"{settings.tfds_data_dir} (--tfds_manual_dir={settings.tfds_manual_dir}): "
                f"{type(error).__name__}: {error}"
            ) from None
        return tfds_sources.cub_split(root, split)
    # folder (every split), imagenet (val, test): the benchmark's metadata; training needs no boxes.
    return _metadata_split(settings, split, localization=split != "train")


def check_data(settings: DataSettings, data: dict[str, Split], num_classes: int | None = None) -> None:
    """Refuse the run's splits before any long work: empty splits, stray labels, missing, damaged or mis-sized files.

    ``num_classes``: the model's class count, when a trained model is to
    score the splits (it must equal the data's).
    """
    try:
        splits.check_splits(data)
        for name, split in data.items():
            if num_classes is not None and split.indexable and split.num_classes != num_classes:
                raise ValueError(
                    f"{name} split: its labels span {split.num_classes} classes, the model has {num_classes}: "
                    "evaluate a model on the data it was trained for"
                )
            splits.check_image_files(split, name)
    except ValueError as error:
        raise ValueError(f"{settings.source()}: {error}") from None
