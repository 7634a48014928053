"""Weights in and out: Keras HDF5 and torchvision/timm state dicts into convzoo models, convzoo's own
checkpoints, and the published ImageNet files.

``load_weights(model, path)`` reads any supported file (format detected from its bytes) and attaches the
file's :class:`WeightRecord` (``model.weights_meta``); ``save_checkpoint``/``load_checkpoint`` write and
rebuild convzoo checkpoints; ``compare_with_keras``/``compare_with_torch`` check an import layer by layer.
"""

from .checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint, save_checkpoint
from .compare import ImportReport, LayerDiff, compare_with_keras, compare_with_torch
from .loading import LoadReport, load_weights
from .records import WeightRecord

__all__ = ["CheckpointInfo", "ImportReport", "LayerDiff", "LoadReport", "WeightRecord", "compare_with_keras",
           "compare_with_torch", "load_checkpoint", "load_weights", "read_checkpoint", "save_checkpoint"]
