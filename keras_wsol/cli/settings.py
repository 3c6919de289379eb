"""The commands' flags turned into the library's settings: data, method arguments, protocol.

A method never reads flags: :func:`method_arguments` gives its constructor
the hyper-parameter flags given on the command line. The data functions wrap
:mod:`keras_wsol.data.factory`, whose errors (naming the flag, file or line)
become usage errors.

Example:
    >>> from keras_wsol.cli import flags as wsol_flags
    >>> wsol_flags.define_data_flags(); data_settings().dataset  # the flags' defaults until they are parsed
    'synthetic'
"""

from __future__ import annotations

from absl import app

from keras_wsol.cli.flags import DATA_FLAGS, FLAGS
from keras_wsol.data import factory
from keras_wsol.data.splits import Split
from keras_wsol.evaluation import Protocol


def data_settings() -> factory.DataSettings:
    """The data flags as :class:`keras_wsol.data.factory.DataSettings` (``given``: those on the command line)."""
    return factory.DataSettings(
        **{name: FLAGS[name].value for name in DATA_FLAGS},
        given=frozenset(name for name in DATA_FLAGS if FLAGS[name].present),
    )


def load_split(split: str) -> Split:
    """The ``split`` (train, val or test) of the dataset the data flags describe; an error names the flag or file."""
    try:
        return factory.load_split(data_settings(), split)
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def check_data(data: dict[str, Split], num_classes: int | None = None) -> None:
    """:func:`keras_wsol.data.factory.check_data` on the flags' data; an error names the data flags."""
    try:
        factory.check_data(data_settings(), data, num_classes)
    except ValueError as error:
        raise app.UsageError(str(error)) from None


def data_source() -> str:
    """The flags that say where the data comes from, for error messages."""
    return data_settings().source()


def method_arguments(method_name: str) -> dict:
    """Constructor arguments of ``method_name`` from the flags given on the command line (a method never reads flags).

    Hyper-parameters whose flag was not given keep the method's declared
    default. Another method's flag given with a value other than its default
    is an error naming it.
    """
    from keras_wsol.methods.hyperparameters import flag_name  # the methods package: TensorFlow
    from keras_wsol.methods.registry import METHODS

    strays = [
        f"--{flag_name(other, p)}"
        for other, cls in METHODS.items()
        if other != method_name
        for p in cls.hyperparameters
        if flag_name(other, p)
        and not p.flag
        and FLAGS[flag_name(other, p)].present
        and FLAGS[flag_name(other, p)].value != FLAGS[flag_name(other, p)].default
    ]
    if strays:
        raise app.UsageError(f"{', '.join(strays)}: not a flag of --method={method_name}")
    arguments = {}
    for parameter in METHODS[method_name].hyperparameters:
        flag = flag_name(method_name, parameter)
        if flag is None or not FLAGS[flag].present:
            continue
        value = FLAGS[flag].value
        value = [parameter.value_type(v) for v in value] if parameter.is_tuple else value
        arguments[parameter.name] = value
    return arguments


def dataset_statistics(method_name: str) -> dict[str, str]:
    """``{argument: statistic}``: the hyper-parameters of ``method_name`` the CLI fills from the training data."""
    from keras_wsol.methods.registry import METHODS

    return {p.name: p.statistic for p in METHODS[method_name].hyperparameters if p.statistic}


def protocol() -> Protocol:
    """The protocol flags as one :class:`keras_wsol.evaluation.Protocol`."""
    return Protocol(FLAGS.cam_curve_interval, FLAGS.resize_length, FLAGS.fixed_threshold)
