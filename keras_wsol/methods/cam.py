"""CAM (Zhou et al., CVPR 2016): GAP + linear classifier, maps from the classifier weights.

The baseline is exactly :class:`~keras_wsol.methods.base.WSOLModel`; this
class gives it its registry name and serialization identity, and one option:
``keep_resolution_after``, the stride-1 surgery of CAMs2i (the downsampling
between a tap and the last block at stride 1), so CAM with CAMs2i's map
resolution and receptive field is a control for that method.

Example:
    >>> import numpy as np
    >>> model = CAM(num_classes=4, backbone="small", image_size=32)
    >>> model.get_config()["backbone"]
    'small'
    >>> control = CAM(num_classes=4, backbone="small", image_size=32, keep_resolution_after="mid")
    >>> tuple(model.localization_maps(np.zeros((1, 32, 32, 3))).shape)
    (1, 32, 32)
    >>> control.backbone.output["high"].shape[1], model.backbone.output["high"].shape[1]
    (8, 4)
"""

import keras

from keras_wsol.backbones import TAPS
from keras_wsol.methods.base import WSOLModel
from keras_wsol.methods.hyperparameters import HyperParameter


@keras.saving.register_keras_serializable(package="keras_wsol")
class CAM(WSOLModel):
    """Class activation mapping: the plain cross-entropy baseline."""

    hyperparameters = (
        HyperParameter(
            "keep_resolution_after",
            "none",
            "run the downsampling between this backbone tap and the last block at stride 1 (CAMs2i's surgery, "
            "as a control for it); none: the standard backbone",
            "the CAM paper's backbone (no extra surgery)",
            choices=("none", *TAPS[:-1]),
        ),
    )

    def backbone_options(self) -> dict:
        return {} if self.keep_resolution_after == "none" else {"keep_resolution_after": self.keep_resolution_after}
