"""keras_wsol against PyTorch on one machine: the CAM train step and a BagCAMs pass, ResNet50 with the WSOL surgery.

    pip install -e ".[bench]"      # PyTorch; torchvision is not needed

The ``bench`` extra asks PyPI for ``torch``, whose Linux x86-64 wheels carry
CUDA (several GB). A CPU build is all this benchmark uses: install PyTorch's
CPU wheel first, from the CPU package index PyTorch's own install page names
(or any torch >= 2.4 already on the machine), and the extra then installs
nothing more.
    python benchmarks/peer_speed.py [--size 224] [--batch 8] [--rounds 5] [--threads 2]
        [--channels_last] [--torch_compile] [--jit_compile]

The PyTorch side is written here, layer for layer as keras_wsol builds it:
keras.applications' ResNet50 (v1: the stride on each first block's 1x1
convs, convolutions with biases, BatchNorm epsilon 1.001e-5), the CAM
surgery (conv4 and conv5 at stride 1: a 28 x 28 map at 224 px), caffe
preprocessing (BGR minus the ImageNet mean) inside the model, GAP and a
linear classifier; every weight is copied from the Keras model. Before any
timing the script checks that both compute the same logits and loss on the
same batch, and the same BagCAMs map; it stops if they differ.

Timed, rounds alternating keras_wsol and PyTorch in one process, the
fastest round kept (the least disturbed by other work):
* a train step: forward, cross-entropy, backward, SGD with momentum 0.9;
* BagCAMs at ``conv3_block4_out`` (``mid``): one forward pass and the
  gradient of log(raw logit) with guided backpropagation through the ReLUs
  above the layer, then the BagCAMs rule, as the official code.
The last column is keras_wsol's time over PyTorch's: at most 1.0 means as
fast or faster. ``--channels_last`` and ``--torch_compile`` are PyTorch's
options, ``--jit_compile`` (XLA) ours.
"""

import argparse
import time

import keras
import numpy as np
import tensorflow as tf
import torch
from torch import nn

from keras_wsol import localizers
from keras_wsol.layers import CAFFE_MEAN_BGR
from keras_wsol.methods import CAM

STAGES = ((2, 3, 64, 1), (3, 4, 128, 2), (4, 6, 256, 1), (5, 3, 512, 1))  # stage, blocks, width, first stride


class Block(nn.Module):
    """keras.applications' ResNet50 bottleneck block (stride on the 1x1 convs)."""

    def __init__(self, name: str, channels: int, width: int, stride: int, shortcut: bool):
        super().__init__()
        self.prefix = name
        self.conv1, self.bn1 = nn.Conv2d(channels, width, 1, stride), nn.BatchNorm2d(width, eps=1.001e-5)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, padding=1), nn.BatchNorm2d(width, eps=1.001e-5)
        self.conv3, self.bn3 = nn.Conv2d(width, 4 * width, 1), nn.BatchNorm2d(4 * width, eps=1.001e-5)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(channels, 4 * width, 1, stride), nn.BatchNorm2d(4 * width, eps=1.001e-5))
            if shortcut
            else None
        )
        self.relu1, self.relu2, self.relu_out = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x):
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu_out(y + (self.shortcut(x) if self.shortcut is not None else x))

    def keras_names(self):
        """(torch module, Keras layer name) pairs."""
        pairs = [(self.conv1, "1_conv"), (self.bn1, "1_bn"), (self.conv2, "2_conv"), (self.bn2, "2_bn")]
        pairs += [(self.conv3, "3_conv"), (self.bn3, "3_bn")]
        if self.shortcut is not None:
            pairs += [(self.shortcut[0], "0_conv"), (self.shortcut[1], "0_bn")]
        return [(module, f"{self.prefix}_{name}") for module, name in pairs]


class TorchCAM(nn.Module):
    """ResNet50 with the WSOL surgery, caffe preprocessing, GAP and a linear classifier."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 64, 7, 2, padding=3), nn.BatchNorm2d(64, eps=1.001e-5), nn.ReLU()
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        blocks, channels = [], 64
        for stage, count, width, stride in STAGES:
            for index in range(count):
                name = f"conv{stage}_block{index + 1}"
                blocks.append(Block(name, channels, width, stride if index == 0 else 1, index == 0))
                channels = 4 * width
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Linear(channels, num_classes)
        self.register_buffer("mean", torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))

    def forward(self, rgb, capture: str | None = None):
        """Logits of [B, 3, H, W] RGB pixels in [0, 255]; with ``capture``, also that block's output."""
        x = rgb.flip(1) - self.mean
        x = self.pool(self.relu(self.bn1(self.conv1(x))))
        captured = None
        for block in self.blocks:
            x = block(x)
            if block.prefix + "_out" == capture:
                captured = x
        logits = self.classifier(x.mean(dim=(2, 3)))
        return (logits, captured) if capture else logits

    def copy_from(self, model: CAM) -> None:
        """Every weight of the keras_wsol CAM model ``model``."""
        layers = {layer.name: layer for layer in model.backbone.get_layer("functional").layers}
        pairs = [(self.conv1, "conv1_conv"), (self.bn1, "conv1_bn")]
        pairs += [pair for block in self.blocks for pair in block.keras_names()]
        with torch.no_grad():
            for module, name in pairs:
                weights = [np.asarray(w) for w in layers[name].weights]
                if isinstance(module, nn.Conv2d):
                    module.weight.copy_(torch.from_numpy(weights[0].transpose(3, 2, 0, 1).copy()))
                    module.bias.copy_(torch.from_numpy(weights[1]))
                else:  # gamma, beta, moving mean, moving variance
                    for target, value in zip(
                        (module.weight, module.bias, module.running_mean, module.running_var), weights
                    ):
                        target.copy_(torch.from_numpy(value))
            self.classifier.weight.copy_(torch.from_numpy(np.asarray(model.classifier.kernel).T.copy()))
            self.classifier.bias.copy_(torch.from_numpy(np.asarray(model.classifier.bias)))


