"""Reading PyTorch state dicts (``torch.save`` files, safely, and safetensors) and renaming other libraries'
keys to convzoo's.

A state dict's layout is told by its keys: the families' :class:`~convzoo.models.spec.KeyLayout`\ s
(torchvision's ResNet naming, timm's ``legacy_xception``, ...) recognise theirs; anything else is taken to
use convzoo's names (which torchvision's and timm's Inception V3 and convzoo's own files do).
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError, safe_open

from ..errors import UnsafeFileError, WeightsError
from ..registry import families, key_layouts
from .mapping import Mapped, Tensor, one_line

log = logging.getLogger(__name__)

CONVZOO_NAMES = "convzoo names"
# How a torch.save file begins: a zip archive (since torch 1.6) or a pickle (the legacy format).
TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80")
# Checkpoint entries holding the state dict, EMA weights first (timm's load_checkpoint(use_ema=True)).
CONTAINERS = ("state_dict_ema", "model_ema", "state_dict", "model_state_dict", "model")
_EMA = ("state_dict_ema", "model_ema")
# Key segments wrappers add: DDP, DataParallel and AveragedModel ('module'), torch.compile ('_orig_mod').
_DDP, _COMPILED = "module", "_orig_mod"
# torch.optim.swa_utils.AveragedModel's step counter, saved beside the averaged 'module.*' tensors.
_AVERAGED_COUNT = "n_averaged"


@dataclass
class TorchState:
    """A state dict as training code saved it, unwrapped: the ``tensors`` under the model's own keys, the
    checkpoint entry they came from (``container``, None for a bare state dict), the wrapper prefixes
    removed from the keys in order (``prefixes``, e.g. ``['module.', '_orig_mod.']``) and ``notes`` on
    what else was dropped or chosen."""

    tensors: dict[str, torch.Tensor]
    container: str | None = None
    prefixes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _open_container(obj: Any, notes: list[str]) -> tuple[Any, list[str]]:
    """The state dict inside ``{'model': ..., 'epoch': ...}``-style checkpoints (at most two levels), and the
    entries taken, outermost first."""
    taken: list[str] = []
    for _ in range(2):
        if not isinstance(obj, dict) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        present = [k for k in CONTAINERS if isinstance(obj.get(k), dict) and obj[k]]
        if not present:
            break
        key = present[0]
        if key in _EMA and any(k not in _EMA for k in present):
            notes.append(f"the file holds the model's weights and their EMA; loaded the EMA ('{key}'), as timm's "
                         "load_checkpoint does")
        others = sorted(str(k) for k in obj if k != key)
        if others:
            notes.append(f"checkpoint entries ignored: {', '.join(others[:6])}{' ...' if len(others) > 6 else ''}")
        obj = obj[key]
        taken.append(str(key))
    return obj, taken


def _strip_key(key: str) -> tuple[str, tuple[str, ...], bool]:
    """``key`` without the wrapper segments: the leading ``module.``/``_orig_mod.`` ones (returned in order)
    and any ``_orig_mod.`` further in (a compiled submodule; the flag says whether there was one)."""
    parts = key.split(".")
    leading = []
    while len(parts) > 1 and parts[0] in (_DDP, _COMPILED):
        leading.append(parts.pop(0) + ".")
    inner = [p for p in parts[:-1] if p == _COMPILED]
    if inner:
        parts = [p for p in parts[:-1] if p != _COMPILED] + parts[-1:]
    return ".".join(parts), tuple(leading), bool(inner)


def _strip_wrappers(tensors: dict[str, torch.Tensor], path: Path, state: TorchState) -> None:
    """Remove the keys' wrapper segments; keys that become equal (a file mixing a wrapped and an unwrapped
    copy of a model) are a :class:`WeightsError`."""
    if _AVERAGED_COUNT in tensors and any(k.startswith(f"{_DDP}.") for k in tensors):
        count = tensors.pop(_AVERAGED_COUNT)
        state.notes.append(f"AveragedModel's {_AVERAGED_COUNT} ({int(count.reshape(-1)[0]) if count.numel() else '?'})"
                           " dropped")
    stripped: dict[str, str] = {}
    sequences: dict[tuple[str, ...], int] = {}
    inner = 0
    for key in tensors:
        new, leading, nested = _strip_key(key)
        if new in stripped:
            raise WeightsError(f"{path}: keys '{stripped[new]}' and '{key}' are the same tensor once the wrapper "
                               f"prefixes are removed: the file mixes two state dicts; save one")
        stripped[new] = key
        sequences[leading] = sequences.get(leading, 0) + 1
        inner += nested
    state.tensors = {new: tensors[key] for new, key in stripped.items()}
    for leading in sequences:
        state.prefixes.extend(p for p in leading if p not in state.prefixes)
    if len(sequences) > 1:
        counts = ", ".join(f"'{''.join(k) or 'none'}' on {n}" for k, n in sequences.items())
        state.notes.append(f"wrapper prefixes differ between keys ({counts} keys); each key's removed")
    if inner:
        state.notes.append(f"'{_COMPILED}.' (a compiled submodule) removed inside {inner} keys")


def unwrap_state(obj: Any, path: Path) -> TorchState:
    """The tensors of a state dict as training code saves it: inside a checkpoint entry (:data:`CONTAINERS`,
    EMA weights preferred), under ``module.`` (DDP, DataParallel, AveragedModel, whose ``n_averaged`` is
    dropped) and ``_orig_mod.`` (``torch.compile``) prefixes in any order, beside non-tensor entries
    (dropped). Raises :class:`WeightsError` for anything else."""
    state = TorchState({})
    obj, taken = _open_container(obj, state.notes)
    state.container = "/".join(taken) or None
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: holds no tensors")
    dropped = sorted(str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor))
    if dropped:
        state.notes.append(f"non-tensor entries ignored: {', '.join(dropped[:6])}{' ...' if len(dropped) > 6 else ''}")
    _strip_wrappers(tensors, path, state)
    return state


def load_torch_file(path: str | Path) -> Any:
    """The object a ``torch.save`` file holds (zip or legacy format), unpickled with ``weights_only=True``:
    tensors, numbers, strings and plain containers. A pickle that would call anything else is refused before
    any of it runs (:class:`UnsafeFileError`, naming what it calls); a file that is missing, unreadable,
    empty, truncated or not a ``torch.save`` file is one :class:`WeightsError` line naming ``path`` (torch's
    own explanation goes to the debug log)."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        log.debug("torch.load(%s): %s", path, exc)
        called = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if called:
            raise UnsafeFileError(f"{path}: refused to unpickle: it calls {called.group(1)}, which could run code "
                                  "(only tensors and plain containers are loaded)") from None
        raise WeightsError(f"{path}: expected a PyTorch file (torch.save) of tensors and plain containers, "
                           "found other data") from None
    except Exception as exc:  # torch's readers raise RuntimeError, OSError, EOFError, IndexError, ...
        log.debug("torch.load(%s): %r", path, exc)
        raise WeightsError(f"{path}: {_unreadable(path, exc)}") from None


def _unreadable(path: Path, exc: Exception) -> str:
    """Why the file at ``path`` could not be read as a ``torch.save`` file, in a few words."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "expected a PyTorch file (torch.save), found a folder"
    if isinstance(exc, PermissionError):
        return "not readable (permission denied)"
    with open(path, "rb") as f:
        head = f.read(4)
    found = ("an empty file" if not head else "a truncated or damaged one" if head.startswith(TORCH_SIGNATURES)
             else "a file that is not one")
    return f"expected a PyTorch file (torch.save), found {found}"


def read_torch(path: str | Path) -> TorchState:
    """Read a ``torch.save`` file safely (:func:`load_torch_file`) and unwrap its state dict
    (:func:`unwrap_state`)."""
    return unwrap_state(load_torch_file(path), Path(path))


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
