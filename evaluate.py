"""Evaluate under the WSOL protocol: a trained workdir, or score maps computed elsewhere.

    python evaluate.py --workdir=runs/default [--split=test]
    python evaluate.py --workdir=runs/default --localizer=bagcams --layer=mid
    python evaluate.py --workdir=runs/default --localizer=all --layer=all
    python evaluate.py --workdir=runs/ornet_stage2 --compare_workdirs=runs/default,runs/ornet_stage1
    python evaluate.py --scoremap_root=DIR --metadata_root=DIR [--mask_root=DIR] \\
        [--cam_curve_interval=0.01] [--resize_length=224] --output_json=FILE
    python evaluate.py --workdir=runs/default --export [--localizer=... --layer=...] \\
        [--export_dir=saved_models] [--model_name=NAME] [--version=N]
    python evaluate.py --images=a.jpg,b.png --imagenet=efficientnet_lite0 --localizer=bagcams [--layer=...]
    python evaluate.py --images=a.jpg --workdir=runs/default [--box_threshold=0.2]

A thin entry point of :mod:`keras_wsol.cli.evaluate` (installed:
``wsol-evaluate``). The first prints the table (model and trivial baselines) and writes
metrics.json and pictures to --output_dir (default WORKDIR/eval_SPLIT, or
WORKDIR/eval_SPLIT_LOCALIZER_LAYER with another localizer). With ``all`` for
--localizer or --layer it sweeps every localizer over every feature tap (CAM
only at the classifier's layer) and writes localizers.json. The last
reads ``<scoremap_root>/<image_id>.npy`` for every line of
image_ids.txt and needs no model. ``--export`` writes a TF Serving
SavedModel (keras_wsol.export) to EXPORT_DIR/MODEL_NAME/VERSION, with the box
threshold chosen on the val split. ``--images`` localizes image files with an
ImageNet classifier (--imagenet, offline weights) or a trained checkpoint:
top-5 classes and a box per file, and an overlay PNG in --output_dir (default
WORKDIR/images, or ./localized_images).
"""

from keras_wsol.cli.evaluate import run

if __name__ == "__main__":
    run()
