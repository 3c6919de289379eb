"""train.py and evaluate.py end to end on a tiny synthetic run, and their errors."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from keras_wsol.cli import quiet
from keras_wsol.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    "--image_size=40",
    "--num_classes=3",
    "--train_images_per_class=8",
    "--eval_images_per_class=4",
    "--batch_size=8",
    "--epochs=2",
]
# An INFO line of a Python file in absl's format ("I1206 17:58:43.677074 1401 functional_saver.py:440] ...").
INFO_LINE = re.compile(r"^I\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \w+\.py:\d+\]", re.MULTILINE)
# TINY without the synthetic benchmark's own flags, for runs on other sources (which refuse them).
TRAINING = [f for f in TINY if not f.startswith(("--num_classes", "--train_images", "--eval_images"))]


def run(script, *args, interpreter_args=(), env=None):
    return subprocess.run(
        [sys.executable, *interpreter_args, os.path.join(ROOT, script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


# Runs a script as __main__, then prints which heavy modules it imported (on exit too, as --help exits).
IMPORT_REPORT = """
import atexit, runpy, sys
atexit.register(lambda: print("IMPORTED", sorted(m for m in ("tensorflow", "keras") if m in sys.modules)))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_reporting_imports(script, *args):
    """``run``, with a last stdout line ``IMPORTED [...]`` naming TensorFlow or Keras if the script imported them."""
    return run(script, *args, interpreter_args=("-c", IMPORT_REPORT))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("run"))
    result = run("train.py", f"--workdir={path}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MaxBoxAccV2" in result.stdout and "center_gaussian" in result.stdout
    return path


def test_train_writes_checkpoints_flags_logs_and_pictures(workdir):
    for name in (
        "flags.txt",
        "log.csv",
        "checkpoints/best.keras",
        "checkpoints/last.keras",
        "eval_test/metrics.json",
        "eval_test/overlays.png",
        "eval_test/box_acc_multi_contour.png",
        "eval_test/pr_curve.png",
    ):
        assert os.path.isfile(os.path.join(workdir, name)), name
    recorded = open(os.path.join(workdir, "flags.txt")).read()
    assert "--image_size=40" in recorded
    # Only the given flags: a repeat lets a method's own optimizer defaults apply again.
    assert "--optimizer=" not in recorded and "--learning_rate=" not in recorded
    metrics = json.load(open(os.path.join(workdir, "eval_test/metrics.json")))
    assert metrics["model"]["num_images"] == 12 and set(metrics) == {"model", "full_image", "center_gaussian"}


def test_evaluate_workdir_reuses_the_run_flags(workdir, tmp_path):
    # As a user runs it: TF_CPP_MIN_LOG_LEVEL unset, so TensorFlow's start-up notices must not reach the terminal.
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    result = run("evaluate.py", f"--workdir={workdir}", "--split=val", f"--output_dir={tmp_path}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.load(open(tmp_path / "metrics.json"))["model"]["num_images"] == 12
    assert not [line for line in result.stderr.splitlines() if quiet.NOISE.search(line)], result.stderr[:2000]


def test_evaluate_checkpoint_takes_its_workdirs_data_or_needs_data_flags(workdir, tmp_path):
    result = run("evaluate.py", f"--checkpoint={workdir}/checkpoints/last.keras", f"--output_dir={tmp_path}/e")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.load(open(tmp_path / "e" / "metrics.json"))["model"]["num_images"] == 12  # the run's 3 x 4 images
    shutil.copy(f"{workdir}/checkpoints/last.keras", tmp_path / "loose.keras")
    result = run("evaluate.py", f"--checkpoint={tmp_path}/loose.keras", f"--output_dir={tmp_path}/f")
    assert result.returncode != 0 and "is not in a train.py workdir: give the data" in result.stderr
    assert not os.path.exists(tmp_path / "f")
    export = ["--export", f"--export_dir={tmp_path}/sm", "--model_name=loose", "--box_threshold=0.3"]
    result = run("evaluate.py", f"--checkpoint={tmp_path}/loose.keras", *export)  # reads no data: allowed
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(tmp_path / "sm" / "loose" / "1" / "saved_model.pb")


def test_evaluator_only_mode_boxes_and_masks(tmp_path):
    split = synthetic.generate("test", num_classes=2, images_per_class=3, image_size=40)
    synthetic.write_metadata_folder(split, str(tmp_path), "test")
    maps = tmp_path / "maps"
    for image_id, mask in zip(split.image_ids, split.masks):
        os.makedirs(maps / os.path.dirname(image_id), exist_ok=True)
        import cv2

        np.save(
            maps / (image_id + ".npy"), cv2.resize(mask.astype(np.float32), (224, 224), interpolation=cv2.INTER_NEAREST)
        )
    out = tmp_path / "new_folder" / "boxes.json"  # created before the evaluation
    result = run_reporting_imports(
        "evaluate.py", f"--scoremap_root={maps}", f"--metadata_root={tmp_path}/metadata/test", f"--output_json={out}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "IMPORTED []"  # numpy and OpenCV only
    boxes = json.load(open(out))
    for key in (
        "num_images",
        "cam_curve_interval",
        "MaxBoxAcc",
        "MaxBoxAcc_threshold",
        "MaxBoxAccV2",
        "MaxBoxAccV2@30",
        "MaxBoxAccV2@50",
        "MaxBoxAccV2@70",
    ):
        assert key in boxes
    assert boxes["num_images"] == 6 and boxes["MaxBoxAcc"] == 100.0
    out = tmp_path / "masks.json"
    result = run(
        "evaluate.py",
        f"--scoremap_root={maps}",
        f"--metadata_root={tmp_path}/metadata_masks/test",
        f"--mask_root={tmp_path}/masks",
        f"--output_json={out}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    masks = json.load(open(out))
    assert masks["PxAP"] == pytest.approx(100.0) and masks["num_images"] == 6
    # The protocol flags mean what they mean for a model's maps: the fixed tau is reported too.
    assert run("evaluate.py", f"--scoremap_root={maps}", f"--metadata_root={tmp_path}/metadata/test",
               f"--output_json={out}", "--fixed_threshold=0.3").returncode == 0  # fmt: skip
    assert json.load(open(out))["GT-known Loc@0.3"] == 100.0
    os.remove(maps / (split.image_ids[1] + ".npy"))
    result = run(
        "evaluate.py", f"--scoremap_root={maps}", f"--metadata_root={tmp_path}/metadata/test", f"--output_json={out}"
    )
    assert result.returncode != 0 and split.image_ids[1] + ".npy" in result.stderr
    result = run(
        "evaluate.py", f"--scoremap_root={maps}", f"--metadata_root={tmp_path}/metadata/test", f"--output_json={maps}"
    )
    assert result.returncode != 0 and f"--output_json={maps} is a folder" in result.stderr


def test_help_lists_the_flags_and_evaluate_help_needs_no_tensorflow():
    evaluate = run_reporting_imports("evaluate.py", "--help")
    assert evaluate.stdout.splitlines()[-1] == "IMPORTED []"  # absl exits with 1 after --help
    for flag in ("--scoremap_root", "--output_json", "--metadata_root", "--localizer", "--workdir", "--export"):
        assert f"  {flag}" in evaluate.stdout, flag
    train = run("train.py", "--help")
    for flag in ("--method", "--epochs", "--workdir", "--minmaxcam_lambda_frr", "--select_checkpoint"):
        assert f"  {flag}" in train.stdout, flag


@pytest.mark.parametrize(
    "lines,error",
    [
        (["--epochs=2", "# a comment", "--batch_size=abc"], "{file}:3: flag --batch_size=abc"),
        (["--epochs=2", "--epoch=4"], "{file}:2: unknown flag --epoch (did you mean --epochs?)"),
        (["--method=camm"], "{file}:1: flag --method=camm"),
        (["--nojit_compile", "epochs=2"], "{file}:2: 'epochs=2' is not a flag"),
        (["--flagfile={file}"], "includes itself"),
        (
            ["--method=complementary", "--beta=10"],
            "{file}:2: --beta was renamed in keras_wsol 0.2.0: it is --complementary_beta now",
        ),
    ],
)
def test_flagfile_errors_name_the_file_and_line(lines, error, tmp_path):
    path = tmp_path / "flags.txt"
    path.write_text("\n".join(lines).format(file=path) + "\n")
    result = run("train.py", f"--flagfile={path}", f"--workdir={tmp_path / 'run'}")
    assert result.returncode != 0 and error.format(file=path) in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize(
    "script,flag,new",
    [
        ("train.py", "--lambda_frr=10", "--minmaxcam_lambda_frr"),
        ("train.py", "--nouse_caam", "--nocomplementary_use_caam"),
        ("evaluate.py", "--export_threshold=0.3", "--box_threshold"),
        ("train.py", "--ornet_alpha=2", "--ornet_refine_alpha"),
        ("train.py", "--entropy_mu=0.4", "--ornet_refine_mu"),
    ],
)
def test_a_renamed_flag_fails_naming_its_new_name(script, flag, new, tmp_path):
    result = run(script, flag, f"--workdir={tmp_path}")
    old = flag[2:].split("=")[0]
    assert result.returncode != 0 and f"--{old} was renamed in keras_wsol " in result.stderr
    assert f"it is {new} now" in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_the_removed_stage_flag_names_the_refinement_method(tmp_path):
    result = run("train.py", "--method=ornet", "--ornet_stage=2", f"--workdir={tmp_path}")
    assert result.returncode != 0 and "--ornet_stage was removed in keras_wsol 0.3.0" in result.stderr
    assert "--method=ornet_refine" in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "flag,choices", [("--method=foo", "cam"), ("--backbone=foo", "mobilenet_v2"), ("--dataset=foo", "synthetic")]
)
def test_unknown_choices_fail_at_once_listing_valid_ones(flag, choices, tmp_path):
    result = run("train.py", flag, f"--workdir={tmp_path}")
    assert result.returncode != 0 and choices in result.stderr and "should be one of" in result.stderr
    assert not os.listdir(tmp_path)


def test_evaluate_with_any_localizer_and_the_sweep(workdir, tmp_path):
    result = run("evaluate.py", f"--workdir={workdir}", "--split=val", "--localizer=bagcams", "--layer=mid")
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.isfile(os.path.join(workdir, "eval_val_bagcams_mid", "metrics.json"))
    fused = ["--localizer=gradcam", "--layer=mid,high", "--layer_fusion=mean", f"--output_dir={tmp_path}/fused"]
    result = run(
        "evaluate.py", f"--workdir={workdir}", "--split=val", *fused, "--faithfulness", "--faithfulness_steps=2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.load(open(tmp_path / "fused" / "metrics.json"))["model"]
    assert scores["num_images"] == 12 and 0 <= scores["Deletion AUC"] <= 100 and 0 <= scores["Insertion AUC"] <= 100
    assert "Insertion AUC" in result.stdout
    result = run(
        "evaluate.py",
        f"--workdir={workdir}",
        "--split=val",
        "--localizer=all",
        "--layer=all",
        f"--output_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = json.load(open(tmp_path / "localizers.json"))
    expected = {f"{m}@{layer}" for m in ("gradcam", "gradcam_pp", "pcs", "bagcams") for layer in ("low", "mid", "high")}
    assert set(sweep) == expected | {"cam@high"}
    assert all(r["num_images"] == 12 and 0 <= r["MaxBoxAccV2"] <= 100 for r in sweep.values())
    assert "bagcams@low" in result.stdout
    result = run("evaluate.py", f"--workdir={workdir}", "--localizer=gradcam", "--layer=nope")
    assert result.returncode != 0 and "--layer=nope" in result.stderr and "no layer named 'nope'" in result.stderr


def folder_flags(root) -> list[str]:
    """The TINY synthetic splits written as a benchmark folder (PNG images and masks)."""
    for split, per_class in (("train", 8), ("val", 4), ("test", 4)):
        data = synthetic.generate(split, num_classes=3, images_per_class=per_class, image_size=40)
        synthetic.write_metadata_folder(data, str(root), split)
    return [
        "--dataset=folder",
        f"--data_root={root}/images",
        f"--metadata_root={root}/metadata",
        f"--mask_root={root}/masks",
        f"--mask_metadata_root={root}/metadata_masks",
    ]


def test_a_metadata_folder_gives_the_numbers_of_the_in_memory_split(workdir, tmp_path):
    flags = folder_flags(tmp_path / "bench")
    result = run(
        "evaluate.py",
        f"--checkpoint={workdir}/checkpoints/best.keras",
        "--image_size=40",
        *flags,
        f"--output_dir={tmp_path}/eval",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from_memory = json.load(open(os.path.join(workdir, "eval_test", "metrics.json")))
    assert json.load(open(tmp_path / "eval" / "metrics.json")) == from_memory  # same boxes, masks and pixels
    for split in ("train", "val"):  # masks for the test split only, as CUB's segmentations often are
        shutil.rmtree(tmp_path / "bench" / "metadata_masks" / split)
    result = run("train.py", f"--workdir={tmp_path}/run", *TRAINING, "--epochs=1", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "run" / "eval_test" / "metrics.json"))["model"]
    assert metrics["num_images"] == 12 and "PxAP" in metrics


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--dataset=folder"], "--dataset=folder needs --data_root and --metadata_root"),
        (
            ["--dataset=folder", "--data_root=nowhere", "--metadata_root=nowhere"],
            "nowhere/train/image_ids.txt: file not found",
        ),
        (["--dataset=imagenet", "--data_root=nowhere", "--tfds_data_dir=nowhere"], "--dataset=imagenet"),
        (  # a user's data flags without --dataset=folder: refused, not a silent run on the synthetic benchmark
            ["--data_root=mine", "--metadata_root=mine"],
            "--data_root is read by --dataset=folder or imagenet only, and this run has --dataset=synthetic: "
            "give --dataset=folder or --dataset=imagenet, or drop --data_root",
        ),
        (["--dataset=folder", "--num_classes=3"], "--num_classes is read by --dataset=synthetic only"),
        (["--dataset=cub", "--metadata_root=x"], "--metadata_root is read by --dataset=folder or imagenet only"),
        (["--weights=imagnet"], "train.py: error: --weights=imagnet: no such file (use none, imagenet or a"),
    ],
)
def test_dataset_flags_fail_naming_the_flag_or_file(flags, message, tmp_path):
    result = run("train.py", f"--workdir={tmp_path}", *TRAINING, *flags)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "method,flags",
    [
        ("cams2i", ["--cams2i_classifier_channels=8", "--cams2i_inter_dim=4", "--set_size=2", "--sets_per_batch=3"]),
        ("complementary", ["--complementary_patch_sizes=32"]),
    ],
)
def test_train_the_published_methods_from_flags(method, flags, tmp_path):
    result = run("train.py", f"--workdir={tmp_path}", f"--method={method}", *TINY, "--epochs=1", *flags)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.load(open(tmp_path / "eval_test" / "metrics.json"))
    assert config["model"]["num_images"] == 12
    import keras

    import keras_wsol.methods  # noqa: F401  (registers the classes)

    model = keras.models.load_model(tmp_path / "checkpoints" / "best.keras")
    if method == "cams2i":
        assert model.uses_class_sets and model.classifier_channels == 8
        # An inference-only hyper-parameter changed on the trained model, scored into its own folder.
        result = run("evaluate.py", f"--workdir={tmp_path}", "--inference_setting=fusion=s1")
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.load(open(tmp_path / "eval_test_fusion-s1" / "metrics.json"))["model"]["num_images"] == 12
        result = run("evaluate.py", f"--workdir={tmp_path}", "--inference_setting=int_weight=2")
        assert result.returncode == 2 and "--inference_setting=int_weight=2: int_weight changes training in" in (
            result.stderr
        )
    else:  # hidden patches filled with the training split's mean pixel
        train = synthetic.generate("train", num_classes=3, images_per_class=8, image_size=40)
        np.testing.assert_allclose(model.hide_fill, train.images.reshape(-1, 3).mean(axis=0), rtol=1e-5)
        assert model.patch_sizes == (32,)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--method=cams2i", "--backbone=inception_v3"], "s2_tap='mid'"),
        (
            ["--method=complementary", "--complementary_patch_sizes=16,big"],
            "--complementary_patch_sizes: give int values >= 1",
        ),
    ],
)
def test_method_settings_the_backbone_cannot_take_fail_naming_the_flag(flags, message, tmp_path):
    result = run("train.py", f"--workdir={tmp_path}", *TINY, *flags)
    assert result.returncode != 0 and message in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_evaluate_exports_versioned_savedmodels(workdir, tmp_path):
    root = tmp_path / "saved_models"
    result = run("evaluate.py", f"--workdir={workdir}", "--export", f"--export_dir={root}", "--model_name=tiny")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "chosen on the val split" in result.stdout
    # The SavedModel writer's INFO lines stay off unless --verbosity asks for them (the second export does).
    assert not INFO_LINE.findall(result.stderr), result.stderr[-3000:]
    record = json.load(open(root / "tiny" / "1" / "assets.extra" / "keras_wsol.json"))
    assert record["threshold_source"] == "val split, MaxBoxAcc" and 0 <= record["threshold"] < 1
    assert record["checkpoint"].endswith("best.keras") and os.path.isfile(root / "tiny" / "1" / "saved_model.pb")
    result = run(
        "evaluate.py",
        f"--workdir={workdir}",
        "--export",
        f"--export_dir={root}",
        "--model_name=tiny",
        "--localizer=gradcam",
        "--layer=mid",
        "--box_threshold=0.3",
        "--verbosity=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert INFO_LINE.findall(result.stderr), result.stderr[-3000:]
    record = json.load(open(root / "tiny" / "2" / "assets.extra" / "keras_wsol.json"))
    assert (record["localizer"], record["layer"], record["threshold"]) == ("gradcam", "mid", 0.3)
    for args, message in (
        (["--version=1"], "--version=1"),
        (["--box_threshold=1.5"], "--box_threshold"),
        (["--model_name=../x"], "--model_name"),
        (["--localizer=all"], "cannot be all"),
    ):
        result = run(
            "evaluate.py", f"--workdir={workdir}", "--export", f"--export_dir={root}", "--model_name=tiny", *args
        )
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert sorted(os.listdir(root / "tiny")) == ["1", "2"]


def test_ornet_evaluator_stage1_and_stage2_chain_from_the_command_line(workdir, tmp_path):
    """The CAM run of ``workdir`` is the evaluator; stage 2 starts from stage 1's best checkpoint."""
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    evaluator = os.path.join(workdir, "checkpoints", "best.keras")
    result = run(
        "train.py", f"--workdir={stage1}", "--method=ornet", "--ornet_generator_channels=8", *TINY, "--epochs=1"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    refine = [
        "--method=ornet_refine",
        *TINY,
        "--epochs=1",
        f"--ornet_refine_evaluator_checkpoint={evaluator}",
        f"--ornet_refine_stage1_checkpoint={stage1 / 'checkpoints' / 'best.keras'}",
    ]
    for args, message in (
        (refine[:-1], "--ornet_refine_stage1_checkpoint is required"),
        (
            refine[:-2] + [f"--ornet_refine_evaluator_checkpoint={tmp_path}/none.keras", refine[-1]],
            "none.keras: no such file",
        ),
        (refine + ["--backbone=vgg16"], "backbone='vgg16' but the stage-1 model has 'small'"),
    ):
        result = run("train.py", f"--workdir={tmp_path / 'bad'}", *args)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    result = run("train.py", f"--workdir={stage2}", *refine, "--ornet_refine_alpha=1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "entropy" in open(stage2 / "log.csv").readline() and os.path.isfile(stage2 / "eval_test" / "metrics.json")
    import keras

    import keras_wsol.methods  # noqa: F401  (registers the classes)

    model = keras.models.load_model(stage2 / "checkpoints" / "best.keras")
    original = keras.models.load_model(evaluator)
    assert (type(model).__name__, model.alpha, model.generator_channels) == ("ORNetRefinement", 1.0, 8)
    assert all(np.array_equal(a, b) for a, b in zip(model.evaluator.get_weights(), original.get_weights()))
    result = run("evaluate.py", f"--workdir={stage2}", f"--compare_workdirs={workdir},{stage1}")
    assert result.returncode == 0 and "within 5 points" in result.stdout, result.stderr[-2000:]
    curves = json.load(open(stage2 / "eval_test" / "threshold_curves.json"))
    assert set(curves) == {"taus", "stage2", "stage1", os.path.basename(workdir)} and len(curves["stage1"]) == 100
    result = run("evaluate.py", f"--workdir={stage2}", "--export", f"--export_dir={tmp_path / 'saved'}")
    assert result.returncode == 0 and os.path.isfile(tmp_path / "saved" / "stage2" / "1" / "saved_model.pb"), (
        result.stderr[-2000:]
    )


def test_input_normalization_by_the_datasets_statistics_by_default(tmp_path):
    result = run("train.py", f"--workdir={tmp_path}", *TINY, "--epochs=1", "--noevaluate")
    assert result.returncode == 0, result.stderr[-3000:]
    import keras

    import keras_wsol.methods  # noqa: F401  (registers the classes)

    model = keras.models.load_model(tmp_path / "checkpoints" / "best.keras")
    train = synthetic.generate("train", num_classes=3, images_per_class=8, image_size=40)
    np.testing.assert_allclose(model.input_statistics[0], train.images.reshape(-1, 3).mean(axis=0), rtol=1e-5)
    result = run("train.py", f"--workdir={tmp_path}/x", *TINY, "--input_normalization=dataset", "--backbone=vgg16")
    assert result.returncode != 0 and "--input_normalization is for --backbone=small, not vgg16" in result.stderr


def test_data_problems_are_refused_before_training_and_nothing_is_written(tmp_path):
    flags = folder_flags(tmp_path / "bench")
    sizes = tmp_path / "bench" / "metadata" / "test" / "image_sizes.txt"
    sizes.write_text(sizes.read_text().replace(",40,40", ",64,48", 1))
    result = run("train.py", f"--workdir={tmp_path}/run", *TRAINING, *flags)
    assert result.returncode != 0
    assert (
        "test split: 1 image file(s) with problems" in result.stderr and "image_sizes.txt says 64x48" in result.stderr
    )
    assert not os.path.exists(tmp_path / "run")  # no flags.txt, no checkpoints


def test_normalized_boxes_are_refused_naming_the_flag_before_training(tmp_path):
    flags = folder_flags(tmp_path / "bench")
    boxes = tmp_path / "bench" / "metadata" / "test" / "localization.txt"
    lines = [line.split(",") for line in boxes.read_text().split()]
    boxes.write_text("".join(f"{p[0]},{','.join(f'{float(v) / 40:g}' for v in p[1:])}\n" for p in lines))
    result = run("train.py", f"--workdir={tmp_path}/run", *TRAINING, *flags)
    assert result.returncode == 2 and "every box coordinate lies in [0, 1]" in result.stderr
    assert "--boxes_normalized" in result.stderr and not os.path.exists(tmp_path / "run")


def test_a_data_error_prints_the_error_not_the_flag_help(tmp_path):
    result = run("train.py", f"--workdir={tmp_path}", "--data_root=mine")
    assert result.returncode == 2 and "train.py: error: --data_root is read by" in result.stderr
    assert "--batch_size" not in result.stderr and len(result.stderr.splitlines()) < 30  # absl's help: ~450 lines


def test_a_jpeg_cut_short_is_named_before_any_model_is_built(tmp_path):
    from PIL import Image

    flags = folder_flags(tmp_path / "bench")
    test_ids = (tmp_path / "bench" / "metadata" / "test" / "image_ids.txt").read_text().split()
    victim = tmp_path / "bench" / "images" / test_ids[-1]
    Image.open(victim).convert("RGB").save(victim, format="JPEG")  # the pipeline reads images by content
    victim.write_bytes(victim.read_bytes()[:-20])  # header intact, end marker gone: PIL's verify() passes it
    result = run("train.py", f"--workdir={tmp_path}/run", *TRAINING, *flags)
    assert result.returncode != 0
    assert f"{victim}: not a readable image" in result.stderr and "truncated image (no end marker)" in result.stderr
    assert "Epoch" not in result.stdout + result.stderr and not os.path.exists(tmp_path / "run")


def test_evaluate_refuses_a_model_of_another_class_count(workdir, tmp_path):
    result = run("evaluate.py", f"--workdir={workdir}", "--num_classes=2", f"--output_dir={tmp_path}/eval")
    assert result.returncode != 0
    assert "test split: its labels span 2 classes, the model has 3" in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(tmp_path / "eval")


def snapshot(folder) -> dict:
    """Every file under ``folder`` with its modification time and size."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            stat = os.stat(os.path.join(root, name))
            out[os.path.relpath(os.path.join(root, name), folder)] = (stat.st_mtime_ns, stat.st_size)
    return out


def test_rerunning_a_finished_command_changes_nothing_and_other_flags_are_refused(workdir, tmp_path):
    import shutil

    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    before = snapshot(copy)
    again = run("train.py", f"--workdir={copy}", *TINY)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-2000:]
    repeat = run("train.py", f"--flagfile={copy}/flags.txt")  # the README's repeat
    assert repeat.returncode == 0 and "nothing to do" in repeat.stdout, repeat.stderr[-2000:]
    assert snapshot(copy) == before
    other = run("train.py", f"--workdir={copy}", *TINY, "--image_size=48")
    assert other.returncode != 0 and "--image_size: 40 there, 48 here" in other.stderr, other.stderr[-2000:]
    longer = run("train.py", f"--workdir={copy}", *TINY, "--epochs=3")
    assert longer.returncode == 2 and "--epochs=3: --workdir=" in longer.stderr and "after 2 epochs" in longer.stderr
    assert snapshot(copy) == before  # flags.txt is not rewritten by a refused command


def test_a_split_rewritten_at_the_same_path_is_refused_not_scored_as_trained(tmp_path):
    flags = folder_flags(tmp_path / "bench")
    result = run("train.py", f"--workdir={tmp_path}/run", *TRAINING, "--epochs=1", "--noevaluate", *flags)
    assert result.returncode == 0, result.stderr[-2000:]
    labels = tmp_path / "bench" / "metadata" / "test" / "class_labels.txt"
    lines = labels.read_text().split()
    labels.write_text("".join(f"{line[:-1]}{(int(line[-1]) + 1) % 3}\n" for line in lines))  # another test split
    again = run("train.py", f"--workdir={tmp_path}/run", *TRAINING, "--epochs=1", *flags)
    assert again.returncode == 2 and "test split contents: " in again.stderr, again.stderr[-2000:]
    assert "trained already" not in again.stdout and not os.path.exists(tmp_path / "run" / "eval_test")


def test_a_crash_in_the_final_evaluation_resumes_without_retraining(workdir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    record = json.load(open(copy / "run.json"))
    assert record["state"] == "evaluated"
    json.dump({**record, "state": "trained"}, open(copy / "run.json", "w"))  # as if killed while evaluating
    shutil.rmtree(copy / "eval_test")
    best = snapshot(copy / "checkpoints")
    result = run("train.py", f"--workdir={copy}", *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained already" in result.stdout and "Epoch " not in result.stdout
    assert os.path.isfile(copy / "eval_test" / "metrics.json") and snapshot(copy / "checkpoints") == best
    assert json.load(open(copy / "run.json"))["state"] == "evaluated"
    overwritten = run("train.py", f"--workdir={copy}", *TINY, "--overwrite")
    assert overwritten.returncode == 0 and "Epoch 1/2" in overwritten.stdout, overwritten.stderr[-2000:]
    assert snapshot(copy / "checkpoints") != best


def test_cache_files_are_keyed_to_the_data_they_hold(tmp_path):
    result = run("train.py", f"--workdir={tmp_path}/run", *TINY, "--epochs=1", "--noevaluate", f"--cache={tmp_path}/c")
    assert result.returncode == 0, result.stderr[-2000:]
    from keras_wsol.data import splits

    train = synthetic.generate("train", num_classes=3, images_per_class=8, image_size=40).as_split(3)
    names = {name.split(".")[0] for name in os.listdir(tmp_path) if name.startswith("c_")}
    assert f"c_train_{splits.fingerprint(train, 40)}" in names, names
