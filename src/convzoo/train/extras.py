"""The optional packages of training, evaluation and comparison (the ``convzoo[train]`` extra): TensorBoard
for the run's scalars and matplotlib for its figures. The core model library needs neither."""

from __future__ import annotations

import importlib

from ..errors import MissingDependencyError

INSTALL = "pip install 'convzoo[train]'"


def require(*packages: str, purpose: str) -> None:
    """Import each of ``packages`` (top-level names such as 'matplotlib'), or raise one
    :class:`MissingDependencyError` line saying that ``purpose`` needs it and how to install it."""
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingDependencyError(f"{purpose} needs {package}, which is not installed: {INSTALL}") from None
