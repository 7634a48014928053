"""Export to ONNX, TorchScript and ``torch.export`` (.pt2), each with a dynamic batch axis."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ConvzooError

FORMATS = ("onnx", "torchscript", "pt2")


class ExportError(ConvzooError):
    """An export that the exporter could not complete."""


def _example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.default_cfg.input_size)


def export_model(model: nn.Module, path: str | Path, fmt: str) -> Path:
    """Write ``model`` (eval mode) to ``path`` as ``fmt`` ('onnx', 'torchscript' or 'pt2') with a dynamic batch."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    x = _example(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if fmt == "onnx":
                program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"],
                                            output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
                program.save(str(path))
            elif fmt == "torchscript":
                with torch.no_grad():
                    torch.jit.save(torch.jit.trace(model, x), str(path))
            else:
                torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), str(path))
    except ImportError as exc:
        raise ExportError(f"{fmt} export needs an optional package ({exc.name}): pip install 'convzoo[onnx]'") from None
    except (RuntimeError, torch._dynamo.exc.TorchDynamoException) as exc:
        raise ExportError(f"{fmt} export failed: {str(exc).splitlines()[0]}") from None
    return path


def cmd_export(args: argparse.Namespace) -> int:
    """``convzoo export``: write a model (optionally with weights) as ONNX, TorchScript or .pt2."""
    from .predict import resolve_model

    if Path(args.model).exists():
        model, _ = resolve_model(None, args.model)
    else:
        model, _ = resolve_model(args.model, args.weights)
    out = export_model(model, args.output, args.format)
    print(f"wrote {out} ({args.format}, input {tuple(model.default_cfg.input_size)}, dynamic batch)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb."""
    p = sub.add_parser("export", help="export a model to ONNX, TorchScript or torch.export (.pt2)")
    p.add_argument("model", help="registered model name, or a convzoo checkpoint")
    p.add_argument("--weights", help="weights file or convzoo checkpoint")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("-o", "--output", required=True)
    p.set_defaults(func=cmd_export)
