"""Class-set methods under MirroredStrategy over two logical CPUs: each replica gets whole sets."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method,kwargs,extra_log", [
    ("MinMaxCAM", "set_size=3", "stage2_loss"),
    ("CAMs2i", "classifier_channels=8, inter_dim=4, ramp_steps=0", "inter"),
])
def test_two_replicas_train_on_whole_sets(method, kwargs, extra_log):
    """A fresh process: logical devices are fixed when TensorFlow starts."""
    code = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_wsol.data import pipeline, synthetic
        from keras_wsol.methods import {method}
        data = synthetic.generate("train", num_classes=4, images_per_class=6, image_size=32)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = {method}(num_classes=4, backbone="small", image_size=32, {kwargs})
            model.compile(optimizer=keras.optimizers.Adam(1e-3))
        ds = pipeline.class_set_dataset(data.images, data.labels, set_size=3, sets_per_batch=2)
        logs = model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0).history
        print("REPLICAS", strategy.num_replicas_in_sync, "LOSS", logs["loss"][-1], logs["{extra_log}"][-1])
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[words.index("REPLICAS") + 1] == "2"
    assert np.isfinite(float(words[words.index("LOSS") + 1])) and np.isfinite(float(words[words.index("LOSS") + 2]))


def test_ornet_stages_under_two_replicas():
    code = textwrap.dedent("""
        import numpy as np, tensorflow as tf, keras
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from keras_wsol.data import pipeline, synthetic
        from keras_wsol.methods import CAM, ORNet
        data = synthetic.generate("train", num_classes=2, images_per_class=8, image_size=32)
        ds = pipeline.training_dataset(data.images, data.labels, 8, seed=0)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            stage1 = ORNet(num_classes=2, backbone="small", image_size=32, generator_channels=4)
            stage1.compile(optimizer=keras.optimizers.Adam(1e-3))
            first = stage1.fit(ds, epochs=1, verbose=0).history["loss"][-1]
            stage2 = ORNet.refine(stage1, CAM(num_classes=2, backbone="small", image_size=32))
            stage2.compile(optimizer=keras.optimizers.Adam(1e-4))
            logs = stage2.fit(ds, epochs=1, verbose=0).history
        print("REPLICAS", strategy.num_replicas_in_sync, "LOSS", first, logs["loss"][-1], logs["entropy"][-1])
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0, result.stderr[-3000:]
    words = result.stdout.split()
    assert words[words.index("REPLICAS") + 1] == "2"
    assert all(np.isfinite(float(words[words.index("LOSS") + k])) for k in (1, 2, 3))
