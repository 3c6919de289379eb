"""Maps ``--method`` names to model classes.

Example:
    >>> get_method("cam").__name__
    'CAM'
"""

from __future__ import annotations

from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.cam import CAM
from keras_wsol.methods.cams2i import CAMs2i
from keras_wsol.methods.complementary import Complementary
from keras_wsol.methods.minmaxcam import MinMaxCAM
from keras_wsol.methods.ornet import ORNet

METHODS: dict[str, type[WSOLModel]] = {"cam": CAM, "cams2i": CAMs2i, "complementary": Complementary, "minmaxcam": MinMaxCAM, "ornet": ORNet}


def get_method(name: str) -> type[WSOLModel]:
    """The class registered under ``name``; a clear error lists the choices."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}")
    return METHODS[name]
