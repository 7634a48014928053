"""``convzoo bench``: images per second of convzoo beside timm and Keras, in the same process and run.

Each configuration runs ``warmup`` steps, then ``repeats`` timed steps; the table gives the median step
time and its spread (min-max), images per second, multiply-accumulates per image, achieved GFLOP/s
(2 FLOP per MAC; a training step counts 3x the forward pass) and that as a fraction of a dense fp32
matrix multiply measured on the same device in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from .errors import ConfigError

TIMM_NAMES = {"xception": "legacy_xception", "xception_timm": "legacy_xception", "inception_v3": "inception_v3",
              "inception_v3_keras": "inception_v3", "resnext50_32x4d": "resnext50_32x4d",
              "resnext101_32x4d": "resnext101_32x4d", "resnext101_32x8d": "resnext101_32x8d"}
KERAS_NAMES = {"xception": "Xception", "inception_v3_keras": "InceptionV3", "inception_v3": "InceptionV3",
               "resnet50": "ResNet50", "resnet50v2": "ResNet50V2"}
RUNTIMES = ("eager", "channels_last", "optimized", "compile", "onnxruntime")


@dataclass
class Row:
    """One measured configuration."""

    model: str
    impl: str
    mode: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    img_per_s: float
    gmac_per_img: float
    gflops: float
    frac_matmul: float
    ratio: float | None = None


def _time(step: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return times


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GFLOP/s of an n x n x n matrix multiply (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = _time(lambda: a @ b, 2, repeats)
    return 2 * n**3 / statistics.median(times) / 1e9


def _infer_step(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def step():
        with torch.inference_mode():
            return model(x)
    return step


def _train_step(model: nn.Module, x: torch.Tensor, n_classes: int) -> Callable[[], object]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    y = torch.randint(0, n_classes, (x.shape[0],))
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        loss.backward()
        opt.step()
    return step


def _convzoo_steps(name: str, runtime: str, mode: str, x: torch.Tensor) -> Callable[[], object]:
    from .optimize import optimize_for_inference
    from .registry import create_model

    model = create_model(name, input_size=tuple(x.shape[-2:]))
    n_classes = model.num_classes
    cl = runtime in ("channels_last", "optimized", "compile")
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if mode == "train":
        if runtime in ("optimized", "onnxruntime"):
            raise ConfigError(f"runtime {runtime!r} is for inference only")
        model = model.to(memory_format=torch.channels_last) if cl else model
        return _train_step(torch.compile(model) if runtime == "compile" else model, x, n_classes)
    model.eval()
    if runtime == "onnxruntime":
        return _onnxruntime_step(model, x)
    if runtime in ("optimized", "compile"):
        model = optimize_for_inference(model)
    elif cl:
        model = model.to(memory_format=torch.channels_last)
    return _infer_step(torch.compile(model) if runtime == "compile" else model, x)


def _onnxruntime_step(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    import tempfile

    import onnxruntime as ort

    from .export import export_model
    from .optimize import fuse_batchnorm

    with tempfile.TemporaryDirectory() as d:
        path = export_model(fuse_batchnorm(model), f"{d}/m.onnx", "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.contiguous().numpy()}
    return lambda: session.run(None, feed)


def _timm_steps(name: str, channels_last: bool, mode: str, x: torch.Tensor) -> Callable[[], object]:
    import timm

    model = timm.create_model(TIMM_NAMES[name], pretrained=False)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if mode == "train":
        return _train_step(model, x, model.num_classes)
    return _infer_step(model.eval(), x)


def _keras_step(name: str, x: torch.Tensor) -> Callable[[], object]:
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise ConfigError(f"the Keras reference needs KERAS_BACKEND=torch, found {keras.backend.backend()}")
    model = getattr(keras.applications, KERAS_NAMES[name])(weights=None, input_shape=tuple(x.shape[2:]) + (3,))
    nhwc = x.permute(0, 2, 3, 1).contiguous()

    def step():
        with torch.no_grad():
            return model(nhwc, training=False)
    return step


def run_bench(models: list[str], *, batch_size: int = 8, input_size: tuple[int, int] | None = None,
              modes: tuple[str, ...] = ("infer",), runtimes: tuple[str, ...] = ("eager", "optimized"),
              against: tuple[str, ...] = ("timm", "keras"), warmup: int = 2, repeats: int = 5,
              log: Callable[[str], None] = print) -> tuple[float, list[Row]]:
    """Measure every (model, implementation, mode); returns the matmul GFLOP/s and the rows.

    ``ratio`` on a convzoo row is its images/s over the fastest reference row of the same model and mode.
    """
    from .registry import create_model, get_model_cfg
    from .summary import count_macs

    for r in runtimes:
        if r not in RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {r!r}")
    for a in against:
        if a not in ("timm", "keras"):
            raise ConfigError(f"--against takes timm and/or keras, got {a!r}")
    peak = matmul_gflops()
    log(f"fp32 matmul 2048^3: {peak:.1f} GFLOP/s on {torch.get_num_threads()} threads")
    rows: list[Row] = []
    for name in models:
        cfg = get_model_cfg(name)
        size = tuple(input_size or cfg.input_size[1:])
        macs = count_macs(create_model(name, input_size=size), (3, *size))
        x = torch.randn(batch_size, 3, *size)
        for mode in modes:
            configs: list[tuple[str, Callable[[], Callable[[], object]]]] = [
                (f"convzoo {r}", lambda r=r: _convzoo_steps(name, r, mode, x)) for r in runtimes
                if not (mode == "train" and r in ("optimized", "onnxruntime"))]
            if "timm" in against and name in TIMM_NAMES:
                configs += [("timm NCHW", lambda: _timm_steps(name, False, mode, x)),
                            ("timm channels_last", lambda: _timm_steps(name, True, mode, x))]
            if "keras" in against and name in KERAS_NAMES and mode == "infer":
                configs.append(("keras (torch backend)", lambda: _keras_step(name, x)))
            group = []
            for impl, make in configs:
                times = _time(make(), warmup, repeats)
                med = statistics.median(times)
                flops = 2 * macs * batch_size * (3 if mode == "train" else 1) / med / 1e9
                row = Row(name, impl, mode, batch_size, med * 1e3, min(times) * 1e3, max(times) * 1e3,
                          batch_size / med, macs / 1e9, flops, flops / peak)
                group.append(row)
                log(f"  {name} {mode} {impl}: {row.img_per_s:.2f} img/s")
            refs = [r.img_per_s for r in group if not r.impl.startswith("convzoo")]
            for r in group:
                if r.impl.startswith("convzoo") and refs:
                    r.ratio = r.img_per_s / max(refs)
            rows += group
    return peak, rows


def markdown_table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    head = ("| model | implementation | mode | batch | median ms (min-max) | img/s | GMAC/img | GFLOP/s "
            "| % of matmul | vs best reference |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(f"| {r.model} | {r.impl} | {r.mode} | {r.batch} | {r.median_ms:.0f} ({r.min_ms:.0f}-"
                     f"{r.max_ms:.0f}) | {r.img_per_s:.2f} | {r.gmac_per_img:.2f} | {r.gflops:.1f} | "
                     f"{100 * r.frac_matmul:.0f}% | {ratio} |")
    return "\n".join(lines)


def cmd_bench(args: argparse.Namespace) -> int:
    """``convzoo bench``."""
    import sys

    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ("infer", "train") if args.mode == "both" else (args.mode,)
    peak, rows = run_bench(args.models, batch_size=args.batch_size, input_size=args.input_size, modes=modes,
                           runtimes=tuple(args.runtime.split(",")), against=tuple(filter(None, args.against.split(","))),
                           warmup=args.warmup, repeats=args.repeats, log=lambda s: print(s, file=sys.stderr))
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(matmul_gflops=peak, threads=torch.get_num_threads(), torch=torch.__version__,
                           rows=[asdict(r) for r in rows]), f, indent=1)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``bench`` verb."""
    p = sub.add_parser("bench", help="images/s of convzoo beside timm and Keras, in one run")
    p.add_argument("models", nargs="*", default=["xception"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"))
    p.add_argument("--mode", choices=("infer", "train", "both"), default="infer")
    p.add_argument("--runtime", default="eager,optimized",
                   help=f"comma-separated, from {', '.join(RUNTIMES)}")
    p.add_argument("--against", default="timm,keras", help="comma-separated references ('' for none)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.set_defaults(func=cmd_bench)
