"""Optimizers with parameter groups and PyTorch's weight decay, as the papers' official codes train.

Every paper here fine-tunes an ImageNet backbone at a tenth of the new layers'
learning rate (PyTorch parameter groups, e.g. backbone 1e-4, head 1e-3), and
the official codes use ``torch.optim.SGD`` with *coupled* L2 decay: ``wd * w``
is added to the gradient before momentum. Keras has neither: one learning rate
per optimizer and decoupled decay (``w -= lr * wd * w``, outside momentum).

:class:`ParameterGroups` adds both to a Keras optimizer:

- ``set_lr_multipliers([(variable, m), ...])``: the variable's step uses
  ``m x`` the (scheduled) learning rate. One optimizer, one schedule, one
  state, so a method that steps a subset of variables in a second stage
  (MinMaxCAM) shares momentum and schedule, as one ``torch.optim`` instance does.
- ``coupled_weight_decay=True``: ``weight_decay * w`` joins the gradient
  (PyTorch's ``weight_decay`` of SGD and Adam); ``False`` keeps Keras'
  decoupled decay, which runs at the base learning rate for every group.

:class:`Adam`, :class:`AdamW` and :class:`SGD` are those Keras optimizers
with the mixin. :class:`SGD` follows ``torch.optim.SGD`` exactly
(``buf = mu * buf + g``; Nesterov ``d = g + mu * buf``; ``w -= lr * d``); with
a constant learning rate that equals Keras' SGD, whose buffer holds ``lr * g``.

Example:
    >>> import keras
    >>> w = keras.Variable([1.0, 2.0])
    >>> opt = SGD(0.1, momentum=0.9, weight_decay=0.5, coupled_weight_decay=True)
    >>> opt.set_lr_multipliers([(w, 0.1)])
    >>> opt.apply([keras.ops.zeros(2)], [w])
    >>> [round(float(v), 4) for v in w.numpy()]   # w - 0.1 * 0.1 * (0 + 0.5 * w)
    [0.995, 1.99]
"""

from __future__ import annotations

from typing import Iterable

import keras
from keras import ops


class ParameterGroups:
    """Mixin for a Keras optimizer: per-variable learning-rate multipliers and optional coupled L2 decay.

    Args:
        coupled_weight_decay: add ``weight_decay * w`` to the gradient
            (PyTorch) instead of Keras' decoupled decay.
    """

    def __init__(self, *args, coupled_weight_decay: bool = False, **kwargs):
        l2 = float(kwargs.get("weight_decay") or 0.0) if coupled_weight_decay else 0.0
        if coupled_weight_decay:
            kwargs["weight_decay"] = None  # Keras' own (decoupled) decay off
        super().__init__(*args, **kwargs)
        self.coupled_weight_decay = bool(coupled_weight_decay)
        self.l2 = l2
        self._lr_multipliers: dict = {}

    def set_lr_multipliers(self, multipliers: Iterable[tuple[keras.Variable, float]]) -> None:
        """Give each listed variable ``multiplier x`` the learning rate; others keep 1."""
        self._lr_multipliers = {self._var_key(v): float(m) for v, m in multipliers if float(m) != 1.0}

    def lr_multiplier(self, variable) -> float:
        """The learning-rate multiplier of ``variable`` (1 unless set)."""
        return self._lr_multipliers.get(self._var_key(variable), 1.0)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self.lr_multiplier(variable)
        if multiplier != 1.0:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), multiplier)
        if self.l2 and self._use_weight_decay(variable):
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(variable, self.l2))
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        config = super().get_config()
        if self.coupled_weight_decay:
            config["weight_decay"] = self.l2
        return {**config, "coupled_weight_decay": self.coupled_weight_decay}


@keras.saving.register_keras_serializable(package="keras_wsol")
class Adam(ParameterGroups, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with parameter groups; ``coupled_weight_decay`` gives ``torch.optim.Adam``'s decay."""


@keras.saving.register_keras_serializable(package="keras_wsol")
class AdamW(ParameterGroups, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with parameter groups (decoupled decay, at the base learning rate)."""


class _TorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD`` (dampening 0): ``buf = mu * buf + g``; ``d = g + mu * buf`` (Nesterov) or ``buf``."""

    def __init__(self, learning_rate=0.01, momentum: float = 0.0, nesterov: bool = False, name: str = "sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum={momentum}: a float in [0, 1]")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables] if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
            self.assign(buf, ops.add(ops.multiply(buf, self.momentum), gradient))
            gradient = ops.add(gradient, ops.multiply(buf, self.momentum)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(gradient, learning_rate))

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


@keras.saving.register_keras_serializable(package="keras_wsol")
class SGD(ParameterGroups, _TorchSGD):
    """``torch.optim.SGD`` semantics with parameter groups; ``coupled_weight_decay=True`` is PyTorch's decay."""


def set_lr_multipliers(optimizer, multipliers: Iterable[tuple[keras.Variable, float]]) -> None:
    """Set parameter-group multipliers on ``optimizer`` (or the one a ``LossScaleOptimizer`` wraps).

    A plain Keras optimizer is accepted when every multiplier is 1; otherwise
    the error says which optimizer to use.
    """
    multipliers = [(v, float(m)) for v, m in multipliers]
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if isinstance(inner, ParameterGroups):
        inner.set_lr_multipliers(multipliers)
    elif any(m != 1.0 for _, m in multipliers):
        raise TypeError(
            f"{type(inner).__name__} has one learning rate for every variable; a backbone learning-rate multiplier "
            "needs keras_wsol.optimizers.Adam, AdamW or SGD"
        )
