"""The absl flags of the train and evaluate commands: see :mod:`keras_wsol.cli.flags`.

The definitions live in the package so that the installed commands
(``wsol-train``, ``wsol-evaluate``) have them; this folder keeps the layout's
``flags/`` entry for code that imports it from a checkout.

Example:
    >>> import flags
    >>> flags.define_data_flags(); "dataset" in flags.FLAGS
    True
"""

from keras_wsol.cli.flags import *  # noqa: F401,F403
from keras_wsol.cli.flags import DATA_FLAGS, FLAGS, define_data_flags, define_model_flags, define_train_flags  # noqa: F401
