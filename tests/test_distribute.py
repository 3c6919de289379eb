"""tf.distribute: every method's step on two replicas equals the one-device step; a two-process multi-worker fit."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def python(code: str, **kwargs) -> subprocess.CompletedProcess:
    """A fresh process: logical devices are fixed when TensorFlow starts."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=ENV, **kwargs)


def test_every_method_step_on_two_replicas_equals_one_device():
    """Same weights, same batch of two class sets: loss and updated weights agree (hiding and erasing made deterministic)."""
    result = python("""
        import json, numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_wsol import distribute
        from keras_wsol.data import synthetic
        from keras_wsol.methods import CAM, CAMs2i, Complementary, MinMaxCAM, ORNet
        data = synthetic.generate("train", num_classes=4, images_per_class=4, image_size=32)
        x, y = data.images[:8].astype("float32"), data.labels[:8]  # classes 0 and 1: a whole set per replica
        common = dict(num_classes=4, backbone="small", image_size=32)
        makers = {
            "cam": lambda: CAM(**common),
            "cams2i": lambda: CAMs2i(**common, classifier_channels=8, inter_dim=4, ramp_steps=0),
            "complementary": lambda: Complementary(**common, hide_prob=1.0, patch_sizes=(8,)),  # X hidden, X~ whole
            "minmaxcam": lambda: MinMaxCAM(**common, set_size=4),
            "ornet_stage1": lambda: ORNet(**common, generator_channels=4),
            "ornet_stage2": lambda: ORNet.refine(ORNet(**common, generator_channels=4), CAM(**common), erasing=False),
        }

        def step(make, strategy):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = make()
                model.compile(optimizer=keras.optimizers.SGD(0.1))
            if strategy.num_replicas_in_sync > 1:
                distribute.synchronize_batch_norm(model)
            model(x[:1])
            before = [w.numpy().copy() for w in model.weights]
            loss = model.fit(tf.data.Dataset.from_tensors((x, y)), epochs=1, verbose=0).history["loss"][0]
            return before, loss, [w.numpy() for w in model.weights]

        report = {}
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for name, make in makers.items():
            one = step(make, tf.distribute.get_strategy())
            two = step(make, mirrored)
            same_start = all(np.array_equal(a, b) for a, b in zip(one[0], two[0]))
            moved = max(float(np.abs(a - b).max()) for a, b in zip(one[0], one[2]))
            gap = max(float(np.abs(a - b).max()) for a, b in zip(one[2], two[2]))
            report[name] = [same_start, one[1], two[1], moved, gap]
        print("REPORT", json.dumps(report))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.split("REPORT", 1)[1])
    assert sorted(report) == ["cam", "cams2i", "complementary", "minmaxcam", "ornet_stage1", "ornet_stage2"]
    for name, (same_start, loss_one, loss_two, moved, gap) in report.items():
        assert same_start, name
        assert np.isfinite(loss_one) and abs(loss_one - loss_two) <= 1e-4 * max(1.0, abs(loss_one)), (name, loss_one, loss_two)
        assert moved > 1e-4 and gap < 1e-3 * moved, (name, moved, gap)  # the step moved, the same way


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_process_multi_worker_fit_on_localhost(tmp_path):
    workers = [f"localhost:{_free_port()}", f"localhost:{_free_port()}"]
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--strategy=multi_worker", f"--workdir={tmp_path}",
            "--image_size=32", "--num_classes=3", "--train_images_per_class=8", "--eval_images_per_class=2",
            "--batch_size=8", "--epochs=2"]
    procs = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(args, cwd=ROOT, env={**ENV, "TF_CONFIG": json.dumps(config)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    assert "MaxBoxAccV2" in outputs[0][0] and "MaxBoxAccV2" not in outputs[1][0]  # the chief evaluates
    assert len(open(tmp_path / "log.csv").read().splitlines()) == 3  # header and two epochs, written once
    assert os.path.isfile(tmp_path / "checkpoints" / "best.keras")
    assert not os.path.exists(tmp_path / ".worker1")  # the other worker's scratch folder is gone
