"""``convzoo bench``: images per second of convzoo beside its references, in the same process and run.

The references are ``plain`` (the same convzoo network run the plain way: NCHW, eager, fp32; on CUDA
also in bf16 channels-last, plain and compiled), timm (NCHW and channels-last; on CUDA bf16
channels-last, plain and compiled) and Keras 3 (torch backend, CPU). Every reference row, for every model and mode, is measured first, in the
process's default state; then the convzoo rows are measured in the state the trainer sets up: on the CPU
glibc's allocator tuned to keep freed memory (:func:`convzoo.optimize.tune_cpu_allocator`), on CUDA
cuDNN's autotuner on. The table still lists each (model, mode) together, convzoo rows first.

Each configuration runs ``warmup`` steps, then ``repeats`` timed steps (on CUDA synchronised before and
after each step); the table gives the median step time and its spread (min-max), images per second,
multiply-accumulates per image, achieved GFLOP/s (2 FLOP per MAC; a training step counts 3x the forward
pass) and that as a fraction of a dense matrix multiply measured on the same device in the same run
(fp32 2048^3 on the CPU, bf16 8192^3 on CUDA).

The references of a model are the same network in timm and Keras, as its registered configuration names
them (``timm_name``, ``keras_app``; conventions such as BatchNorm epsilon may differ).

convzoo runtimes: ``eager`` (NCHW, fp32), ``channels_last`` (model and input), ``bf16`` (channels-last
and bfloat16 autocast; fp32 weights), ``optimized`` (inference: BatchNorm folded, channels-last; bf16 on
CUDA), ``compile`` (:func:`torch.compile` of the channels-last model, BatchNorm folded for inference;
on CUDA with bf16 and CUDA graphs, mode 'reduce-overhead') and ``onnxruntime`` (inference, CPU only).
A training step is SGD with momentum, fused on CUDA as in the trainer; the fp32 references use PyTorch's
default SGD, the bf16 references the fused one.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import nn

from .errors import ConfigError
from .factory import create_model
from .models.base import logits_of
from .optimize import optimize_for_inference, tune_cpu_allocator
from .registry import get_model_cfg
from .runtime import OnnxRuntimeModel, autocast, resolve_device
from .summary import count_macs
from .utils.tables import markdown_table

_logger = logging.getLogger(__name__)

BENCH_RUNTIMES = ("eager", "channels_last", "bf16", "optimized", "compile", "onnxruntime")
INFERENCE_ONLY = ("optimized", "onnxruntime")
REFERENCES = ("plain", "timm", "keras")
COMPILE_MODE = {"cpu": "default", "cuda": "reduce-overhead"}

Step = Callable[[], object]


class Variant(NamedTuple):
    """One way of running a reference (its row is named ``<reference> <suffix>``)."""

    suffix: str
    channels_last: bool
    bf16: bool
    compiled: bool


# The configurations a user of timm tries, per device; the plain network gets the same ones on CUDA,
# where its best figure is what convzoo's trainer has to beat.
TIMM_VARIANTS = {
    "cpu": (Variant("NCHW", False, False, False), Variant("channels_last", True, False, False)),
    "cuda": (Variant("NCHW", False, False, False), Variant("bf16 channels_last", True, True, False),
             Variant("bf16 channels_last compiled", True, True, True)),
}
PLAIN_VARIANTS = {"cpu": TIMM_VARIANTS["cpu"][:1], "cuda": TIMM_VARIANTS["cuda"]}


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


@dataclass(frozen=True)
class Matmul:
    """The measured rate of a dense n x n x n matrix multiply."""

    gflops: float
    dtype: str
    n: int

    @property
    def label(self) -> str:
        """E.g. 'fp32 matmul 2048^3'."""
        return f"{self.dtype} matmul {self.n}^3"


@dataclass
class BenchResult:
    """What :func:`run_bench` measured, and where."""

    device: str
    matmul: Matmul
    rows: list[Row]


@dataclass(frozen=True)
class _Job:
    model: str
    mode: str
    impl: str
    reference: bool
    batch: int
    macs: int
    make: Callable[[], Step]


def device_name(device: torch.device) -> str:
    """The GPU's name, or 'cpu (N threads)'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def _synchronizer(device: torch.device) -> Callable[[], None]:
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def _time(step: Step, warmup: int, repeats: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        step()
        sync()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    return times


def matmul_gflops(device: torch.device, repeats: int = 5) -> Matmul:
    """Measured GFLOP/s of a dense matrix multiply (median of ``repeats``): fp32 2048^3 on the CPU,
    bf16 8192^3 on CUDA."""
    n, dtype, name = (8192, torch.bfloat16, "bf16") if device.type == "cuda" else (2048, torch.float32, "fp32")
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    times = _time(lambda: a @ b, 2, repeats, _synchronizer(device))
    return Matmul(2 * n**3 / statistics.median(times) / 1e9, name, n)


def _compiled(model: nn.Module, device: torch.device) -> nn.Module:
    torch.compiler.reset()
    return torch.compile(model, mode=COMPILE_MODE[device.type])


def _infer_step(model: Callable[[torch.Tensor], object], x: torch.Tensor, bf16: bool = False) -> Step:
    def step():
        with torch.inference_mode(), autocast(x.device, bf16):
            return model(x)
    return step


def _train_step(model: nn.Module, x: torch.Tensor, n_classes: int, bf16: bool = False,
                fused: bool = False) -> Step:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=fused or None)
    y = torch.randint(0, n_classes, (x.shape[0],), device=x.device)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, bf16):
            loss = nn.functional.cross_entropy(logits_of(model(x)), y)
        loss.backward()
        opt.step()
    return step


