"""``convzoo export``: a model (optionally with weights) as ONNX, TorchScript or .pt2."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import FORMATS, export_model
from ..predict import resolve_model
from .common import warn


def cmd_export(args: argparse.Namespace) -> int:
    """``convzoo export MODEL|CHECKPOINT --format F -o FILE``."""
    if Path(args.model).exists():
        model, _ = resolve_model(None, args.model)
    else:
        model, _ = resolve_model(args.model, args.weights)
        if args.weights is None:
            warn(f"no --weights given, {args.model} is randomly initialised")
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
