"""``convzoo weights ...``: convert a weight file to a convzoo checkpoint, inspect a file, fetch published weights."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``weights`` verb group (``convert``, ``info``, ``fetch``) to the command line."""
    p = subparsers.add_parser("weights", help="convert, inspect and fetch weight files")
    sub = p.add_subparsers(dest="weights_command", required=True, parser_class=type(p))
    c = sub.add_parser("convert", help="load a Keras/torchvision/timm/convzoo file into a model, save a checkpoint")
    c.add_argument("input", help="weights file (format detected from its bytes) or 'imagenet'")
    c.add_argument("output", help="checkpoint file to write (an existing folder gets model.safetensors)")
    c.add_argument("--model", required=True, help="registered model name (see `convzoo list`)")
    c.add_argument("--num-classes", type=int, help="classes of the new model (the classifier is then not loaded)")
    c.add_argument("--class-names", type=Path, help="text file with one class name per line")
    c.add_argument("--no-strict", action="store_true", help="load what fits instead of failing")
    c.set_defaults(func=cmd_convert)
    i = sub.add_parser("info", help="format, tensors and likely model of a weights file")
    i.add_argument("file")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=cmd_info)
    f = sub.add_parser("fetch", help="download a model's published ImageNet weights into $CONVZOO_HOME")
    f.add_argument("model")
    f.add_argument("--source", help="publisher to take them from (keras, torchvision, timm)")
    f.add_argument("--notop", action="store_true", help="the file without classifier, where there is one")
    f.set_defaults(func=cmd_fetch)


def cmd_convert(args: argparse.Namespace) -> int:
    """``convzoo weights convert IN OUT --model NAME``."""
    from ..registry import create_model
    from .checkpoint import save_checkpoint
    from .loading import load_weights

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = create_model(args.model, **kwargs)
    class_names = None
    if args.class_names is not None:
        class_names = [line.strip() for line in args.class_names.read_text().splitlines() if line.strip()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load_weights(model, args.input, strict=not args.no_strict)
    for w in caught:
        print(f"convzoo: warning: {w.message}", file=sys.stderr)
    out = save_checkpoint(model, args.output, class_names=class_names,
                          extra={"converted_from": report.path, "source_format": report.format,
                                 "source_layout": report.layout})
    print(report)
    print(f"wrote {out}")
    return 0


def describe(path: str | Path) -> dict[str, Any]:
    """What ``convzoo weights info`` prints: format, layout, tensor and value counts, the likely model
    and, for a convzoo checkpoint, its config."""
    from . import formats

    fmt, file = formats.detect_format(path)
    info: dict[str, Any] = {"file": str(file), "format": fmt}
    if fmt in (formats.KERAS_H5, formats.KERAS_ARCHIVE):
        from .keras_h5 import read_keras
        from .keras_map import guess_keras_model

        layout, layers = read_keras(file, archive=fmt == formats.KERAS_ARCHIVE)
        arrays = [a for layer in layers for _, a in layer.weights]
        info.update(layout=f"keras ({layout})", layers=len(layers), tensors=len(arrays),
                    values=int(sum(a.size for a in arrays)), model=guess_keras_model(layers))
        return info
    from .torch_state import detect_layout, guess_torch_model, read_safetensors, read_torch

    if fmt == formats.TORCH:
        state = read_torch(file)
    else:
        state, _ = read_safetensors(file)
    info.update(layout=detect_layout(list(state)), tensors=len(state),
                values=int(sum(t.numel() for t in state.values())), model=guess_torch_model(state))
    if fmt == formats.CONVZOO:
        from .checkpoint import read_checkpoint

        ck = read_checkpoint(file)
        info.update(layout="convzoo checkpoint", model=ck.model, model_args=ck.model_args,
                    class_names=len(ck.class_names) if ck.class_names else None, extra=ck.extra,
                    convzoo_version=ck.convzoo_version)
    return info


def cmd_info(args: argparse.Namespace) -> int:
    """``convzoo weights info FILE``."""
    info = describe(args.file)
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "values":
            value = f"{value:,}"
        print(f"{key:<{width}}  {'unknown' if value is None else value}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``convzoo weights fetch MODEL``: print the local path of the downloaded (or cached) file."""
    from ..registry import get_model_cfg
    from .hub import fetch, select

    get_model_cfg(args.model)
    spec = f"imagenet:{args.source}" if args.source else "imagenet"
    entry = select(args.model, spec, num_classes=0 if args.notop else 1000)
    print(fetch(entry))
    return 0
