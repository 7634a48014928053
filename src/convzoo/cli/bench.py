"""``convzoo bench``: images per second of convzoo beside its references, as a markdown table."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict

import torch

from ..bench import BENCH_RUNTIMES, REFERENCES, results_table, run_bench
from ..runtime import DEVICES, PRECISIONS
from ..utils.fileio import write_json
from .common import image_side, model_name, non_negative_int, output_file, positive_int, warnings_as_lines


def _names(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated list ('' for none), or None when the flag was not given."""
    return None if text is None else tuple(filter(None, text.split(",")))


def cmd_bench(args: argparse.Namespace) -> int:
    """``convzoo bench MODELS...``: progress on stderr, the table on stdout, optionally a JSON file."""
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ("infer", "train") if args.mode == "both" else (args.mode,)
    with warnings_as_lines():
        result = run_bench(args.models, batch_size=args.batch_size, input_size=args.input_size, modes=modes,
                           runtimes=_names(args.runtime), precisions=_names(args.precision),
                           against=_names(args.against), device=args.device, warmup=args.warmup,
                           repeats=args.repeats, rounds=args.rounds, log=lambda s: print(s, file=sys.stderr))
    print(results_table(result.rows))
    if args.json:
        write_json(args.json, dict(device=result.device, torch=torch.__version__, threads=torch.get_num_threads(),
                                   load_average=os.getloadavg()[0],
                                   matmuls={p: asdict(m) for p, m in result.matmuls.items()},
                                   rows=[asdict(r) for r in result.rows]))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb."""
    p = sub.add_parser("bench", help="images/s of convzoo beside plain PyTorch, timm, OpenVINO and Keras, in one run")
    p.add_argument("models", nargs="*", type=model_name, default=["xception"])
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--input-size", type=image_side, nargs=2, metavar=("H", "W"))
    p.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    p.add_argument("--runtime", help=f"comma-separated, from {', '.join(BENCH_RUNTIMES)} (default on the CPU: "
                                     "eager,optimized,onnxruntime,openvino; on CUDA: eager,optimized)")
    p.add_argument("--precision", help=f"comma-separated, from {', '.join(PRECISIONS)}: each runtime runs those it "
                                       "can (default: fp32, bf16 where it pays, int8 on the CPU)")
    p.add_argument("--against", help=f"comma-separated, from {', '.join(REFERENCES)} ('' for none; default on the "
                                     "CPU: timm,openvino,keras; on CUDA: timm)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: cuda where available")
    p.add_argument("--warmup", type=non_negative_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed steps per row (per round)")
    p.add_argument("--rounds", type=positive_int, default=1,
                   help="above 1: interleave the rows of each model and mode over this many rounds (shared machines)")
    p.add_argument("--threads", type=positive_int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", type=output_file(".json", what="the results"), metavar="FILE.json",
                   help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench)
