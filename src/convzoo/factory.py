"""``create_model(name, ..., weights=...)``: build a registered model, then load weights into it."""

from .registry import create_model

__all__ = ["create_model"]
