"""Names and defaults the commands show, importable without TensorFlow.

``evaluate.py --help`` and its evaluator-only mode read these and nothing
heavier, so they start in a fraction of a second; the modules that
implement the names (:mod:`keras_wsol.localizers`,
:mod:`keras_wsol.image_files`) use the same values, and a test checks they
agree.

Example:
    >>> LOCALIZER_NAMES[0], DEFAULT_BOX_THRESHOLD
    ('cam', 0.2)
"""

#: The localizers of :mod:`keras_wsol.localizers`, in its order.
LOCALIZER_NAMES = ("cam", "gradcam", "gradcam_pp", "pcs", "bagcams")

#: Box threshold tau on the min-max normalized map: CAM's fixed 20% (Zhou et al., CVPR 2016), the value the
#: WSOL papers before the protocol of Choe et al. used for every image.
DEFAULT_BOX_THRESHOLD = 0.2
