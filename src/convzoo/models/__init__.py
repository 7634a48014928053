"""The model families: each module holds a family's blocks, stage table and builder, and ends with its
:class:`~convzoo.models.spec.Family` (registered models, weight records, Keras and torch mappings).
:data:`FAMILIES` lists them; the registry collects it."""

from . import inception_v3, resnet, xception
from .spec import Family

FAMILIES: tuple[Family, ...] = (xception.FAMILY, inception_v3.FAMILY, resnet.FAMILY)
