"""``convzoo list`` and ``convzoo summary``: the registered models, and one model's layers and counts."""

from __future__ import annotations

import argparse
import json

import torch

from ..errors import ConvzooError
from ..factory import create_model
from ..registry import get_model_cfg, list_models
from ..summary import count_macs, count_params, layer_table
from ..utils.tables import format_table
from .common import image_side, model_name, non_negative_int, positive_int


def cmd_list(args: argparse.Namespace) -> int:
    """``convzoo list [PATTERN]``: one row per registered model."""
    names = list_models(args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*")
    if not names:
        raise ConvzooError(f"no model matches {args.pattern!r}; `convzoo list` shows all")
    rows = []
    for name in names:
        cfg = get_model_cfg(name)
        with torch.device("meta"):
            params = count_params(create_model(name)).total
        rows.append((name, f"{params:,}", f"{cfg.input_size[1]}x{cfg.input_size[2]}", cfg.reference))
    print(format_table(("model", "params", "input", "reference"), rows))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """``convzoo summary MODEL``: a Keras-style layer table and the parameter and MAC totals."""
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    with torch.device("meta"):  # shapes and counts without memory, whatever the input size
        model = create_model(args.model, input_size=args.input_size, **kwargs)
    size = model.default_cfg.input_size
    counts = count_params(model)
    macs = count_macs(model, size)
    if args.json:
        print(json.dumps(dict(model=args.model, total_params=counts.total, trainable_params=counts.trainable,
                              non_trainable_params=counts.non_trainable, macs=macs, input_size=list(size))))
        return 0
    rows = [(r.name, r.type, str((None, *r.output_shape)), f"{r.params:,}")
            for r in layer_table(model, size, args.depth)]
    print(f'Model: "{args.model}"  input {size}')
    print(format_table(("Layer", "Type", "Output Shape", "Param #"), rows))
    print(f"Total params: {counts.total:,}")
    print(f"Trainable params: {counts.trainable:,}")
    print(f"Non-trainable params: {counts.non_trainable:,}")
    print(f"Multiply-accumulates per image: {macs:,} ({macs / 1e9:.2f} GMAC)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``list`` and ``summary`` verbs."""
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern or substring")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("summary", help="layer table, parameter counts and MACs of a model")
    p.add_argument("model", type=model_name)
    p.add_argument("--num-classes", type=non_negative_int, help="classes of the classifier (0: none)")
    p.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"))
    p.add_argument("--depth", type=positive_int, help="rows for modules this deep in the module tree")
    p.add_argument("--json", action="store_true", help="print one JSON object with the totals")
    p.set_defaults(func=cmd_summary)
