"""Weights in and out: Keras HDF5 and torchvision/timm state dicts into convzoo models, convzoo's own
checkpoints, and the published ImageNet files.

``load_weights(model, path)`` reads any supported file (format detected from its bytes);
``save_checkpoint``/``load_checkpoint`` write and rebuild convzoo checkpoints.
"""

from .checkpoint import CheckpointInfo, load_checkpoint, read_checkpoint, save_checkpoint
from .loading import LoadReport, load_weights

__all__ = ["CheckpointInfo", "LoadReport", "load_checkpoint", "load_weights", "read_checkpoint", "save_checkpoint"]
