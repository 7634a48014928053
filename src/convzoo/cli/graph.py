"""``convzoo graph``: a diagram of a model's blocks and flows with output shapes."""

from __future__ import annotations

import argparse

from ..factory import create_model
from ..graph import render, to_dot


def cmd_graph(args: argparse.Namespace) -> int:
    """``convzoo graph MODEL -o FILE``."""
    model = create_model(args.model, input_size=args.input_size)
    out = render(to_dot(model, depth=args.depth), args.output)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``graph`` verb."""
    p = sub.add_parser("graph", help="draw a model's blocks and flows with output shapes")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True, help="FILE.svg, .png, .pdf or .dot")
    p.add_argument("--depth", type=int, default=1, help="1: one node per block; 2: one per layer")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.set_defaults(func=cmd_graph)
