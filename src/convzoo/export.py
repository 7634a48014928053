"""Export to ONNX, TorchScript and ``torch.export`` (.pt2), each with a dynamic batch axis; a model built with
an auxiliary head is exported with its main logits only."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ConvzooError
from .models.base import logits_of
from .utils.fileio import ensure_dir

FORMATS = ("onnx", "torchscript", "pt2")


class ExportError(ConvzooError):
    """An export that the exporter could not complete."""


class MainLogits(nn.Module):
    """``model`` giving only its main logits (N, classes), for a model that returns ``(logits, aux_logits)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def _example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.default_cfg.input_size)


def _export(model: nn.Module, x: torch.Tensor, path: Path, fmt: str) -> None:
    batch = torch.export.Dim("batch", min=1, max=4096)
    if fmt == "onnx":
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(path))
    elif fmt == "torchscript":
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model, x), str(path))
    else:
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(path))


def export_model(model: nn.Module, path: str | Path, fmt: str) -> Path:
    """Write ``model`` (put in eval mode) to ``path`` as ``fmt`` ('onnx', 'torchscript' or 'pt2') with a
    dynamic batch: float32 (N, C, H, W) in, logits (N, classes) out. Raises :class:`ConfigError` (unknown
    format) and :class:`ExportError`."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    ensure_dir(path.parent)
    model = model.eval()
    x = _example(model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export(MainLogits(model).eval() if getattr(model, "aux_logits", False) else model, x, path, fmt)
    except ImportError as exc:
        raise ExportError(f"{fmt} export needs an optional package ({exc.name}): pip install 'convzoo[onnx]'") from None
    except (RuntimeError, torch._dynamo.exc.TorchDynamoException) as exc:
        raise ExportError(f"{fmt} export failed: {str(exc).splitlines()[0]}") from None
    return path
