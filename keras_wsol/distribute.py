"""tf.distribute around model building and ``fit``: strategies, synchronized BatchNorm, the chief worker.

Every method's losses are means over the global batch (``replica_mean``),
so under any strategy a step follows the same gradient as on one device.
BatchNorm is the one layer whose training output depends on how the batch
is split; :func:`synchronize_batch_norm` makes its statistics global too.

Example:
    >>> strategy = build_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
"""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def build_strategy(kind: str, tpu: str | None = None) -> tf.distribute.Strategy:
    """The strategy named ``kind``; ``multi_worker`` reads the cluster from ``TF_CONFIG``."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        return tf.distribute.MirroredStrategy()
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("multi_worker needs the TF_CONFIG environment variable (cluster and this task)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {kind!r}; choose one of {STRATEGIES}")


def worker_id() -> int | None:
    """This task's index in a multi-worker cluster (``TF_CONFIG``), or None outside one."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}"))
    task = config.get("task", {})
    if not task:
        return None
    return int(task.get("index", 0)) + (1 if task.get("type") == "worker" and "chief" in config.get("cluster", {}) else 0)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's checkpoints, logs and evaluation (always, outside multi-worker)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    return worker_id() in (None, 0)


def synchronize_batch_norm(model: keras.Model) -> int:
    """Make every BatchNorm layer of ``model`` (nested models too) average its batch statistics over replicas.

    Returns how many layers it changed. The layers read the flag at call
    time, so this works after building; it is saved with the model and
    harmless on one device.
    """
    changed = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            changed += 1
    return changed
