"""Reading PyTorch state dicts (``torch.save`` files, safely, and safetensors) and renaming torchvision and
timm keys to convzoo's.

Layouts, told apart by their keys: torchvision/timm ResNet and ResNeXt (``layer1.0.conv1.weight``),
timm ``legacy_xception`` (``block1.rep.0.conv1.weight``), and names convzoo already uses (torchvision and
timm Inception V3, convzoo's own files).
"""

from __future__ import annotations

import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..errors import UnsafeFileError, WeightsError
from .mapping import Mapped, Tensor, one_line

TORCHVISION_RESNET = "torchvision/timm resnet"
TIMM_XCEPTION = "timm legacy_xception"
CONVZOO_NAMES = "convzoo names"
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")
_TIMM_XCEPTION_TOP = {"conv1": "block1.conv1", "bn1": "block1.conv1_bn", "conv2": "block1.conv2",
                      "bn2": "block1.conv2_bn", "bn3": "block14.sepconv1_bn", "bn4": "block14.sepconv2_bn",
                      "fc": "fc", "last_linear": "fc"}
_TIMM_SEPARABLE = {"conv1": "depthwise", "pointwise": "pointwise"}


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
    from safetensors import SafetensorError, safe_open

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


def detect_layout(keys: list[str]) -> str:
    """Which naming a state dict uses (one of the constants of this module)."""
    if any(k.startswith("layer1.") for k in keys):
        return TORCHVISION_RESNET
    if any(re.match(r"block\d+\.rep\.", k) for k in keys):
        return TIMM_XCEPTION
    return CONVZOO_NAMES


def _torchvision_resnet_key(key: str) -> str:
    m = re.fullmatch(r"layer(\d+)\.(\d+)\.(.+)", key)
    if m:
        rest = m.group(3).replace("downsample.0.", "conv0.").replace("downsample.1.", "bn0.")
        return f"conv{int(m.group(1)) + 1}.block{int(m.group(2)) + 1}.{rest}"
    head, _, tail = key.partition(".")
    return {"conv1": "conv1.conv", "bn1": "conv1.bn"}.get(head, head) + f".{tail}"


def _timm_xception_keys(keys: list[str]) -> dict[str, str]:
    """timm key -> convzoo key. Inside a block the ``rep`` Sequential's separable convs and BatchNorms
    become ``sepconvK`` / ``sepconvK_bn`` in order."""
    renamed = {}
    reps: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for key in keys:
        m = re.fullmatch(r"block(\d+)\.rep\.(\d+)\.(.+)", key)
        if m:
            reps[m.group(1)][int(m.group(2))].append(key)
            continue
        m = re.fullmatch(r"block(\d+)\.(skip|skipbn)\.(.+)", key)
        if m:
            part = "residual" if m.group(2) == "skip" else "residual_bn"
            renamed[key] = f"block{int(m.group(1)) + 1}.{part}.{m.group(3)}"
            continue
        m = re.fullmatch(r"(conv3|conv4)\.(conv1|pointwise)\.(.+)", key)
        if m:
            k = 1 if m.group(1) == "conv3" else 2
            renamed[key] = f"block14.sepconv{k}.{_TIMM_SEPARABLE[m.group(2)]}.{m.group(3)}"
            continue
        head, _, tail = key.partition(".")
        renamed[key] = f"{_TIMM_XCEPTION_TOP.get(head, head)}.{tail}"
    for block, entries in reps.items():
        k = 0
        for index in sorted(entries):
            tails = {key: key.split(f".rep.{index}.", 1)[1] for key in entries[index]}
            separable = any(t.partition(".")[0] in _TIMM_SEPARABLE for t in tails.values())
            k += separable
            for key, tail in tails.items():
                if separable:
                    sub, _, param = tail.partition(".")
                    renamed[key] = f"block{int(block) + 1}.sepconv{k}.{_TIMM_SEPARABLE.get(sub, sub)}.{param}"
                else:
                    renamed[key] = f"block{int(block) + 1}.sepconv{k}_bn.{tail}"
    return renamed


def rename_keys(keys: list[str], layout: str | None = None) -> dict[str, str]:
    """Source key -> convzoo key for a torchvision/timm/convzoo state dict's ``keys`` (``layout`` detected
    when None)."""
    layout = layout or detect_layout(keys)
    if layout == TORCHVISION_RESNET:
        return {k: _torchvision_resnet_key(k) for k in keys}
    if layout == TIMM_XCEPTION:
        return _timm_xception_keys(keys)
    return {k: k for k in keys}


def state_to_convzoo(state: dict[str, torch.Tensor], layout: str | None = None) -> Mapped:
    """Rename a torchvision/timm/convzoo state dict to convzoo keys (``layout`` detected when None)."""
    keys = list(state)
    layout = layout or detect_layout(keys)
    out = Mapped(layout=layout)
    for key, new in rename_keys(keys, layout).items():
        out.tensors[new] = Tensor(state[key], f"'{key}'")
    return out


def guess_torch_model(state: dict[str, Any]) -> str | None:
    """The convzoo model a state dict most likely belongs to, judged by its keys and a few shapes."""
    keys = list(state)
    layout = detect_layout(keys)
    if layout == TIMM_XCEPTION:
        return "xception_timm"
    if any(k.startswith("Mixed_7c.") for k in keys):
        return "inception_v3_keras" if "Mixed_7c.branch1x1.bn.weight" not in state else "inception_v3"
    names = keys if layout == CONVZOO_NAMES else [_torchvision_resnet_key(k) for k in keys]
    values = dict(zip(names, state.values()))
    if "block14.sepconv2.pointwise.weight" in values:
        return "xception"
    blocks = [int(m.group(1)) for n in names if (m := re.fullmatch(r"conv4\.block(\d+)\.conv1\.weight", n))]
    depth = {6: 50, 23: 101, 36: 152}.get(max(blocks, default=0))
    if depth is None:
        return None
    if "post_bn.bn.weight" in values:
        return f"resnet{depth}v2"
    conv2 = values.get("conv2.block1.conv2.weight")
    if conv2 is not None and conv2.shape[0] != conv2.shape[1]:
        groups = conv2.shape[0] // conv2.shape[1]
        return f"resnext{depth}_{groups}x{conv2.shape[0] // groups}d"
    return f"resnet{depth}" if "conv1.conv.bias" in values else None
