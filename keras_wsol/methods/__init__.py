"""WSOL methods, one file each, all subclasses of :class:`WSOLModel`."""

from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.cam import CAM
from keras_wsol.methods.cams2i import CAMs2i
from keras_wsol.methods.complementary import Complementary
from keras_wsol.methods.minmaxcam import MinMaxCAM
from keras_wsol.methods.ornet import ORNet
from keras_wsol.methods.ornet_refine import ORNetRefinement
from keras_wsol.methods.registry import METHODS, get_method, register_method

__all__ = [
    "CAM",
    "CAMs2i",
    "Complementary",
    "METHODS",
    "MinMaxCAM",
    "ORNet",
    "ORNetRefinement",
    "WSOLModel",
    "get_method",
    "register_method",
]
