"""``convzoo export``: a model with its weights as ONNX, TorchScript or .pt2.

The model gets the classifier of its weights (a checkpoint's, or a file's with its class count); weights
without a classifier are exported as the feature extractor (pooled features (N, C)), and the line printed
says so. Without weights the export is refused, unless ``--random-weights`` asks for it (for benchmarks)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..export import DYNAMIC_SIZE, EXTENSIONS, FORMATS, export_model
from ..factory import create_model
from ..predict import resolve_features_model
from ..preprocess import recorded_normalize
from ..registry import get_model_cfg, list_models
from .common import check_output_file, model_name


def _target(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(model name, weights) from the positional MODEL|CHECKPOINT, ``--model`` and ``--weights``."""
    model, weights = args.model, args.weights
    if args.target in list_models():
        if model is not None:
            raise ConfigError(f"the model is named twice: {args.target} and --model {model}")
        model = args.target
    elif args.target is not None:
        path = Path(args.target)
        if not (path.exists() or path.suffix or len(path.parts) > 1):
            get_model_cfg(args.target)  # neither a model nor a path: the error names the closest models
        if weights is not None:
            raise ConfigError(f"two weights given: {args.target} and --weights {weights}")
        weights = args.target
    if model is None and weights is None:
        raise ConfigError("expected a model name or a convzoo checkpoint (positional, or --model/--weights)")
    return model, weights


def _build(args: argparse.Namespace) -> nn.Module:
    name, weights = _target(args)
    if args.random_weights:
        if weights is not None or name is None:
            raise ConfigError("--random-weights takes a model name and no weights")
        return create_model(name).eval()
    if weights is None:
        raise ConfigError("expected --weights (a weights file, a convzoo checkpoint or 'imagenet'), or "
                          "--random-weights to export random weights on purpose")
    return resolve_features_model(name, weights)[0]


def _describe(model: nn.Module, fmt: str) -> str:
    c, h, w = model.default_cfg.input_size
    _, min_h, min_w = model.default_cfg.min_input_size
    size = f"input {c}xHxW for H >= {min_h}, W >= {min_w}" if fmt in DYNAMIC_SIZE else f"input {c}x{h}x{w} only"
    out = (f"logits of {model.num_classes} classes" if model.num_classes else
           f"no classifier in the weights: the feature extractor, pooled features of {model.num_features}")
    return f"{fmt}, {size}, {recorded_normalize(model).describe()} preprocessing, dynamic batch; output: {out}"


def cmd_export(args: argparse.Namespace) -> int:
    """``convzoo export MODEL|CHECKPOINT --format F -o FILE``."""
    output = check_output_file(args.output, EXTENSIONS[args.format], f"the {args.format} export")
    model = _build(args)
    out = export_model(model, output, args.format)
    print(f"wrote {out} ({_describe(model, args.format)})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb."""
    p = sub.add_parser("export", help="export a model with its weights to ONNX, TorchScript or torch.export (.pt2)",
                       description="TorchScript and .pt2 files take any input size from the model's minimum up "
                                   "(TF 'same' padding computed for the size they run at); ONNX files the "
                                   "model's input size only. All take any batch size.")
    p.add_argument("target", nargs="?", metavar="MODEL|CHECKPOINT",
                   help="registered model name (with --weights), or a convzoo checkpoint")
    p.add_argument("--model", type=model_name, help="registered model name (the same as the positional MODEL)")
    p.add_argument("--weights", help="weights file, convzoo checkpoint or 'imagenet' (the model gets its classifier)")
    p.add_argument("--random-weights", action="store_true",
                   help="export the model with random weights (for benchmarks; its outputs mean nothing)")
    p.add_argument("--format", required=True, choices=FORMATS)
    written = ", ".join(f"{fmt}: {' or '.join(ext)}" for fmt, ext in EXTENSIONS.items())
    p.add_argument("-o", "--output", required=True, help=f"the file to write ({written})")
    p.set_defaults(func=cmd_export)
