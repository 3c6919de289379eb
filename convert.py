"""Convert annotated photos into the benchmark metadata folder the library reads (docs/DATA.md).

    python convert.py voc VOCdevkit/VOC2007 data/voc07                      # Pascal VOC (ImageSets/Main splits)
    python convert.py coco annotations/instances_val2017.json data/coco --image_root=val2017 --classes=dog,cat
    python convert.py yolo my_yolo_set data/mine --names=classes.txt --split=60,10,30 --seed=0
    python convert.py tiny_imagenet tiny-imagenet-200 data/tiny --classes=n01443537,goldfish --max_per_class=100,20,50
    python train.py --dataset=folder --data_root=data/voc07/images --metadata_root=data/voc07

A thin entry point of :mod:`keras_wsol.cli.convert` (installed: ``wsol-convert``).
"""

from keras_wsol.cli.convert import run

if __name__ == "__main__":
    run()
