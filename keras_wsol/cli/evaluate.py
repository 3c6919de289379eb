"""The evaluate command: a trained workdir, image files, or score maps computed elsewhere.

Run it as ``python evaluate.py`` (a checkout), ``wsol-evaluate`` (installed)
or ``python -m keras_wsol.cli.evaluate``; the root ``evaluate.py`` lists its
modes with examples. The flags choose one command (:func:`chosen_command`),
one function each: :func:`evaluate` (the default: one localizer on a split),
:func:`sweep` (``--localizer=all`` / ``--layer=all``), :func:`export_savedmodel`
(``--export``), :func:`localize_images` (``--images``) and
:func:`score_maps_on_disk` (``--scoremap_root``, no TensorFlow).
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Callable

import numpy as np
from absl import app, flags

from keras_wsol import evaluation
from keras_wsol.atomic import write_json
from keras_wsol.choices import DEFAULT_BOX_THRESHOLD, LOCALIZER_NAMES
from keras_wsol.cli import flags as wsol_flags
from keras_wsol.cli import parsing, workdirs
from keras_wsol.cli import settings as wsol_settings
from keras_wsol.data import factory

if TYPE_CHECKING:
    from keras_wsol.localizers import Localizer

FLAGS = flags.FLAGS


def evaluate_scoremap_folder() -> dict:
    """Evaluator-only mode: score maps on disk (``<image_id>.npy``, R x R) against a metadata folder.

    The maps go through :class:`keras_wsol.evaluation.SplitEvaluation`, as a
    model's do, so every protocol flag (``--fixed_threshold`` included) means
    the same here; no TensorFlow is imported.
    """
    from keras_wsol.data import metadata, splits

    # The folder of one split, or a root holding the --split folder.
    root = FLAGS.metadata_root
    if not os.path.isfile(os.path.join(root, "image_ids.txt")) and os.path.isdir(os.path.join(root, FLAGS.split)):
        root = os.path.join(root, FLAGS.split)
    try:
        split = splits.metadata_split(FLAGS.data_root or "", root, FLAGS.mask_root)
        split = splits.pixel_boxes(split, FLAGS.split, FLAGS.boxes_normalized)
    except metadata.MetadataError as error:
        flag = "--mask_root" if "mask root" in str(error) else f"--metadata_root={FLAGS.metadata_root}"
        raise app.UsageError(f"{flag}: {error}") from None
    protocol = wsol_settings.protocol()
    run = evaluation.SplitEvaluation(split, protocol)
    batch = 64  # maps per update: the box evaluator spreads a batch over the cores
    for start in range(0, len(split.image_ids), batch):
        maps = []
        for image_id in split.image_ids[start : start + batch]:
            path = os.path.join(FLAGS.scoremap_root, image_id + ".npy")
            try:
                maps.append(np.load(path))
            except (OSError, ValueError) as error:
                raise ValueError(f"{path}: cannot read score map ({error})") from None
            evaluation.check_scoremap(maps[-1], protocol.resize_length, where=path)
        run.update(np.stack(maps))
    return run.result()


def localize_images() -> None:
    """``--images``: top-5 classes, a box and an overlay per file, from --imagenet or a checkpoint."""
    from keras_wsol import image_files, localizers, pretrained

    try:
        paths = image_files.expand_paths(FLAGS.images)
    except ValueError as error:
        raise app.UsageError(f"--images: {error}") from None
    if FLAGS.imagenet:
        try:
            model = pretrained.imagenet_classifier(
                FLAGS.imagenet, FLAGS.image_size if FLAGS["image_size"].present else 224, surgery=FLAGS.imagenet_surgery
            )
        except RuntimeError as error:
            raise app.UsageError(f"--imagenet={FLAGS.imagenet}: {error}") from None
        names = pretrained.imagenet_class_names()
        out = FLAGS.output_dir or "localized_images"
    else:
        if not (FLAGS.workdir or FLAGS.checkpoint):
            raise app.UsageError("--images needs --imagenet=NETWORK, --workdir or --checkpoint")
        model, checkpoint = load_model(FLAGS.checkpoint or workdirs.best_checkpoint(FLAGS.workdir))
        names = workdirs.run_class_names(FLAGS.workdir or workdirs.checkpoint_workdir(checkpoint), model.num_classes)
        out = FLAGS.output_dir or os.path.join(FLAGS.workdir or os.path.dirname(checkpoint), "images")
    try:
        localizer = localizers.get_localizer(model, FLAGS.localizer, FLAGS.layer, **localizer_options())
        tau = DEFAULT_BOX_THRESHOLD if FLAGS.box_threshold is None else FLAGS.box_threshold
        found = image_files.localize_files(localizer, paths, names, tau, out)
    except ValueError as error:
        raise app.UsageError(f"--images --localizer={FLAGS.localizer} --layer={FLAGS.layer}: {error}") from None
    for item in found:
        x0, y0, x1, y1 = (int(v) for v in item.box)
        print(
            f"{item.path}: box x0={x0} y0={y0} x1={x1} y1={y1} (tau {item.threshold:g}, {localizer.name} at "
            f"{localizer.layer}); overlay {item.overlay}"
        )
        for rank, (k, name, p) in enumerate(item.top, 1):
            print(f"  {rank}. {name} ({k}) {100 * p:.1f}%")


def load_model(checkpoint: str):
    """A checkpoint as a Keras model; a missing file is an error naming it."""
    import keras

    import keras_wsol.methods  # noqa: F401  (registers the classes a checkpoint names)

    if not os.path.isfile(checkpoint):
        raise app.UsageError(f"no checkpoint at {checkpoint}")
    model = keras.models.load_model(checkpoint)
    if FLAGS.inference_setting:
        settings = dict(item.partition("=")[::2] for item in FLAGS.inference_setting)
        try:
            if "" in settings.values() or not hasattr(model, "set_inference_settings"):
                raise ValueError("give NAME=VALUE pairs of a keras_wsol model's inference-only hyper-parameters")
            model.set_inference_settings(settings)
        except ValueError as error:
            raise app.UsageError(f"--inference_setting={','.join(FLAGS.inference_setting)}: {error}") from None
    return model, checkpoint


def settings_suffix() -> str:
    """``_fusion-min`` for ``--inference_setting=fusion=min``: default output folders keep variants apart."""
    return "".join(f"_{item.replace('=', '-')}" for item in FLAGS.inference_setting)


def compare_curves(model, split, out: str) -> None:
    """``--compare_workdirs``: BoxAcc-versus-threshold curves of this model and the others, one plot."""
    from keras_wsol import reporting, visualize

    models = {os.path.basename(os.path.normpath(FLAGS.workdir or "")): model, **compared_models()}
    taus, curves = reporting.threshold_curves(models, split, wsol_settings.protocol())
    visualize.plot_box_acc_curves(
        taus, {}, os.path.join(out, "box_acc_compare.png"), "BoxAcc vs threshold (single contour, IoU 50)", curves
    )
    write_json(
        {"taus": taus.tolist(), **{k: v.tolist() for k, v in curves.items()}},
        os.path.join(out, "threshold_curves.json"),
    )
    print(
        f"\n{'BoxAcc at tau':22s}"
        + "".join(f"{t:>7.1f}" for t in np.arange(0.1, 1.0, 0.1))
        + "   best (tau)   within 5 points"
    )
    for name, curve in curves.items():
        at = [curve[int(round(t / FLAGS.cam_curve_interval))] for t in np.arange(0.1, 1.0, 0.1)]
        low, high = reporting.threshold_span(taus, curve)
        print(
            f"{name:22s}"
            + "".join(f"{a:7.1f}" for a in at)
            + f"   {curve.max():5.1f} ({taus[int(np.argmax(curve))]:.2f})   {low:.2f}-{high:.2f}"
        )


def compared_models() -> dict:
    """The ``--compare_workdirs`` runs' best checkpoints, by folder name, checked to be trained on this run's data."""
    import keras

    if not FLAGS.workdir:
        raise app.UsageError("--compare_workdirs needs --workdir (the runs' flags.txt must show the same data)")
    mine = workdirs.run_data(FLAGS.workdir)
    models = {os.path.basename(os.path.normpath(FLAGS.workdir)): None}
    for workdir in FLAGS.compare_workdirs:
        theirs = workdirs.run_data(workdir)
        differ = [
            f"--{k}={theirs.get(k)} (here {mine.get(k)})" for k in wsol_flags.DATA_FLAGS if theirs.get(k) != mine.get(k)
        ]
        if differ:
            raise app.UsageError(f"--compare_workdirs: {workdir} was trained on other data: {', '.join(differ)}")
        checkpoint = workdirs.best_checkpoint(workdir)
        if not os.path.isfile(checkpoint):
            raise app.UsageError(f"--compare_workdirs: no checkpoint at {checkpoint}")
        # Runs are named by their folder; the whole path where two folders share a name.
        name = os.path.basename(os.path.normpath(workdir))
        models[os.path.normpath(workdir) if name in models else name] = keras.models.load_model(checkpoint)
    return {name: m for name, m in models.items() if m is not None}


def export_checkpoint(model, localizer: Localizer, checkpoint: str, base: str) -> None:
    """``--export``: choose the box threshold on val (or take --box_threshold), write the SavedModel."""
    from keras_wsol import export

    name = FLAGS.model_name or os.path.basename(os.path.normpath(os.path.abspath(base)))
    try:
        export.check_model_name(name)
    except ValueError as error:
        raise app.UsageError(f"--model_name: {error}") from None
    if FLAGS.box_threshold is None:
        try:
            threshold, accuracy = export.validation_threshold(
                localizer, wsol_settings.load_split("val"), FLAGS.cam_curve_interval
            )
        except ValueError as error:
            raise app.UsageError(f"--dataset={FLAGS.dataset}: {error}; pass --box_threshold") from None
        chosen = {"threshold_source": "val split, MaxBoxAcc", "val_MaxBoxAcc": accuracy}
        print(f"box threshold {threshold:.3f} chosen on the val split (MaxBoxAcc {accuracy:.2f})")
    else:
        threshold = FLAGS.box_threshold
        chosen = {"threshold_source": "--box_threshold"}
    try:
        path = export.export_model(
            model,
            FLAGS.export_dir,
            name,
            threshold,
            localizer,
            FLAGS.version,
            metadata={"checkpoint": os.path.abspath(checkpoint), **chosen},
        )
    except FileExistsError as error:
        raise app.UsageError(f"--version={FLAGS.version}: {error}") from None
    except OSError as error:
        raise app.UsageError(f"--export_dir={FLAGS.export_dir}: {error}") from None
    print(
        f"exported {localizer.name} at layer {localizer.layer} to {path}\n"
        f"inspect: saved_model_cli show --dir {path} --all"
    )


def score_maps_on_disk() -> None:
    """Evaluator-only mode (``--scoremap_root``): score maps on disk against a metadata folder, no TensorFlow."""
    if not (FLAGS.scoremap_root and FLAGS.metadata_root and FLAGS.output_json):
        raise app.UsageError("evaluator-only mode needs --scoremap_root, --metadata_root and --output_json")
    folder = os.path.dirname(os.path.abspath(FLAGS.output_json))
    try:  # before the evaluation, so a bad path cannot lose its result
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise app.UsageError(f"--output_json={FLAGS.output_json}: cannot create its folder ({error})") from None
    if os.path.isdir(FLAGS.output_json):
        raise app.UsageError(f"--output_json={FLAGS.output_json} is a folder: give a file name")
    result = evaluate_scoremap_folder()
    write_json(result, FLAGS.output_json)
    print(evaluation.format_table({"score maps": result}))


def localizer_options() -> dict:
    """The localizer flags as ``get_localizer`` options."""
    options = {"score": FLAGS.localizer_score, "guided": {"default": None, "on": True, "off": False}[FLAGS.guided]}
    if FLAGS.layer and "," in FLAGS.layer:
        options["fusion"] = FLAGS.layer_fusion
    return options


@contextlib.contextmanager
def localizer_errors():
    """A ``ValueError`` inside (a localizer the model cannot have) as a usage error naming --localizer and --layer."""
    try:
        yield
    except ValueError as error:
        raise app.UsageError(f"--localizer={FLAGS.localizer} --layer={FLAGS.layer}: {error}") from None


def trained_model(reads_data: bool = True):
    """``(model, checkpoint, output base)`` of --workdir or --checkpoint; the data flags replayed from its run."""
    data_from = FLAGS.workdir or workdirs.checkpoint_workdir(FLAGS.checkpoint)
    if data_from:
        # The dataset flags of the training run, unless given on this command line; a --dataset given here
        # takes none of the run's flags that only its other source reads.
        replayed = workdirs.run_data_flags(data_from)
        if not FLAGS["dataset"].present and "dataset" in replayed:
            FLAGS["dataset"].parse(replayed["dataset"])
        for name, value in replayed.items():
            other_source = FLAGS.dataset not in factory.SOURCE_FIELDS.get(name, (FLAGS.dataset,))
            if not FLAGS[name].present and not other_source:
                FLAGS[name].parse(value)
    elif reads_data and not any(FLAGS[name].present for name in wsol_flags.DATA_FLAGS):
        raise app.UsageError(
            f"--checkpoint={FLAGS.checkpoint} is not in a train.py workdir: give the data it is to be scored on "
            "(--dataset and its flags, e.g. --dataset=synthetic --image_size=96), or --workdir"
        )
    model, checkpoint = load_model(FLAGS.checkpoint or workdirs.best_checkpoint(FLAGS.workdir))
    return model, checkpoint, FLAGS.workdir or os.path.dirname(checkpoint)


def checked_split(model):
    """The --split the model is scored on, checked against its class count before any long work."""
    split = wsol_settings.load_split(FLAGS.split)
    classes = getattr(model, "num_classes", None) or int(model.outputs[0].shape[-1])
    wsol_settings.check_data({FLAGS.split: split}, num_classes=classes)
    return split


def faithfulness_settings() -> dict | None:
    """``--faithfulness``'s steps and fill, or None."""
    return {"steps": FLAGS.faithfulness_steps, "fill": FLAGS.faithfulness_fill} if FLAGS.faithfulness else None


