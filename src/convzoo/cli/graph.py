"""``convzoo graph``: a diagram of a model's blocks and flows with output shapes."""

from __future__ import annotations

import argparse

import torch

from ..factory import create_model
from ..graph import DEPTHS, render, to_dot
from .common import image_side, model_name, output_file


def cmd_graph(args: argparse.Namespace) -> int:
    """``convzoo graph MODEL -o FILE``."""
    with torch.device("meta"):  # traced for its shapes only: no memory, whatever the input size
        model = create_model(args.model, input_size=args.input_size)
    out = render(to_dot(model, depth=args.depth), args.output)
    print(f"wrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``graph`` verb."""
    p = sub.add_parser("graph", help="draw a model's dataflow (blocks, skip connections, concatenations) with "
                                     "output shapes")
    p.add_argument("model", type=model_name)
    p.add_argument("-o", "--output", required=True, type=output_file(".svg", ".png", ".pdf", ".dot", what="the diagram"),
                   help="FILE.svg, .png, .pdf or .dot")
    p.add_argument("--depth", type=int, choices=DEPTHS, default=1, help="1: one node per block; 2: one per layer")
    p.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"))
    p.set_defaults(func=cmd_graph)
