"""convzoo: Xception, Inception V3, ResNet and ResNeXt in PyTorch, exact to their references."""

from . import models  # noqa: F401  (registers the models)
from .errors import ConvzooError
from .registry import create_model, get_model_cfg, list_models

__version__ = "0.1.0"
__all__ = ["ConvzooError", "create_model", "get_model_cfg", "list_models", "__version__"]
