"""Model families; importing this package registers every model."""

from . import xception  # noqa: F401
from . import inception_v3  # noqa: F401
from . import resnet  # noqa: F401