def _channels_last(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    return model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)


def _convzoo_model(name: str, x: torch.Tensor) -> nn.Module:
    return create_model(name, input_size=tuple(x.shape[-2:])).to(x.device)


def _convzoo_step(name: str, runtime: str, mode: str, x: torch.Tensor) -> Step:
    model = _convzoo_model(name, x)
    cuda = x.device.type == "cuda"
    bf16 = runtime == "bf16" or (cuda and runtime in ("optimized", "compile"))
    if runtime == "onnxruntime":
        return _infer_step(OnnxRuntimeModel(model), x)
    if mode == "train":
        if runtime != "eager":
            model, x = _channels_last(model, x)
        net = _compiled(model.train(), x.device) if runtime == "compile" else model.train()
        return _train_step(net, x, model.num_classes, bf16, fused=cuda)
    if runtime in ("optimized", "compile"):
        model, x = optimize_for_inference(model), x.contiguous(memory_format=torch.channels_last)
    elif runtime != "eager":
        model, x = _channels_last(model, x)
    return _infer_step(_compiled(model.eval(), x.device) if runtime == "compile" else model.eval(), x, bf16)


def _reference_step(model: nn.Module, variant: Variant, mode: str, x: torch.Tensor) -> Step:
    """A step of a reference ``model`` run as ``variant`` says; the fused optimizer only with bf16 on CUDA."""
    if variant.channels_last:
        model, x = _channels_last(model, x)
    model.train(mode == "train")
    net = _compiled(model, x.device) if variant.compiled else model
    if mode == "train":
        fused = x.device.type == "cuda" and variant.bf16
        return _train_step(net, x, model.num_classes, variant.bf16, fused)
    return _infer_step(net, x, variant.bf16)


def _timm_model(name: str, x: torch.Tensor) -> nn.Module:
    import timm

    return timm.create_model(get_model_cfg(name).timm_name, pretrained=False).to(x.device)


def _keras_step(name: str, x: torch.Tensor) -> Step:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    if keras.backend.backend() != "torch":
        raise ConfigError(f"the Keras reference needs KERAS_BACKEND=torch, found {keras.backend.backend()}")
    with keras.device("cpu"):
        app = getattr(keras.applications, get_model_cfg(name).keras_app)
        model = app(weights=None, input_shape=tuple(x.shape[2:]) + (3,))
    nhwc = x.permute(0, 2, 3, 1).contiguous()

    def step():
        with torch.no_grad(), keras.device("cpu"):
            return model(nhwc, training=False)
    return step


def _check_choices(runtimes: tuple[str, ...], against: tuple[str, ...], device: torch.device) -> None:
    for r in runtimes:
        if r not in BENCH_RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(BENCH_RUNTIMES)}, got {r!r}")
    for a in against:
        if a not in REFERENCES:
            raise ConfigError(f"--against takes {', '.join(REFERENCES)}, got {a!r}")
    if device.type == "cuda" and "onnxruntime" in runtimes:
        raise ConfigError("runtime 'onnxruntime' runs on the CPU only (--device cpu), got device cuda")


def _jobs(name: str, mode: str, x: torch.Tensor, macs: int, runtimes: tuple[str, ...],
          against: tuple[str, ...]) -> list[_Job]:
    """The configurations of one (model, mode) in table order: convzoo runtimes, then the references."""
    batch = x.shape[0]
    cfg = get_model_cfg(name)

    def job(impl: str, make: Callable[[], Step], reference: bool = True) -> _Job:
        return _Job(name, mode, impl, reference, batch, macs, make)

    jobs = [job(f"convzoo {r}", lambda r=r: _convzoo_step(name, r, mode, x), reference=False)
            for r in runtimes if not (mode == "train" and r in INFERENCE_ONLY)]
    if "plain" in against:
        jobs += [job(f"plain PyTorch {v.suffix}", lambda v=v: _reference_step(_convzoo_model(name, x), v, mode, x))
                 for v in PLAIN_VARIANTS[x.device.type]]
    if "timm" in against and cfg.timm_name:
        jobs += [job(f"timm {v.suffix}", lambda v=v: _reference_step(_timm_model(name, x), v, mode, x))
                 for v in TIMM_VARIANTS[x.device.type]]
    if "keras" in against and cfg.keras_app and mode == "infer":
        jobs.append(job("keras (torch backend)", lambda: _keras_step(name, x)))
    return jobs


