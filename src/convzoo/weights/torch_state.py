"""Reading PyTorch state dicts (``torch.save`` files, safely, and safetensors) and renaming other libraries'
keys to convzoo's.

A state dict's layout is told by its keys: the families' :class:`~convzoo.models.spec.KeyLayout`\ s
(torchvision's ResNet naming, timm's ``legacy_xception``, ...) recognise theirs; anything else is taken to
use convzoo's names (which torchvision's and timm's Inception V3 and convzoo's own files do).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UnsafeFileError, WeightsError
from ..registry import families, key_layouts
from .mapping import Mapped, Tensor, one_line

CONVZOO_NAMES = "convzoo names"
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, unwrapping ``{'state_dict': ...}``-style containers and ``module.``."""
    for _ in range(2):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def read_torch(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``torch.save`` file with ``weights_only=True``: a pickle that would call anything but the
    tensor rebuilders is refused (:class:`UnsafeFileError`) before any of it runs."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        m = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it calls {m.group(1)}" if m else one_line(exc)[:200]
        raise UnsafeFileError(f"{path}: refused to unpickle: {what}, which could run code "
                              "(only tensors and plain containers are loaded)") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read PyTorch file ({one_line(exc)[:300]})") from None
    return _state_dict(obj, path)


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the metadata of a safetensors file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read safetensors file ({one_line(exc)[:300]})") from None
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors")
    return tensors, meta


def detect_layout(keys: Sequence[str]) -> str:
    """The name of the layout a state dict's ``keys`` use: a family's :class:`KeyLayout` that recognises them,
    else :data:`CONVZOO_NAMES`."""
    return next((layout.name for layout in key_layouts() if layout.detect(keys)), CONVZOO_NAMES)


def rename_keys(keys: Sequence[str], layout: str | None = None) -> dict[str, str]:
    """Source key -> convzoo key for a state dict's ``keys`` in ``layout`` (detected when None)."""
    layout = layout or detect_layout(keys)
    known = next((x for x in key_layouts() if x.name == layout), None)
    return known.rename(keys) if known is not None else {k: k for k in keys}


def state_to_convzoo(state: dict[str, torch.Tensor], layout: str | None = None) -> Mapped:
    """Rename a state dict to convzoo keys (``layout`` detected when None)."""
    keys = list(state)
    layout = layout or detect_layout(keys)
    out = Mapped(layout=layout)
    for key, new in rename_keys(keys, layout).items():
        out.tensors[new] = Tensor(state[key], f"'{key}'")
    return out


def guess_torch_model(state: dict[str, Any]) -> str | None:
    """The registered model a state dict most likely belongs to, as the families judge its keys and shapes."""
    keys = list(state)
    layout = detect_layout(keys)
    shapes = {new: tuple(state[old].shape) for old, new in rename_keys(keys, layout).items()}
    guesses = (f.torch.guess(layout, shapes) for f in families() if f.torch is not None)
    return next((g for g in guesses if g is not None), None)
