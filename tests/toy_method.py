"""A method added at run time, the way a user adds one: a subclass, one hyper-parameter, one registry call."""

import keras
from keras import ops

from keras_wsol.distribute import replica_mean
from keras_wsol.methods import WSOLModel, register_method
from keras_wsol.methods.hyperparameters import HyperParameter


@register_method
@keras.saving.register_keras_serializable(package="keras_wsol_tests")
class LabelSmoothingCAM(WSOLModel):
    """CAM trained with label-smoothed cross-entropy."""

    method_name = "toy"
    hyperparameters = (
        HyperParameter(
            "smoothing", 0.0, "label smoothing of the cross-entropy", "a test's choice", minimum=0, maximum=1
        ),
    )

    def classification_loss(self, labels, logits):
        targets = ops.one_hot(ops.cast(labels, "int32"), self.num_classes)
        per_example = keras.losses.categorical_crossentropy(
            targets, ops.cast(logits, "float32"), from_logits=True, label_smoothing=self.smoothing
        )
        return replica_mean(per_example)
