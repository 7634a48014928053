"""convzoo: Xception, Inception V3, ResNet and ResNeXt in PyTorch, exact to their references."""

from . import models  # noqa: F401  (registers the models)
from .errors import ConvzooError
from .registry import create_model, get_model_cfg, list_models
from .weights import load_checkpoint, load_weights, save_checkpoint

__version__ = "0.1.0"
__all__ = ["ConvzooError", "create_model", "get_model_cfg", "list_models", "load_checkpoint", "load_weights",
           "save_checkpoint", "__version__"]
