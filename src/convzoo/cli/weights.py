"""``convzoo weights ...``: convert a weight file to a convzoo checkpoint, inspect a file, fetch published
weights, list the weight records; and ``convzoo verify-import``: compare a Keras file's import layer by layer
with Keras itself."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..data.transforms import ImageTransform
from ..errors import ConfigError, WeightsError
from ..factory import build_with_weights
from ..registry import get_model_cfg, list_records
from ..utils.fileio import read_names
from ..utils.tables import format_table
from ..weights import FileHead, save_checkpoint
from ..weights.hub import fetch, select
from ..weights.info import describe
from ..weights.verify import compare_with_keras, prepare_keras_check
from .common import model_name, non_negative_int, output_file, warnings_as_lines

VERIFY_ATOL = 1e-4


def cmd_convert(args: argparse.Namespace) -> int:
    """``convzoo weights convert IN OUT --model NAME``: the model gets the file's head unless
    ``--num-classes`` says otherwise."""
    class_names = None if args.class_names is None else read_names(args.class_names, "class names")
    with warnings_as_lines():
        model, report = build_with_weights(args.model, args.input, strict=not args.no_strict,
                                           num_classes=args.num_classes)
    if class_names is not None and model.num_classes and len(class_names) != model.num_classes:
        raise ConfigError(f"{args.class_names}: {len(class_names)} class names for a model with "
                          f"{model.num_classes} classes")
    out = save_checkpoint(model, args.output, class_names=class_names,
                          extra={"converted_from": report.path, "source_format": report.format,
                                 "source_layout": report.layout})
    print(report)
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {out}")
    return 0


def _shown(key: str, value: Any) -> str:
    if key == "values":
        return f"{value:,}"
    if key == "nesting":
        return " > ".join(value)
    if key == "head":
        return FileHead(**value).describe()
    if isinstance(value, list) and key in ("preprocessing_layers", "prefixes"):
        return ", ".join(value)
    return "unknown" if value is None else str(value)


def cmd_info(args: argparse.Namespace) -> int:
    """``convzoo weights info FILE``: one line per fact (``--json``: one JSON object); the notes last."""
    info = describe(args.file)
    if args.json:
        print(json.dumps(info))
        return 0
    shown = {k: v for k, v in info.items() if k == "model" or (k != "notes" and v not in (None, [], {}))}
    width = max(len(k) for k in shown)
    for key, value in shown.items():
        print(f"{key:<{width}}  {_shown(key, value)}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """``convzoo weights fetch MODEL``: print the local path of the downloaded (or cached) file."""
    get_model_cfg(args.model)
    spec = f"imagenet:{args.source}" if args.source else "imagenet"
    print(fetch(select(args.model, spec, num_classes=0 if args.notop else 1000)))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """``convzoo weights list [MODEL]``: one row per weight record."""
    if args.model is not None:
        get_model_cfg(args.model)
    found = list_records(args.model)
    if not found:
        raise WeightsError(f"no known weight files for {args.model}; `convzoo weights list` shows all")
    if args.json:
        print(json.dumps([dict(r.as_dict(), hash_kind=r.hash_kind) for r in found]))
        return 0
    rows = [(r.name, r.source, r.file_name or "-", r.hash_kind or "none", "?" if r.size is None else f"{r.size:,}",
             f"{r.input_size[1]}x{r.input_size[2]}", r.interpolation, f"{r.crop_pct:.4g}", r.preprocessing,
             r.classes or "?", "?" if r.top1 is None else f"{r.top1:g}", r.parity or "-") for r in found]
    print(format_table(("record", "source", "file", "hash", "size", "input", "interpolation", "crop",
                        "preprocessing", "classes", "top-1", "verified by"), rows))
    return 0


def _verify_input(model: torch.nn.Module, image: Path | None) -> tuple[torch.Tensor, str]:
    """The comparison input: ``image`` preprocessed as the model's weights record says, else a fixed random
    input in [-1, 1] at the model's input size."""
    if image is not None:
        return ImageTransform.from_model(model)([image]), str(image)
    _, h, w = model.default_cfg.input_size
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1, "random input (seed 0)"


def cmd_verify_import(args: argparse.Namespace) -> int:
    """``convzoo verify-import FILE --model NAME``: exit 0 when convzoo's and Keras' logits agree within
    1e-4 (plus 1e-5 of the largest logit, for float32 rounding on large inputs), 1 when they differ; a file
    or model that cannot be compared is one line and exit 2."""
    check = prepare_keras_check(args.file, args.model)
    x, described = _verify_input(check.model, args.image)
    report = compare_with_keras(check.keras_model, check.model, x, atol=VERIFY_ATOL)
    name = check.model.default_cfg.name
    if args.json:
        print(json.dumps(dict(file=str(check.file), model=name, keras=f"keras.applications.{check.app}",
                              input=described, **report.as_dict())))
    else:
        print(f"{check.file}: convzoo {name} vs keras.applications.{check.app} on {described}")
        print("\n".join(report.table()))
    return 0 if report.agree else 1


def _register_weights(subparsers: Any) -> None:
    p = subparsers.add_parser("weights", help="convert, inspect, fetch and list weight files")
    sub = p.add_subparsers(dest="weights_command", required=True, parser_class=type(p))
    c = sub.add_parser("convert", help="load a Keras/torchvision/timm/convzoo file into a model, save a checkpoint")
    c.add_argument("input", help="weights file (format detected from its bytes) or 'imagenet'")
    c.add_argument("output", type=output_file(".safetensors", what="a convzoo checkpoint", folder_ok=True),
                   help="checkpoint file to write, .safetensors (an existing folder gets model.safetensors)")
    c.add_argument("--model", required=True, type=model_name, help="registered model name (see `convzoo list`)")
    c.add_argument("--num-classes", type=non_negative_int, help="classes of the new model (default: the file's; other than the "
                                                   "file's, the classifier is not loaded)")
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
    ls = sub.add_parser("list", help="the known weight files: hash, evaluation transform, accuracy, parity test")
    ls.add_argument("model", nargs="?", help="only this registered model's files")
    ls.add_argument("--json", action="store_true", help="print one JSON list of records")
    ls.set_defaults(func=cmd_list)


def register(subparsers: Any) -> None:
    """Add the ``weights`` verb group (``convert``, ``info``, ``fetch``, ``list``) and ``verify-import``."""
    _register_weights(subparsers)
    v = subparsers.add_parser("verify-import", help="load a Keras file into convzoo and into Keras, compare layer "
                                                    "by layer (exit 0: logits agree within 1e-4 + 1e-5 x max|logit|, "
                                                    "1: they differ)")
    v.add_argument("file", help="Keras weights (.h5, .weights.h5 or .keras)")
    v.add_argument("--model", required=True, help="registered model with a keras.applications reference")
    v.add_argument("--image", type=Path, help="compare on this image (preprocessed as the weights record says); "
                                              "default: a fixed random input")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    v.set_defaults(func=cmd_verify_import)