def export_savedmodel() -> None:
    """``--export``: the checkpoint with one localizer and a box threshold as a TF Serving SavedModel."""
    from keras_wsol import localizers

    if "all" in (FLAGS.localizer, FLAGS.layer):
        raise app.UsageError("--export bakes one localizer into the model: --localizer and --layer cannot be all")
    model, checkpoint, base = trained_model(reads_data=FLAGS.box_threshold is None)  # a given tau reads no data
    with localizer_errors():
        localizer = localizers.get_localizer(model, FLAGS.localizer, FLAGS.layer, **localizer_options())
        export_checkpoint(model, localizer, checkpoint, base)


def sweep() -> None:
    """``--localizer=all`` or ``--layer=all``: every localizer at every layer, one table (BagCAMs Tables 4-6)."""
    from keras_wsol import model_protocol, reporting

    model, _, base = trained_model()
    split = checked_split(model)
    names = list(LOCALIZER_NAMES) if FLAGS.localizer == "all" else [FLAGS.localizer]
    with localizer_errors():
        layers = (
            model_protocol.feature_layers(model)
            if FLAGS.layer == "all"
            else [FLAGS.layer or model_protocol.classifier_layer(model)]
        )
        results = reporting.sweep_localizers(
            model, split, names, layers, wsol_settings.protocol(), progress=True,
            faithfulness_settings=faithfulness_settings(), **localizer_options(),
        )  # fmt: skip
    out = FLAGS.output_dir or os.path.join(base, f"eval_{FLAGS.split}_localizers{settings_suffix()}")
    os.makedirs(out, exist_ok=True)
    write_json(results, os.path.join(out, "localizers.json"))
    print(evaluation.format_table(results))
    print(f"\nmetrics: {out}/localizers.json")


