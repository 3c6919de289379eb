"""The command-line programs: ``train`` and ``evaluate`` (``wsol-train``, ``wsol-evaluate`` when installed).

Importing this package keeps TensorFlow's start-up log off the terminal (:mod:`keras_wsol.cli.quiet`), before
any command module imports TensorFlow.
"""

from keras_wsol.cli import quiet

quiet.install()