def torch_bagcams(model: TorchCAM, images: torch.Tensor, layer: str) -> torch.Tensor:
    """BagCAMs as the official code: guided ReLU gradients, d log(logit) at ``layer``, the per-channel rule."""
    hooks = [
        m.register_full_backward_hook(lambda _m, grad_in, _g: (grad_in[0].clamp(min=0),))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        logits, features = model(images, capture=layer)
        features.retain_grad()
        picked = logits.gather(1, logits.argmax(1, keepdim=True))[:, 0]
        (picked.clamp(min=1e-6).log()).sum().backward()
        product = features.grad * features
        weight = 1.0 + product.mean(dim=(2, 3), keepdim=True)
        return torch.relu(weight * product).sum(1).detach()
    finally:
        for hook in hooks:
            hook.remove()


def fastest(fns: dict, rounds: int) -> dict:
    """Fastest seconds of each callable, rounds interleaved after two warm-up calls."""
    for fn in fns.values():
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: min(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--torch_compile", action="store_true")
    parser.add_argument("--jit_compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)

    keras.utils.set_random_seed(0)
    ours = CAM(num_classes=args.classes, backbone="resnet50", image_size=args.size)
    ours.compile(optimizer=keras.optimizers.SGD(1e-3, momentum=0.9), jit_compile=args.jit_compile)
    theirs = TorchCAM(args.classes)
    theirs.copy_from(ours)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch, args.size, args.size, 3)).astype("float32")
    y = rng.integers(0, args.classes, args.batch)
    tx, ty = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y)
    if args.channels_last:
        theirs = theirs.to(memory_format=torch.channels_last)
        tx = tx.contiguous(memory_format=torch.channels_last)

    # Same computation first: inference logits, the training loss (batch statistics), the BagCAMs map.
    theirs.eval()
    with torch.no_grad():
        np.testing.assert_allclose(theirs(tx).numpy(), np.asarray(ours(x)), rtol=2e-3, atol=2e-3)
    maps_ours = np.asarray(localizers.get_localizer(ours, "bagcams", "mid").raw_maps(x)[0])
    maps_theirs = torch_bagcams(theirs, tx.clone(), "conv3_block4_out").numpy()
    np.testing.assert_allclose(maps_theirs, maps_ours, rtol=2e-2, atol=1e-3 * np.abs(maps_ours).max())
    theirs.train()
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        loss_theirs = float(loss_fn(theirs(tx), ty))
    loss_ours = float(
        keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, ours(x, training=True), from_logits=True))
    )
    assert abs(loss_theirs - loss_ours) < 1e-3 * max(1.0, abs(loss_ours)), (loss_theirs, loss_ours)
    print(f"same weights, same numbers: training loss {loss_ours:.5f} (keras_wsol) / {loss_theirs:.5f} (PyTorch)")

    optimizer = torch.optim.SGD(theirs.parameters(), lr=1e-3, momentum=0.9)
    step_model = torch.compile(theirs) if args.torch_compile else theirs

    def torch_step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(step_model(tx), ty).backward()
        optimizer.step()

    ours_bagcams = localizers.get_localizer(ours, "bagcams", "mid")
    theirs.eval()
    bag = {
        "keras_wsol": lambda: np.asarray(ours_bagcams.raw_maps(x)[0]),
        "PyTorch": lambda: torch_bagcams(theirs, tx, "conv3_block4_out"),
    }
    bag_times = fastest(bag, args.rounds)
    theirs.train()
    step = {"keras_wsol": lambda: ours.train_on_batch(x, y), "PyTorch": torch_step}
    step_times = fastest(step, args.rounds)
    options = [f"{args.size} px, batch {args.batch}, {args.threads} threads"]
    options += [name for name in ("channels_last", "torch_compile", "jit_compile") if getattr(args, name)]
    print(f"ResNet50 CAM ({', '.join(options)}), fastest of {args.rounds} rounds")
    print(f"{'':24s}{'keras_wsol s':>14s}{'PyTorch s':>12s}{'ratio':>8s}")
    for name, times in (("train step", step_times), ("BagCAMs at mid", bag_times)):
        ratio = times["keras_wsol"] / times["PyTorch"]
        print(f"{name:24s}{times['keras_wsol']:14.3f}{times['PyTorch']:12.3f}{ratio:8.2f}")


if __name__ == "__main__":
    main()
