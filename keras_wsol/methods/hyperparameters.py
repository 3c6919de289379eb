"""A method's hyper-parameters, declared once: the constructor, ``get_config``, the flags and the docs read them.

A method class lists :class:`HyperParameter` entries in ``hyperparameters``.
:class:`~keras_wsol.methods.base.WSOLModel` then accepts them as keyword
arguments (checked and converted), sets them as attributes, saves them in
``get_config``, and appends a "Hyper-parameters" section to the class
docstring; the CLIs define ``--<method>_<name>`` flags from the same entries
(:func:`flag_name`) and the README's flag tables are generated from them
(:func:`markdown_table`, checked by a test).

Example:
    >>> p = HyperParameter("beta", 50.0, "weight of the fusion loss (Eq. 15)", "paper Eq. 15", minimum=0)
    >>> p.convert(1), flag_name("complementary", p)
    (1.0, 'complementary_beta')
    >>> p.convert(-1.0)
    Traceback (most recent call last):
    ...
    ValueError: beta=-1.0: must be >= 0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HyperParameter:
    """One hyper-parameter of a method.

    Attributes:
        name: the constructor argument and attribute.
        default: its default (``kind`` is taken from it unless given).
        help: what it does, one line.
        source: where the default comes from: "paper Eq. N", "official
            train.py:265", or "our reading, because ...".
        kind: ``bool``, ``int``, ``float`` or ``str``; for a tuple default,
            the type of its entries (the value is a tuple).
        choices: the allowed values, if few.
        minimum, maximum: bounds of a number (inclusive).
        flag: a shared flag that sets it (e.g. ``set_size``, read by the data
            pipeline too) instead of ``--<method>_<name>``; ``""`` for no flag.
        renamed_from: ``(old flag name, version that renamed it)`` pairs; given, an old
            name fails with a message naming this flag (CHANGELOG.md).
        statistic: filled from the training data by the CLI (``"mean_pixel"`` or ``"std_pixel"``);
            no flag.
        saved: part of ``get_config`` (False for build inputs such as
            checkpoint paths).
        inference_only: only how a trained model reads its maps and logits;
            training never uses it, so a saved model can be scored with
            another value (``WSOLModel.set_inference_settings``,
            ``evaluate.py --inference_setting``).
    """

    name: str
    default: Any
    help: str
    source: str
    kind: type | None = None
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None
    flag: str | None = None
    renamed_from: tuple[tuple[str, str], ...] = ()
    statistic: str | None = None
    saved: bool = True
    inference_only: bool = False

    @property
    def is_tuple(self) -> bool:
        return isinstance(self.default, tuple)

    @property
    def value_type(self) -> type:
        if self.kind is not None:
            return self.kind
        sample = self.default[0] if self.is_tuple else self.default
        if sample is None:
            raise TypeError(f"{self.name}: give kind= when the default is None")
        return type(sample)

    def convert(self, value: Any) -> Any:
        """``value`` checked and converted to this parameter's type; ``ValueError`` names the parameter."""
        if value is None:
            if self.default is None:
                return None
            raise ValueError(f"{self.name}=None: give a value")
        if self.is_tuple:
            values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not values:
                raise ValueError(f"{self.name}: give at least one value")
            return tuple(self._one(v) for v in values)
        return self._one(value)

    def parse(self, text: str) -> Any:
        """``text`` as written on a command line (``true``, ``0.5``, ``16,32``), converted as :meth:`convert` does.

        Example:
            >>> HyperParameter("sizes", (16, 32), "patch sizes", "paper").parse("8,12")
            (8, 12)
        """
        parts = [t.strip() for t in text.split(",")] if self.is_tuple else [text.strip()]
        kind = self.value_type
        values = []
        for part in parts:
            if kind is bool:
                if part.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"{self.name}={part!r}: must be true or false")
                values.append(part.lower() in ("true", "1"))
            elif kind in (int, float):
                try:
                    values.append(float(part))  # convert checks an int and its bounds
                except ValueError:
                    raise ValueError(f"{self.name}={part!r}: must be a number") from None
            else:
                values.append(part)
        return self.convert(tuple(values) if self.is_tuple else values[0])

    def _one(self, value: Any) -> Any:
        kind = self.value_type
        if kind is bool:
            if not isinstance(value, (bool, int)) or value not in (0, 1):
                raise ValueError(f"{self.name}={value!r}: must be true or false")
            value = bool(value)
        elif kind in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                raise ValueError(f"{self.name}={value!r}: must be {'an integer' if kind is int else 'a number'}")
            value = kind(value)
            if self.minimum is not None and value < self.minimum:
                raise ValueError(f"{self.name}={value}: must be >= {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{self.name}={value}: must be <= {self.maximum:g}")
        else:
            value = kind(value)
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name}={value!r}: choose one of {', '.join(map(str, self.choices))}")
        return value

    def to_config(self, value: Any) -> Any:
        """A JSON-friendly form of ``value`` (tuples become lists)."""
        return list(value) if isinstance(value, tuple) else value


def flag_name(method: str, parameter: HyperParameter) -> str | None:
    """The flag that sets ``parameter`` of ``method``: ``<method>_<name>``, its shared flag, or None."""
    if parameter.statistic is not None or parameter.flag == "":
        return None
    return parameter.flag or f"{method}_{parameter.name}"


def docstring_section(parameters: tuple[HyperParameter, ...]) -> str:
    """The "Hyper-parameters" docstring section of a method class."""
    lines = ["", "    Hyper-parameters (keyword arguments; the defaults' sources in brackets):"]
    for p in parameters:
        lines.append(f"        {p.name} = {p.default!r}: {p.help} [{p.source}]")
    return "\n".join(lines) + "\n"


def markdown_table(method: str, parameters: tuple[HyperParameter, ...]) -> str:
    """The README's flag table of one method."""
    rows = ["| flag | default | what | source of the default |", "|---|---|---|---|"]
    for p in parameters:
        flag = flag_name(method, p)
        if flag is None:
            continue
        default = ",".join(map(str, p.default)) if p.is_tuple else ("none" if p.default is None else p.default)
        scope = (
            f". Inference only: `evaluate.py --inference_setting={p.name}=...` changes it on a trained model"
            if p.inference_only
            else ""
        )
        rows.append(f"| `--{flag}` | {default} | {p.help}{scope} | {p.source} |")
    return "\n".join(rows)
