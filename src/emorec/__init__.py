"""emorec: reproducible facial emotion recognition, raw face images to a served, quantized model.

Every pipeline stage in ``stages/`` is a thin script over the modules of this package.
"""

__version__ = "0.1.0"
