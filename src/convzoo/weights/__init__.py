"""Weights in and out, with no family names: generic readers (Keras HDF5 and ``.keras``, torch pickles,
safetensors), convzoo's own checkpoints, the one apply step, published files, and layer-by-layer
verification. What belongs to a family (Keras layer placement, torch key layouts, weight records) comes from
its :class:`~convzoo.models.spec.Family` through the registry.

``load_weights(model, path)`` reads any supported file (format detected from its bytes) and attaches the
file's :class:`WeightRecord` (``model.weights_meta``); ``file_head(path, model_name)`` says which head a file
holds (classes, pooling, dropout) without building the model; ``save_checkpoint``/``load_checkpoint`` write
and rebuild convzoo checkpoints; ``compare_with_keras``/``compare_with_torch`` check an import layer by layer.
"""

from ..models.spec import WeightRecord
from .checkpoint import CheckpointInfo, read_checkpoint, save_checkpoint
from .loading import LoadReport, load_checkpoint, load_weights
from .mapping import FileHead
from .source import WeightsFile, file_head, read_weights
from .torch_state import load_torch_file
from .verify import ImportReport, LayerDiff, compare_with_keras, compare_with_torch

__all__ = ["CheckpointInfo", "FileHead", "ImportReport", "LayerDiff", "LoadReport", "WeightRecord", "WeightsFile",
           "compare_with_keras", "compare_with_torch", "file_head", "load_checkpoint", "load_torch_file",
           "load_weights",
           "read_checkpoint", "read_weights", "save_checkpoint"]
