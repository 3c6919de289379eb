"""TensorFlow's start-up log kept off the commands' terminal.

Importing TensorFlow 2.21 on a machine without a GPU writes a dozen C++ log
lines (oneDNN notices, "Could not find cuda drivers", CPU-feature hints,
``failed call to cuInit``) around the table a user ran the command for.
:func:`install` makes the commands quiet: unless the user set
``TF_CPP_MIN_LOG_LEVEL`` themselves, it is set to 3 (TensorFlow's C++ log
off; an error still reaches the user as a Python exception), and the first
``import tensorflow`` runs with the process's standard error captured: the
lines written before TensorFlow's log is initialized, which that variable does
not reach, are dropped when they are one of the known start-up notices
(:data:`NOISE`) and written back otherwise. ``TF_CPP_MIN_LOG_LEVEL=0`` shows
everything.

TensorFlow's Python log is the other source: absl's ``app.run`` lowers the
root logger to INFO when ``--verbosity`` is not given (the commands' own
``logging.info`` lines rely on that), and TensorFlow's files log through it
(most through absl's logger, some through the ``tensorflow`` logger), so
writing a SavedModel would print half a dozen INFO lines (input names
renamed, "Sharding callback duration", "Writing fingerprint").
:func:`hide_tensorflow_info` drops the INFO records of TensorFlow's files from
absl's handler unless the user chose ``--verbosity``.

Example:
    >>> drop_noise("I0000 00:00:1.2 3 cudart_stub.cc:31] Could not find cuda drivers\\nreal problem\\n")
    'real problem\\n'
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import tempfile
from types import ModuleType

from absl import flags
from absl import logging as absl_logging

#: The start-up notices TensorFlow writes whatever the log level (they name no problem of the run).
NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|port\.cc:\d+\] oneDNN custom operations are on"
    r"|cudart_stub\.cc:\d+\] Could not find cuda drivers"
    r"|cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized"
    r"|^To enable the following instructions: .* rebuild TensorFlow"
    r"|cuda_platform\.cc:\d+\] failed call to cuInit"
)


def drop_noise(text: str) -> str:
    """``text`` without its :data:`NOISE` lines (each kept line ends with a newline)."""
    return "".join(line + "\n" for line in text.splitlines() if not NOISE.search(line))


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of ``tensorflow`` with file descriptor 2 captured, then writes back what is not noise."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the package keeps its own loader afterwards
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as capture:
            os.dup2(capture.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                capture.seek(0)
                sys.stderr.write(drop_noise(capture.read().decode(errors="replace")))
                sys.stderr.flush()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, as the path finder would, and gives it a :class:`_QuietLoader`."""

    def find_spec(self, name: str, path=None, target=None) -> importlib.machinery.ModuleSpec | None:
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def install() -> None:
    """Quiet TensorFlow's start-up log for this process (see the module docstring); a no-op when the user set
    ``TF_CPP_MIN_LOG_LEVEL`` or TensorFlow is already imported."""
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    if not any(isinstance(finder, _QuietFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())


class _TensorFlowInfo(logging.Filter):
    """Drops the records below WARNING logged from TensorFlow's package files (through absl's logger or
    ``tensorflow``); nothing while TensorFlow is not imported."""

    def filter(self, record: logging.LogRecord) -> bool:
        package = getattr(sys.modules.get("tensorflow"), "__file__", None)
        if record.levelno >= logging.WARNING or not package:
            return True
        return not record.pathname.startswith(os.path.dirname(package) + os.sep)


def hide_tensorflow_info(flag_values: flags.FlagValues) -> None:
    """Keep TensorFlow's Python INFO lines off absl's log handler unless ``flag_values`` (parsed) has
    ``--verbosity`` given (see the module docstring); the commands' own INFO lines still show. Idempotent.

    Example:
        >>> import tensorflow
        >>> from absl import flags, logging as absl_logging  # absl.logging defines --verbosity
        >>> hide_tensorflow_info(flags.FLAGS)
        >>> saver = os.path.join(os.path.dirname(tensorflow.__file__), "python", "saver.py")
        >>> [absl_logging.get_absl_handler().filter(logging.LogRecord("absl", logging.INFO, path, 1, "m", None, None))
        ...  for path in (saver, "/home/me/keras_wsol/cli/train.py")]
        [False, True]
    """
    handler = absl_logging.get_absl_handler()
    if flag_values["verbosity"].present or any(isinstance(f, _TensorFlowInfo) for f in handler.filters):
        return
    handler.addFilter(_TensorFlowInfo())
