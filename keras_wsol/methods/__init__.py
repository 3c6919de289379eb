"""WSOL methods, one file each, all subclasses of :class:`WSOLModel`."""

from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.cam import CAM
from keras_wsol.methods.minmaxcam import MinMaxCAM
from keras_wsol.methods.registry import METHODS, get_method

__all__ = ["CAM", "METHODS", "MinMaxCAM", "WSOLModel", "get_method"]
