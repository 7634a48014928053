"""``convzoo weights ...``: convert a weight file to a convzoo checkpoint, inspect a file, fetch published
weights, list the weight records; and ``convzoo verify-import``: compare a Keras file's import layer by layer
with Keras itself."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..errors import ConvzooError, WeightsError

if TYPE_CHECKING:
    import torch

VERIFY_ATOL = 1e-4


def register(subparsers: Any) -> None:
    """Add the ``weights`` verb group (``convert``, ``info``, ``fetch``, ``list``) and ``verify-import``."""
    p = subparsers.add_parser("weights", help="convert, inspect, fetch and list weight files")
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
    ls = sub.add_parser("list", help="the known weight files: hash, evaluation transform, accuracy, parity test")
    ls.add_argument("model", nargs="?", help="only this registered model's files")
    ls.add_argument("--json", action="store_true", help="print one JSON list of records")
    ls.set_defaults(func=cmd_list)
    v = subparsers.add_parser("verify-import", help="load a Keras file into convzoo and into Keras, compare layer "
                                                    "by layer (exit 0: logits agree within 1e-4 + 1e-5 x max|logit|, "
                                                    "1: they differ)")
    v.add_argument("file", help="Keras weights (.h5, .weights.h5 or .keras)")
    v.add_argument("--model", required=True, help="registered model with a keras.applications reference")
    v.add_argument("--image", type=Path, help="compare on this image (preprocessed as the weights record says); "
                                              "default: a fixed random input")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    v.set_defaults(func=cmd_verify_import)


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


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    for i, row in enumerate([header, ["-" * w for w in widths], *rows]):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def cmd_list(args: argparse.Namespace) -> int:
    """``convzoo weights list [MODEL]``: one row per weight record."""
    from ..registry import get_model_cfg
    from .records import list_records

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
    _print_table(("record", "source", "file", "hash", "size", "input", "interpolation", "crop", "preprocessing",
                  "classes", "top-1", "verified by"), rows)
    return 0


def _verify_input(model: torch.nn.Module, image: Path | None) -> tuple[torch.Tensor, str]:
    """The comparison input: ``image`` preprocessed as the model's weights record says, else a fixed random
    input in [-1, 1] at the model's input size."""
    import torch

    if image is not None:
        from ..data.transforms import ImageTransform

        return ImageTransform.from_model(model)([image]), str(image)
    _, h, w = model.default_cfg.input_size
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1, "random input (seed 0)"


def cmd_verify_import(args: argparse.Namespace) -> int:
    """``convzoo verify-import FILE --model NAME``: exit 0 when convzoo's and Keras' logits agree within
    1e-4 (plus 1e-5 of the largest logit, for float32 rounding on large inputs), 1 when they differ; a file
    or model that cannot be compared is one line and exit 2."""
    from ..registry import create_model, get_model_cfg, list_models
    from . import formats
    from .compare import compare_with_keras
    from .keras_h5 import read_keras
    from .keras_map import guess_keras_model
    from .loading import load_weights
    from .reference import build_keras_reference, keras_application, load_into_keras, require_keras

    cfg = get_model_cfg(args.model)
    app = keras_application(cfg)
    if app is None:
        known = [n for n in list_models() if keras_application(get_model_cfg(n))]
        raise ConvzooError(f"{args.model} has no Keras reference (it reproduces {cfg.reference}); verify-import "
                           f"compares these with keras.applications: {', '.join(known)}")
    fmt, file = formats.detect_format(args.file)
    if fmt not in (formats.KERAS_H5, formats.KERAS_ARCHIVE):
        raise WeightsError(f"{file}: a {fmt} file; verify-import compares Keras files (.h5, .weights.h5, .keras)")
    require_keras()
    layout, layers = read_keras(file, archive=fmt == formats.KERAS_ARCHIVE)
    guess = guess_keras_model(layers)
    if guess is not None and guess != cfg.name:
        raise WeightsError(f"{file} holds {guess} weights, not {cfg.name}")
    include_top = any(layer.name == "predictions" for layer in layers)
    model = create_model(cfg.name, **({} if include_top else {"include_top": False, "pooling": "avg"}))
    load_weights(model, file)
    keras_model = build_keras_reference(app, include_top)
    load_into_keras(keras_model, file, fmt, layout)
    x, described = _verify_input(model, args.image)
    report = compare_with_keras(keras_model, model, x, atol=VERIFY_ATOL)
    if args.json:
        print(json.dumps(dict(file=str(file), model=cfg.name, keras=f"keras.applications.{app}", input=described,
                              **report.as_dict())))
    else:
        print(f"{file}: convzoo {cfg.name} vs keras.applications.{app} on {described}")
        print("\n".join(report.table()))
    return 0 if report.agree else 1
