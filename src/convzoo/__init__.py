"""convzoo: Xception, Inception V3, ResNet and ResNeXt in PyTorch, exact to their references."""

from .errors import ConvzooError
from .factory import create_model
from .registry import get_model_cfg, list_models
from .version import __version__
from .weights import load_checkpoint, load_weights, save_checkpoint

__all__ = ["ConvzooError", "create_model", "get_model_cfg", "list_models", "load_checkpoint", "load_weights",
           "save_checkpoint", "__version__"]
