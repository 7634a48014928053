"""``convzoo bench``: images per second of convzoo beside its references, as a markdown table."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import torch

from ..bench import BENCH_RUNTIMES, REFERENCES, results_table, run_bench
from ..runtime import DEVICES
from ..utils.fileio import write_json
from .common import image_side, model_name, non_negative_int, output_file, positive_int


def cmd_bench(args: argparse.Namespace) -> int:
    """``convzoo bench MODELS...``: progress on stderr, the table on stdout, optionally a JSON file."""
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ("infer", "train") if args.mode == "both" else (args.mode,)
    result = run_bench(args.models, batch_size=args.batch_size, input_size=args.input_size, modes=modes,
                       runtimes=tuple(args.runtime.split(",")), against=tuple(filter(None, args.against.split(","))),
                       device=args.device, warmup=args.warmup, repeats=args.repeats,
                       log=lambda s: print(s, file=sys.stderr))
    print(results_table(result.rows))
    if args.json:
        write_json(args.json, dict(device=result.device, torch=torch.__version__, threads=torch.get_num_threads(),
                                   matmul_gflops=result.matmul.gflops, matmul_dtype=result.matmul.dtype,
                                   matmul_n=result.matmul.n, rows=[asdict(r) for r in result.rows]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb."""
    p = sub.add_parser("bench", help="images/s of convzoo beside plain PyTorch, timm and Keras, in one run")
    p.add_argument("models", nargs="*", type=model_name, default=["xception"])
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"))
    p.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    p.add_argument("--runtime", default="eager,optimized",
                   help=f"comma-separated, from {', '.join(BENCH_RUNTIMES)}")
    p.add_argument("--against", default="timm,keras",
                   help=f"comma-separated, from {', '.join(REFERENCES)} ('' for none)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda where available")
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=output_file(".json", what="the results"), metavar="FILE.json",
                   help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench)
