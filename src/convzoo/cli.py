"""The ``convzoo`` command line. Each verb is a small function; errors are one line and exit code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Callable, Sequence

from .errors import ConvzooError

# Modules that add verbs: each has ``register(subparsers)`` and imports its heavy dependencies lazily.
VERB_MODULES: list[str] = [
    "convzoo.predict",
    "convzoo.export",
    "convzoo.graph",
    "convzoo.bench",
    "convzoo.train.commands",
    "convzoo.weights.commands",
]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def cmd_list(args: argparse.Namespace) -> int:
    """``convzoo list [PATTERN]``: one row per registered model."""
    import torch

    from .registry import create_model, get_model_cfg, list_models
    from .summary import count_params

    names = list_models(args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*")
    if not names:
        raise ConvzooError(f"no model matches {args.pattern!r}; `convzoo list` shows all")
    rows = []
    for name in names:
        cfg = get_model_cfg(name)
        with torch.device("meta"):
            params = count_params(create_model(name)).total
        rows.append((name, _fmt_int(params), f"{cfg.input_size[1]}x{cfg.input_size[2]}", cfg.reference))
    _print_table(("model", "params", "input", "reference"), rows)
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    """``convzoo summary MODEL``: a Keras-style layer table and the parameter and MAC totals."""
    from .registry import create_model
    from .summary import count_macs, count_params, layer_table

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = create_model(args.model, input_size=args.input_size, **kwargs)
    size = model.default_cfg.input_size
    counts = count_params(model)
    macs = count_macs(model, size)
    if args.json:
        print(json.dumps(dict(model=args.model, total_params=counts.total, trainable_params=counts.trainable,
                              non_trainable_params=counts.non_trainable, macs=macs, input_size=list(size))))
        return 0
    rows = [(r.name, r.type, str((None, *r.output_shape)), _fmt_int(r.params))
            for r in layer_table(model, size, args.depth)]
    print(f'Model: "{args.model}"  input {size}')
    _print_table(("Layer", "Type", "Output Shape", "Param #"), rows)
    print(f"Total params: {_fmt_int(counts.total)}")
    print(f"Trainable params: {_fmt_int(counts.trainable)}")
    print(f"Non-trainable params: {_fmt_int(counts.non_trainable)}")
    print(f"Multiply-accumulates per image: {_fmt_int(macs)} ({macs / 1e9:.2f} GMAC)")
    return 0


def _print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line.format(*r))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every verb."""
    parser = _Parser(prog="convzoo", description="Xception, Inception V3, ResNet and ResNeXt, exact to their references.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("list", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern or substring")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("summary", help="layer table, parameter counts and MACs of a model")
    p.add_argument("model")
    p.add_argument("--num-classes", type=int)
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--depth", type=int, help="rows for modules this deep in the module tree")
    p.add_argument("--json", action="store_true", help="print one JSON object with the totals")
    p.set_defaults(func=cmd_summary)
    for name in VERB_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConvzooError as e:
        print(f"convzoo: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"convzoo: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convzoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
