"""Where a model runs: the device a ``--device`` choice names, whether bf16 autocast pays there, and the
one autocast helper."""

from __future__ import annotations

import contextlib

import torch

from .. import hardware
from ..errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
# torch.compile modes; 'reduce-overhead' replays CUDA graphs on a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def resolve_device(device: str) -> torch.device:
    """The device a ``--device`` choice ('auto', 'cpu' or 'cuda') names; 'auto' is CUDA where available."""
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    return torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")


def bf16_pays(device: torch.device) -> bool:
    """Whether bfloat16 is the default on ``device``: a CUDA device that supports it, or a CPU with native bf16
    arithmetic (AMX-BF16 or AVX512-BF16) and oneDNN. The rule and its measurements live in
    :func:`convzoo.hardware.bf16_pays`; the trainer, ``predict``, ``eval`` and ``bench`` follow it."""
    return hardware.bf16_pays(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else nothing: the one autocast helper."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
