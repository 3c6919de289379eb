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
from keras import ops

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def replica_mean(per_example: tf.Tensor) -> tf.Tensor:
    """Mean over the global batch: per-replica sum / (replica batch x replicas).

    Under ``tf.distribute`` the optimizer sums gradients over replicas, so
    each replica's loss is scaled by the global batch size.
    """
    per_example = ops.cast(per_example, "float32")
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return ops.sum(per_example) / ops.cast(ops.shape(per_example)[0] * replicas, "float32")


def multi_worker_logs(logs: dict) -> dict:
    """A train or test step's logs in the form Keras 3's ``fit`` can reduce under MultiWorkerMirroredStrategy.

    Keras averages multi-worker logs with ``strategy.reduce("MEAN", axis=0)``,
    which needs an axis to reduce (keras-team/keras#20585): one-element
    vectors come out as scalars. Other strategies get ``logs`` unchanged.
    """
    if isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy):
        return {name: keras.ops.reshape(value, (1,)) for name, value in logs.items()}
    return logs


class MultiWorkerFit:
    """Mixin for a ``keras.Model``: Keras' pre-fit build made to work under MultiWorkerMirroredStrategy.

    Keras 3 reduces the first distributed batch with
    ``strategy.reduce("MEAN", ...)`` to learn its shapes, which
    MultiWorkerMirroredStrategy cannot do eagerly ("Attempt to convert a
    value (PerReplica...)", keras-team/keras#20585). One replica's local
    batch has the shapes the build needs.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is not None and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda x: (
                        strategy.experimental_local_results(x)[0]
                        if isinstance(x, tf.distribute.DistributedValues)
                        else x
                    ),
                    next(it),
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


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
    return int(task.get("index", 0)) + (
        1 if task.get("type") == "worker" and "chief" in config.get("cluster", {}) else 0
    )


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
