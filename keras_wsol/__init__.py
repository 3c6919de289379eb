"""keras_wsol: weakly supervised object localization in Keras 3 / TensorFlow.

Train a classifier with image-level labels (``keras_wsol.methods``), get
object maps from it (``keras_wsol.localizers``), score them under the
standard protocol (``keras_wsol.evaluation``) and export them for TF Serving
(``keras_wsol.export``). The commands are :func:`train` and :func:`evaluate`
(``wsol-train`` and ``wsol-evaluate`` when installed). Importing this package
does not import TensorFlow; its modules do.

Example:
    >>> import keras_wsol
    >>> keras_wsol.__version__
    '0.3.0'
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("keras_wsol")
except metadata.PackageNotFoundError:  # a checkout that is not installed
    __version__ = "0.3.0"


def train(argv: list[str] | None = None) -> None:
    """The train command (``wsol-train``); ``argv`` as on the command line, the program name first."""
    from keras_wsol.cli.train import run

    run(argv)


def evaluate(argv: list[str] | None = None) -> None:
    """The evaluate command (``wsol-evaluate``); ``argv`` as on the command line, the program name first."""
    from keras_wsol.cli.evaluate import run

    run(argv)


def localize(model, images, **kwargs) -> list:
    """Maps, boxes and classes of ``images`` in one call (:func:`keras_wsol.localization.localize`; imports TF)."""
    from keras_wsol.localization import localize as run

    return run(model, images, **kwargs)


__all__ = ["__version__", "evaluate", "localize", "train"]
