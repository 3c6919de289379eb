"""Train a WSOL method with model.fit, then evaluate it under the protocol.

    python train.py                                  # CAM on the offline synthetic benchmark
    python train.py --method=cam --backbone=mobilenet_v2 --image_size=224 --workdir=runs/mnv2
    python train.py --flagfile=runs/default/flags.txt   # repeat a run (or resume a killed one)
    python train.py --dataset=cub --tfds_data_dir=DIR --backbone=vgg16 --weights=imagenet --image_size=224
    python train.py --dataset=folder --data_root=IMAGES --metadata_root=metadata/CUB --image_size=224
    python train.py --strategy=mirrored --batch_size=256 ...   # global batch, split over the GPUs
    python train.py --backbone=efficientnet_lite0 --weights=imagenet --image_size=128   # ImageNet features, offline
    python train.py --method=minmaxcam --minmaxcam_lambda_frr=10   # a method and one of its hyper-parameters
    # ORNet: an evaluator, stage 1, then stage 2 (three workdirs)
    python train.py --method=cam --workdir=runs/evaluator
    python train.py --method=ornet --workdir=runs/ornet_stage1
    python train.py --method=ornet_refine --workdir=runs/ornet_stage2 \
        --ornet_refine_stage1_checkpoint=runs/ornet_stage1/checkpoints/last.keras \
        --ornet_refine_evaluator_checkpoint=runs/evaluator/checkpoints/best.keras

A thin entry point of :mod:`keras_wsol.cli.train` (installed: ``wsol-train``).
Each method's hyper-parameters are ``--<method>_<name>`` flags (README tables,
``python train.py --helpfull``). Writes to --workdir: flags.txt, checkpoints/{best,last}.keras, log.csv,
tensorboard/ (with CAM overlays), backup/ (resume), run.json (the run's identity and state),
eval_test/ (metrics.json, pictures). Run the same command again after a crash and it continues
from the last finished epoch (or only evaluates, or does nothing for a finished run);
--overwrite trains anew.
"""

from keras_wsol.cli.train import run

if __name__ == "__main__":
    run()
