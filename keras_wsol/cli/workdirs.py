"""A ``train.py`` workdir: what a run writes there, its identity and state, and what ``evaluate.py`` reads back.

Layout (:data:`RUN_FILES`): ``run.json`` (the run's identity: its data,
method and architecture flags and a digest of each split; its state:
``training``, ``trained``, ``evaluated``), ``flags.txt`` (the given flags, a
``--flagfile`` repeating the command), ``checkpoints/{best,last}.keras``,
``backup/``, ``log.csv``, ``tensorboard/``, ``eval_test/``. No TensorFlow.

Example:
    >>> best_checkpoint("runs/default"), checkpoint_workdir("nowhere/model.keras") is None
    ('runs/default/checkpoints/best.keras', True)
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app

from keras_wsol.atomic import write_json, write_text
from keras_wsol.cli import flags as wsol_flags
from keras_wsol.data import factory
from keras_wsol.data.splits import content_digest

FLAGS = wsol_flags.FLAGS


def write_flagfile(path: str) -> None:
    """Save the flags given on this run's command line, so ``--flagfile`` repeats the same command.

    Only the given flags: the others keep their defaults on a repeat, and
    a method's own defaults for the optimizer flags (``optimizer_settings``)
    apply again instead of being pinned to the flags' generic defaults. The
    model's hyper-parameters, defaults included, are in the checkpoint's
    config.
    """
    lines = [
        f.serialize()
        for module in (sys.argv[0], wsol_flags.__name__)
        for f in FLAGS.get_flags_for_module(module)
        if f.present
    ]
    write_text(path, "\n".join(sorted(set(lines))) + "\n")


#: Flags that, with the data flags and the method's own, make a workdir's run that run.
IDENTITY_FLAGS = ("method", "backbone", "image_size", "head_channels", "weights", "input_normalization")
#: What a run writes in its workdir; --overwrite removes exactly these.
RUN_FILES = ("run.json", "flags.txt", "backup", "checkpoints", "log.csv", "tensorboard", "eval_test")


def run_identity(data: dict) -> dict[str, str]:
    """The run's data, method and architecture: each identity flag's value (defaults included), by name, and a
    digest of each split's contents (``"<split> split contents"``), so that data rewritten at the same paths is not
    taken for the data a checkpoint was trained on."""
    from keras_wsol.methods import get_method  # every method: TensorFlow
    from keras_wsol.methods.hyperparameters import flag_name

    names = [*wsol_flags.DATA_FLAGS, *IDENTITY_FLAGS]
    names += [name for p in get_method(FLAGS.method).hyperparameters if (name := flag_name(FLAGS.method, p))]
    own_source = lambda name: FLAGS.dataset in factory.SOURCE_FIELDS.get(name, (FLAGS.dataset,))  # noqa: E731
    identity = {name: str(FLAGS[name].value) for name in sorted(set(names)) if name in FLAGS and own_source(name)}
    return identity | {f"{name} split contents": content_digest(split) for name, split in data.items()}


def previous_run(workdir: str, identity: dict[str, str]) -> str | None:
    """The state of the run already in ``workdir`` (``training``, ``trained``, ``evaluated``), None for none.

    Refuses a workdir whose run has another identity, naming the flags
    that differ, or one holding a run without its record.
    """
    record = os.path.join(workdir, "run.json")
    if not os.path.isfile(record):
        if any(os.path.exists(os.path.join(workdir, name)) for name in ("backup", "checkpoints")):
            raise app.UsageError(
                f"--workdir={workdir} holds checkpoints without a run.json, so this command cannot tell whether "
                "they are its own run: pass --overwrite to replace them, or another --workdir"
            )
        return None
    with open(record) as f:
        previous = json.load(f)
    theirs = previous["identity"]
    differ = [
        f"{name if ' ' in name else '--' + name}: {theirs.get(name, '(not set)')} there, "
        f"{identity.get(name, '(not set)')} here"
        for name in sorted(set(theirs) | set(identity))
        if theirs.get(name) != identity.get(name)
    ]
    if differ:
        raise app.UsageError(
            f"--workdir={workdir} holds a run of other data or another model ("
            + "; ".join(differ)
            + "): pass --overwrite to replace it, or another --workdir"
        )
    finished = previous["state"] in ("trained", "evaluated")
    if finished and previous.get("epochs", FLAGS.epochs) != FLAGS.epochs:
        raise app.UsageError(
            f"--epochs={FLAGS.epochs}: --workdir={workdir} holds this run finished after {previous['epochs']} epochs, "
            "and a finished run is not trained further (its schedule ended): pass --overwrite to train "
            f"{FLAGS.epochs} epochs anew, or another --workdir"
        )
    return previous["state"]


def mark_run(workdir: str, identity: dict[str, str], state: str) -> None:
    """Record the run's identity and state in ``workdir/run.json`` (atomically)."""
    write_json({"identity": identity, "state": state, "epochs": FLAGS.epochs}, os.path.join(workdir, "run.json"))


def remove_run(workdir: str) -> None:
    """--overwrite: delete what a run wrote in ``workdir`` (nothing else)."""
    for name in RUN_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def best_checkpoint(workdir: str) -> str:
    """The checkpoint train.py keeps as a workdir's best (by --select_checkpoint)."""
    return os.path.join(workdir, "checkpoints", "best.keras")


def checkpoint_workdir(checkpoint: str | None) -> str | None:
    """The train.py workdir holding ``checkpoint`` (``WORKDIR/checkpoints/x.keras`` with WORKDIR/flags.txt), or None."""
    if not checkpoint:
        return None
    folder = os.path.dirname(os.path.abspath(checkpoint))
    workdir = os.path.dirname(folder)
    is_run = os.path.basename(folder) == "checkpoints" and os.path.isfile(os.path.join(workdir, "flags.txt"))
    return workdir if is_run else None


def run_data_flags(workdir: str) -> dict[str, str]:
    """The dataset flags a train.py workdir was trained with, from its flags.txt (only the given ones)."""
    flagfile = os.path.join(workdir, "flags.txt")
    if not os.path.isfile(flagfile):
        raise app.UsageError(f"--workdir={workdir}: no flags.txt; is it a train.py workdir?")
    values = {}
    for arg in FLAGS.read_flags_from_files([f"--flagfile={flagfile}"], force_gnu=False):
        name, _, value = arg[2:].partition("=")
        if name in wsol_flags.DATA_FLAGS:
            values[name] = value
    return values


def run_class_names(workdir: str | None, num_classes: int) -> list[str] | None:
    """The class names of a run's metadata folder (``class_names.txt``, which convert.py writes), or None.

    A file whose line count is not the model's class count is refused: the
    names would be shifted.
    """
    root = run_data_flags(workdir).get("metadata_root") if workdir else None
    path = os.path.join(root, "class_names.txt") if root else None
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8-sig") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise app.UsageError(f"{path}: {len(names)} names for a model of {num_classes} classes")
    return names


def run_data(workdir: str) -> dict:
    """Every dataset flag's value in a workdir's run (its flags.txt, defaults for the flags it did not give)."""
    given = run_data_flags(workdir)
    return {
        name: FLAGS[name].parser.parse(given[name]) if name in given else FLAGS[name].default
        for name in wsol_flags.DATA_FLAGS
    }