def evaluate() -> None:
    """The default command: one localizer's maps on --split under the protocol: table, metrics.json, pictures."""
    from keras_wsol import localizers, reporting

    model, _, base = trained_model()
    split = checked_split(model)
    with localizer_errors():
        localizer = localizers.get_localizer(model, FLAGS.localizer, FLAGS.layer, **localizer_options())
    suffix = "" if FLAGS.localizer == "cam" and FLAGS.layer is None else f"_{FLAGS.localizer}_{localizer.layer}"
    out = FLAGS.output_dir or os.path.join(base, f"eval_{FLAGS.split}{suffix}{settings_suffix()}")
    results = reporting.evaluate_split(
        model,
        split,
        out,
        wsol_settings.protocol(),
        localizer=localizer,
        progress=f"{FLAGS.split} split, {localizer.name}@{localizer.layer}",
        faithfulness_settings=faithfulness_settings(),
    )
    print(evaluation.format_table(results))
    if FLAGS.compare_workdirs:
        compare_curves(model, split, out)
    print(f"\nmetrics and pictures: {out}")


def chosen_command() -> Callable[[], None]:
    """The one command the flags ask for (module docstring): each is a function of this module."""
    if FLAGS.scoremap_root or FLAGS.output_json:
        return score_maps_on_disk
    if FLAGS.images:
        if "all" in (FLAGS.localizer, FLAGS.layer):
            raise app.UsageError("--images takes one --localizer and one --layer, not all")
        return localize_images
    if not (FLAGS.workdir or FLAGS.checkpoint):
        raise app.UsageError(
            "pass --workdir (or --checkpoint), --images, or --scoremap_root/--metadata_root/--output_json"
        )
    if FLAGS.export:
        return export_savedmodel
    if "all" in (FLAGS.localizer, FLAGS.layer):
        return sweep
    return evaluate


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    chosen_command()()


def run(argv: list[str] | None = None) -> None:
    """The evaluate command: define the flags, parse ``argv``, run the mode they ask for."""
    wsol_flags.define_evaluate_flags()
    parsing.show_in_help(__name__, wsol_flags.__name__)
    app.run(parsing.command_main(main), argv=argv, flags_parser=parsing.parse_flags)


if __name__ == "__main__":
    run()