def _measure(job: _Job, warmup: int, repeats: int, matmul: Matmul, device: torch.device) -> Row:
    times = _time(job.make(), warmup, repeats, _synchronizer(device))
    med = statistics.median(times)
    flops = 2 * job.macs * job.batch * (3 if job.mode == "train" else 1) / med / 1e9
    return Row(job.model, job.impl, job.mode, job.batch, med * 1e3, min(times) * 1e3, max(times) * 1e3,
               job.batch / med, job.macs / 1e9, flops, flops / matmul.gflops)


def _trainer_process_state(device: torch.device) -> str:
    """Set the process up as the trainer does (permanently); returns what was done, for the log."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return "cuDNN autotuner on"
    return "glibc allocator tuned" if tune_cpu_allocator() else "allocator left as is (not glibc)"


def _set_ratios(rows: list[Row]) -> None:
    best: dict[tuple[str, str], float] = {}
    for r in rows:
        if not r.impl.startswith("convzoo"):
            best[r.model, r.mode] = max(best.get((r.model, r.mode), 0.0), r.img_per_s)
    for r in rows:
        if r.impl.startswith("convzoo") and (r.model, r.mode) in best:
            r.ratio = r.img_per_s / best[r.model, r.mode]


def run_bench(models: list[str], *, batch_size: int = 8, input_size: tuple[int, int] | None = None,
              modes: tuple[str, ...] = ("infer",), runtimes: tuple[str, ...] = ("eager", "optimized"),
              against: tuple[str, ...] = ("timm", "keras"), device: str = "auto", warmup: int = 2,
              repeats: int = 5, log: Callable[[str], None] | None = None) -> BenchResult:
    """Measure every (model, implementation, mode): all reference rows first, then (in the trainer's
    process state) all convzoo rows. Rows come back grouped per (model, mode), convzoo rows first.

    ``ratio`` on a convzoo row is its images/s over the fastest reference row of the same model and mode.
    ``log`` receives one line per event (default: this module's logger, at INFO). Raises
    :class:`ConfigError` for an unknown runtime or reference, and for ONNX Runtime on CUDA.
    """
    say = log or _logger.info
    dev = resolve_device(device)
    _check_choices(runtimes, against, dev)
    if dev.type == "cuda" and "keras" in against:
        say("keras reference skipped: it runs on the CPU only")
        against = tuple(a for a in against if a != "keras")
    matmul = matmul_gflops(dev)
    name = device_name(dev)
    say(f"{matmul.label}: {matmul.gflops:.1f} GFLOP/s on {name}")
    jobs: list[_Job] = []
    for model in models:
        size = tuple(input_size or get_model_cfg(model).input_size[1:])
        macs = count_macs(create_model(model, input_size=size), (3, *size))
        x = torch.randn(batch_size, 3, *size, device=dev)
        for mode in modes:
            jobs += _jobs(model, mode, x, macs, runtimes, against)
    measured: dict[int, Row] = {}
    for reference in (True, False):
        if not reference:
            say(f"convzoo rows in the trainer's process state: {_trainer_process_state(dev)}")
        for i, job in enumerate(jobs):
            if job.reference == reference:
                measured[i] = _measure(job, warmup, repeats, matmul, dev)
                say(f"  {job.model} {job.mode} {job.impl}: {measured[i].img_per_s:.2f} img/s")
    rows = [measured[i] for i in range(len(jobs))]
    _set_ratios(rows)
    return BenchResult(name, matmul, rows)


def results_table(rows: list[Row]) -> str:
    """The rows as a markdown table."""
    header = ("model", "implementation", "mode", "batch", "median ms (min-max)", "img/s", "GMAC/img", "GFLOP/s",
              "% of matmul", "vs best reference")
    cells = [(r.model, r.impl, r.mode, r.batch, f"{r.median_ms:.0f} ({r.min_ms:.0f}-{r.max_ms:.0f})",
              f"{r.img_per_s:.2f}", f"{r.gmac_per_img:.2f}", f"{r.gflops:.1f}", f"{100 * r.frac_matmul:.0f}%",
              f"{r.ratio:.2f}x" if r.ratio is not None else "") for r in rows]
    return markdown_table(header, cells)
