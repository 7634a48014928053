"""Where and how a model runs: the device a ``--device`` choice names, whether bf16 autocast pays there,
and the inference runtimes (eager PyTorch, or the model's ONNX export in ONNX Runtime)."""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError
from .export import export_model
from .optimize import fuse_batchnorm

RUNTIMES = ("eager", "onnxruntime")
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
    """Whether bfloat16 autocast is the default on ``device``: on a CUDA device that supports it (the CPUs
    convzoo runs on here have no bf16 arithmetic, where autocast only adds conversions)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``bf16``, else nothing: the one autocast helper."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


class OnnxRuntimeModel:
    """``model`` with BatchNorm folded, exported to ONNX and run by ONNX Runtime on the CPU.

    Called like the model: a float32 (N, C, H, W) tensor in, a tensor of logits out. ``model`` is left as it is.
    """

    def __init__(self, model: nn.Module) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("the onnxruntime runtime needs onnxruntime: pip install onnxruntime") from None
        with tempfile.TemporaryDirectory() as d:
            path = export_model(fuse_batchnorm(copy.deepcopy(model).eval()), Path(d) / "model.onnx", "onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N, classes) for the batch ``x``."""
        (logits,) = self.session.run(None, {self.input_name: x.float().contiguous().numpy()})
        return torch.from_numpy(logits)


def runtime_model(model: nn.Module, runtime: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as run by ``runtime``: the model itself for 'eager', an :class:`OnnxRuntimeModel` for
    'onnxruntime'."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    return OnnxRuntimeModel(model) if runtime == "onnxruntime" else model
