"""CAM (Zhou et al., CVPR 2016): GAP + linear classifier, maps from the classifier weights.

The baseline is exactly :class:`~keras_wsol.methods.base.WSOLModel`; this
class gives it its registry name and serialization identity.

Example:
    >>> model = CAM(num_classes=4, backbone="small", image_size=32)
    >>> model.get_config()["backbone"]
    'small'
"""

import keras

from keras_wsol.methods.base import WSOLModel


@keras.saving.register_keras_serializable(package="keras_wsol")
class CAM(WSOLModel):
    """Class activation mapping: the plain cross-entropy baseline."""
