"""``convzoo bench``: images per second of convzoo beside its references, in the same process and run.

convzoo rows are every runtime asked for in every precision asked for that it runs (``convzoo <runtime>
<precision>``):

- ``eager`` (NCHW), ``channels_last`` (model and input) and ``compile`` (:func:`torch.compile`; on CUDA mode
  'reduce-overhead', CUDA graphs) in fp32 or bf16: bf16 autocast for a training step (as the trainer runs),
  for inference ``compile`` compiles the model ``optimize_for_inference`` gives (BatchNorm folded,
  channels-last, weights in the precision);
- ``optimized`` (inference): PyTorch as ``predict`` runs it, :class:`convzoo.runtime.TorchModel` (BatchNorm
  folded, channels-last, fp32 or weights cast to bf16);
- ``onnxruntime`` (fp32, int8) and ``openvino`` (fp32, bf16, int8) (inference, CPU): convzoo's BatchNorm-folded
  ONNX export, exported once per model, run as :func:`convzoo.runtime.inference_model` runs it; int8 is
  calibrated on two batches of random inputs (this measures speed only: the ranges do not change the cost).

The references: ``plain`` (the same convzoo network run the plain way: NCHW, eager, fp32; on CUDA also in
bf16 channels-last, plain and compiled), ``timm`` (NCHW and channels-last fp32, and bf16 autocast
channels-last when the run has bf16 rows; on CUDA also compiled), ``openvino`` (timm's network exported to
ONNX and run by OpenVINO, bf16 when the run has bf16 rows, else fp32: what a user who wants fast CPU
inference would run) and Keras 3 (torch backend, CPU). A model's references are the same network in timm
and Keras as its registered configuration names them (``timm_name``, ``keras_app``; conventions such as
BatchNorm epsilon may differ).

Each configuration runs ``warmup`` steps, then ``repeats`` timed steps (on CUDA synchronised before and
after each step); the table gives the median step time and its spread (min-max), images per second,
multiply-accumulates per image, achieved GFLOP/s (2 FLOP per MAC; a training step counts 3x the forward
pass) and that as a fraction of the ceiling: a dense matrix multiply in the row's precision measured on the
same device in the same run (on the CPU 2048^3 in fp32, bf16, or int8 with int32 sums; on CUDA bf16 8192^3
for every row, as cuDNN runs fp32 convolutions on tensor cores in TF32). A convzoo row's ratios are its
images/s over the fastest reference row and over each anchor row of issue 16 (:data:`ANCHORS`) of the same
model and mode.

With ``rounds`` = 1, every reference row is measured first, in the process's default state; then the
convzoo rows in the state the trainer sets up: on the CPU glibc's allocator tuned to keep freed memory
(:func:`convzoo.optimize.tune_cpu_allocator`), on CUDA cuDNN's autotuner on. With ``rounds`` > 1 (for a
shared or busy machine) every row runs in the trainer's state and the rows of each (model, mode), with the
matrix multiplies that are their ceilings, are interleaved: each round times ``repeats`` steps of every
row, in reverse order every other round, so a change in the machine's load falls on all rows and their
ceilings alike; the table is over all rounds' steps.

A training step is SGD with momentum, fused on CUDA as in the trainer; the fp32 references use PyTorch's
default SGD, the bf16 references the fused one.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch import nn

from .errors import ConfigError
from .factory import create_model
from .models.base import logits_of
from .optimize import optimize_for_inference, tune_cpu_allocator
from .registry import get_model_cfg
from .runtime import (OnnxRuntimeModel, OpenVinoModel, TorchModel, autocast, bf16_pays, export_folded_onnx,
                      require_runtime, resolve_device)
from .summary import count_macs
from .utils.tables import markdown_table

_logger = logging.getLogger(__name__)

BENCH_PRECISIONS = {"eager": ("fp32", "bf16"), "channels_last": ("fp32", "bf16"), "optimized": ("fp32", "bf16"),
                    "compile": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"),
                    "openvino": ("fp32", "bf16", "int8")}
BENCH_RUNTIMES = tuple(BENCH_PRECISIONS)
INFERENCE_ONLY = ("optimized", "onnxruntime", "openvino")
CPU_ONLY = ("onnxruntime", "openvino")
REFERENCES = ("plain", "timm", "openvino", "keras")
# Issue 16's anchors: what a user of timm, or of OpenVINO on timm's network, gets in bf16 on a CPU.
ANCHORS = ("timm bf16 channels_last", "OpenVINO bf16 on timm")
COMPILE_MODE = {"cpu": "default", "cuda": "reduce-overhead"}
_MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}

Step = Callable[[], object]


class Variant(NamedTuple):
    """One way of running a reference (its row is named ``<reference> <suffix>``)."""

    suffix: str
    channels_last: bool
    bf16: bool
    compiled: bool


# The configurations a user of timm tries, per device (on the CPU the bf16 one where the run has bf16
# rows); the plain network gets the same ones on CUDA, where its best figure is what the trainer has to beat.
TIMM_VARIANTS = {
    "cpu": (Variant("NCHW", False, False, False), Variant("channels_last", True, False, False),
            Variant("bf16 channels_last", True, True, False)),
    "cuda": (Variant("NCHW", False, False, False), Variant("bf16 channels_last", True, True, False),
             Variant("bf16 channels_last compiled", True, True, True)),
}
PLAIN_VARIANTS = {"cpu": TIMM_VARIANTS["cpu"][:1], "cuda": TIMM_VARIANTS["cuda"]}


@dataclass
class Row:
    """One measured configuration; ``ceiling`` names the matrix multiply ``frac_matmul`` is a fraction of and
    ``ceiling_gflops`` is its rate; ``ratio`` is over the fastest reference and ``vs`` over each anchor present
    (convzoo rows only)."""

    model: str
    impl: str
    mode: str
    precision: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    img_per_s: float
    gmac_per_img: float
    gflops: float
    frac_matmul: float
    ceiling: str
    ceiling_gflops: float
    ratio: float | None = None
    vs: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Matmul:
    """The measured rate of a dense n x n x n matrix multiply (GFLOP/s; GOP/s for int8)."""

    gflops: float
    dtype: str
    n: int

    @property
    def label(self) -> str:
        """E.g. 'fp32 matmul 2048^3'."""
        return f"{self.dtype} matmul {self.n}^3"


@dataclass
class BenchResult:
    """What :func:`run_bench` measured, and where: the ceilings by precision measured at the start of the run,
    and the rows (with ``rounds`` > 1 each row's ceiling is measured in its own rounds instead)."""

    device: str
    matmuls: dict[str, Matmul]
    rows: list[Row]


@dataclass(frozen=True)
class _Job:
    model: str
    mode: str
    impl: str
    precision: str
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


def _matmul(device: torch.device, precision: str) -> tuple[Step, Callable[[float], Matmul]]:
    """A dense matrix multiply step in ``precision`` on ``device`` (see :func:`matmul_gflops`), and the
    :class:`Matmul` of a median step time in seconds."""
    if precision not in _MATMUL_DTYPES:
        raise ConfigError(f"precision must be one of {', '.join(_MATMUL_DTYPES)}, got {precision!r}")
    if device.type == "cuda":
        n, precision = 8192, "bf16"
    else:
        n = 2048
    dtype = _MATMUL_DTYPES[precision]
    if dtype == torch.int8:
        a, b = (torch.randint(-128, 128, (n, n), device=device, dtype=dtype) for _ in range(2))
        op = torch._int_mm
    else:
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        op = torch.mm
    return (lambda: op(a, b)), (lambda seconds: Matmul(2 * n**3 / seconds / 1e9, precision, n))


def matmul_gflops(device: torch.device, precision: str = "fp32", repeats: int = 5) -> Matmul:
    """Measured rate of a dense matrix multiply (median of ``repeats``, GFLOP/s; for int8 GOP/s, int8 inputs
    and int32 sums by ``torch._int_mm``): on the CPU 2048^3 in ``precision`` ('fp32', 'bf16' or 'int8'), on
    CUDA bf16 8192^3 whatever the precision. Raises :class:`ConfigError` for another precision."""
    step, rate = _matmul(device, precision)
    return rate(statistics.median(_time(step, 2, repeats, _synchronizer(device))))


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


def _calibration(x: torch.Tensor) -> list[torch.Tensor]:
    """Two batches of random inputs shaped like ``x``: int8 ranges for a speed measurement only."""
    return [torch.randn(x.shape) for _ in range(2)]


class _Exports:
    """ONNX exports of the run, each made once, in a folder removed when the run ends: convzoo's models
    (BatchNorm folded) and timm's networks (as they are)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: dict[tuple[str, str], Path] = {}

    def convzoo(self, name: str, x: torch.Tensor) -> Path:
        if (name, "convzoo") not in self.paths:
            self.paths[name, "convzoo"] = export_folded_onnx(_convzoo_model(name, x).cpu(),
                                                             self.folder / f"{name}.onnx")
        return self.paths[name, "convzoo"]

    def timm(self, name: str, x: torch.Tensor) -> Path:
        if (name, "timm") not in self.paths:
            path = self.folder / f"{name}.timm.onnx"
            batch = torch.export.Dim("batch", min=1, max=4096)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(_timm_model(name, x).cpu().eval(), (x[:2].cpu(),), dynamo=True, verbose=False,
                                  dynamic_shapes=({0: batch},)).save(str(path))
            self.paths[name, "timm"] = path
        return self.paths[name, "timm"]


def _convzoo_infer_step(name: str, runtime: str, precision: str, x: torch.Tensor, exports: _Exports) -> Step:
    if runtime in CPU_ONLY:
        build = OnnxRuntimeModel if runtime == "onnxruntime" else OpenVinoModel
        calibration = _calibration(x) if precision == "int8" else None
        return _infer_step(build(exports.convzoo(name, x), precision, calibration), x)
    model, bf16 = _convzoo_model(name, x), precision == "bf16"
    if runtime == "optimized":
        return _infer_step(TorchModel(model, precision), x)
    if runtime == "compile":
        dtype = torch.bfloat16 if bf16 else torch.float32
        fast = _compiled(optimize_for_inference(model, dtype=dtype), x.device)
        return _infer_step(fast, x.to(dtype).contiguous(memory_format=torch.channels_last))
    if runtime == "channels_last":
        model, x = _channels_last(model, x)
    return _infer_step(model.eval(), x, bf16)


def _convzoo_train_step(name: str, runtime: str, precision: str, x: torch.Tensor) -> Step:
    model, cuda = _convzoo_model(name, x), x.device.type == "cuda"
    if runtime != "eager":
        model, x = _channels_last(model, x)
    net = _compiled(model.train(), x.device) if runtime == "compile" else model.train()
    return _train_step(net, x, model.num_classes, precision == "bf16", fused=cuda)


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


def _check_choices(runtimes: tuple[str, ...], precisions: tuple[str, ...], against: tuple[str, ...],
                   device: torch.device) -> None:
    """Raise :class:`ConfigError` for a choice the run cannot make, :class:`MissingDependencyError` for a
    runtime asked for that is not installed, before anything is measured."""
    for r in runtimes:
        if r not in BENCH_RUNTIMES:
            raise ConfigError(f"runtime must be one of {', '.join(BENCH_RUNTIMES)}, got {r!r}")
        if device.type != "cpu" and r in CPU_ONLY:
            raise ConfigError(f"runtime {r!r} runs on the CPU only (--device cpu), got device {device.type}")
    for p in precisions:
        if p not in _MATMUL_DTYPES:
            raise ConfigError(f"precision must be one of {', '.join(_MATMUL_DTYPES)}, got {p!r}")
        if not any(p in BENCH_PRECISIONS[r] for r in runtimes):
            raise ConfigError(f"precision {p!r}: none of the runtimes {', '.join(runtimes)} runs it")
    for a in against:
        if a not in REFERENCES:
            raise ConfigError(f"--against takes {', '.join(REFERENCES)}, got {a!r}")
    if device.type != "cpu" and "openvino" in against:
        raise ConfigError(f"the openvino reference runs on the CPU only (--device cpu), got device {device.type}")
    needed = [(r, p) for r in CPU_ONLY if r in runtimes for p in precisions if p in BENCH_PRECISIONS[r]]
    for r, p in needed + ([("openvino", "fp32")] if "openvino" in against else []):
        require_runtime(r, p)


def default_choices(device: torch.device) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The runtimes, precisions and references a run on ``device`` measures when not told: on the CPU
    eager, optimized, ONNX Runtime and OpenVINO in fp32, int8 and (where it pays,
    :func:`convzoo.runtime.bf16_pays`) bf16, against timm, OpenVINO on timm's network and Keras; on CUDA
    eager and optimized in fp32 and (where it pays) bf16, against timm."""
    bf16 = ("bf16",) if bf16_pays(device) else ()
    if device.type == "cpu":
        return ("eager", "optimized", "onnxruntime", "openvino"), ("fp32", *bf16, "int8"), ("timm", "openvino", "keras")
    return ("eager", "optimized"), ("fp32", *bf16), ("timm",)


def _jobs(name: str, mode: str, x: torch.Tensor, macs: int, runtimes: tuple[str, ...], precisions: tuple[str, ...],
          against: tuple[str, ...], exports: _Exports) -> list[_Job]:
    """The configurations of one (model, mode) in table order: convzoo rows, then the references."""
    batch, cfg, dev = x.shape[0], get_model_cfg(name), x.device.type
    bf16 = "bf16" in precisions

    def job(impl: str, precision: str, make: Callable[[], Step], reference: bool = True) -> _Job:
        return _Job(name, mode, impl, precision, reference, batch, macs, make)

    def convzoo(r: str, p: str) -> Step:
        return _convzoo_train_step(name, r, p, x) if mode == "train" else _convzoo_infer_step(name, r, p, x, exports)

    jobs = [job(f"convzoo {r} {p}", p, lambda r=r, p=p: convzoo(r, p), reference=False)
            for r in runtimes if not (mode == "train" and r in INFERENCE_ONLY)
            for p in precisions if p in BENCH_PRECISIONS[r]]
    if "plain" in against:
        jobs += [job(f"plain PyTorch {v.suffix}", "bf16" if v.bf16 else "fp32",
                     lambda v=v: _reference_step(_convzoo_model(name, x), v, mode, x))
                 for v in PLAIN_VARIANTS[dev]]
    if "timm" in against and cfg.timm_name:
        jobs += [job(f"timm {v.suffix}", "bf16" if v.bf16 else "fp32",
                     lambda v=v: _reference_step(_timm_model(name, x), v, mode, x))
                 for v in TIMM_VARIANTS[dev] if bf16 or not v.bf16 or dev == "cuda"]
    if "openvino" in against and cfg.timm_name and mode == "infer":
        p = "bf16" if bf16 else "fp32"
        jobs.append(job(f"OpenVINO {p} on timm", p, lambda: _infer_step(OpenVinoModel(exports.timm(name, x), p), x)))
    if "keras" in against and cfg.keras_app and mode == "infer":
        jobs.append(job("keras (torch backend)", "fp32", lambda: _keras_step(name, x)))
    return jobs


def _row(job: _Job, times: list[float], matmuls: dict[str, Matmul]) -> Row:
    med = statistics.median(times)
    ceiling = matmuls[job.precision]
    flops = 2 * job.macs * job.batch * (3 if job.mode == "train" else 1) / med / 1e9
    return Row(job.model, job.impl, job.mode, job.precision, job.batch, med * 1e3, min(times) * 1e3,
               max(times) * 1e3, job.batch / med, job.macs / 1e9, flops, flops / ceiling.gflops, ceiling.label,
               ceiling.gflops)


def _trainer_process_state(device: torch.device) -> str:
    """Set the process up as the trainer does (permanently); returns what was done, for the log."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        return "cuDNN autotuner on"
    return "glibc allocator tuned" if tune_cpu_allocator() else "allocator left as is (not glibc)"


def _set_ratios(rows: list[Row]) -> None:
    best: dict[tuple[str, str], float] = {}
    anchors: dict[tuple[str, str], dict[str, float]] = {}
    for r in rows:
        if not r.impl.startswith("convzoo"):
            best[r.model, r.mode] = max(best.get((r.model, r.mode), 0.0), r.img_per_s)
            if r.impl in ANCHORS:
                anchors.setdefault((r.model, r.mode), {})[r.impl] = r.img_per_s
    for r in rows:
        if r.impl.startswith("convzoo") and (r.model, r.mode) in best:
            r.ratio = r.img_per_s / best[r.model, r.mode]
            r.vs = {a: r.img_per_s / rate for a, rate in anchors.get((r.model, r.mode), {}).items()}


def _measure_in_turn(jobs: list[_Job], warmup: int, repeats: int, matmuls: dict[str, Matmul],
                     device: torch.device, say: Callable[[str], None]) -> list[Row]:
    """Every reference row first in the process's default state, then every convzoo row in the trainer's."""
    measured: dict[int, Row] = {}
    for reference in (True, False):
        if not reference:
            say(f"convzoo rows in the trainer's process state: {_trainer_process_state(device)}")
        for i, job in enumerate(jobs):
            if job.reference == reference:
                measured[i] = _row(job, _time(job.make(), warmup, repeats, _synchronizer(device)), matmuls)
                say(f"  {job.model} {job.mode} {job.impl}: {measured[i].img_per_s:.2f} img/s")
    return [measured[i] for i in range(len(jobs))]


def _interleave(jobs: list[_Job], warmup: int, repeats: int, rounds: int,
                matmuls: dict[str, tuple[Step, Callable[[float], Matmul]]], device: torch.device
                ) -> tuple[list[Row], dict[str, Matmul]]:
    """The rows of ``jobs`` (one model and mode) and the ceilings ``matmuls`` measured in interleaved rounds;
    the steps (models, sessions) are built here and freed on return."""
    sync = _synchronizer(device)
    steps = [j.make() for j in jobs] + [step for step, _ in matmuls.values()]
    times: list[list[float]] = [_time(step, warmup, 0, sync) for step in steps]
    for r in range(rounds):
        for i in (range(len(steps)) if r % 2 == 0 else reversed(range(len(steps)))):
            times[i] += _time(steps[i], 0, repeats, sync)
    ceilings = {p: rate(statistics.median(t)) for (p, (_, rate)), t in zip(matmuls.items(), times[len(jobs):])}
    return [_row(j, t, ceilings) for j, t in zip(jobs, times)], ceilings


def _measure_interleaved(jobs: list[_Job], warmup: int, repeats: int, rounds: int, precisions: tuple[str, ...],
                         device: torch.device, say: Callable[[str], None]) -> list[Row]:
    """Every row in the trainer's process state; the rows of each (model, mode) and the matrix multiplies of
    their precisions (their ceilings) built, warmed up, then timed ``repeats`` steps each per round, in
    reverse order every other round."""
    say(f"all rows in the trainer's process state: {_trainer_process_state(device)}; "
        f"{rounds} interleaved rounds per model and mode, each with its matmul ceilings")
    matmuls = {p: _matmul(device, p) for p in precisions}
    rows = []
    for group in dict.fromkeys((j.model, j.mode) for j in jobs):
        group_rows, ceilings = _interleave([j for j in jobs if (j.model, j.mode) == group], warmup, repeats, rounds,
                                           matmuls, device)
        say(f"  {group[0]} {group[1]}: {rounds} rounds, load average {os.getloadavg()[0]:.1f}; "
            + "; ".join(f"{m.label}: {m.gflops:.1f}" for m in ceilings.values()))
        rows += group_rows
    return rows


def run_bench(models: list[str], *, batch_size: int = 8, input_size: tuple[int, int] | None = None,
              modes: tuple[str, ...] = ("infer",), runtimes: tuple[str, ...] | None = None,
              precisions: tuple[str, ...] | None = None, against: tuple[str, ...] | None = None,
              device: str = "auto", warmup: int = 2, repeats: int = 5, rounds: int = 1,
              log: Callable[[str], None] | None = None) -> BenchResult:
    """Measure every (model, implementation, mode), as the module docstring says; rows come back grouped per
    (model, mode), convzoo rows first. ``runtimes``, ``precisions`` and ``against`` left at None take
    :func:`default_choices` (where OpenVINO is not installed, the defaults leave it out and log that).

    ``log`` receives one line per event (default: this module's logger, at INFO). Raises
    :class:`ConfigError` for an unknown runtime, precision or reference, a precision none of the runtimes
    runs, a CPU-only runtime or reference on CUDA, or ``rounds`` below 1; the runtimes raise
    :class:`MissingDependencyError` for a runtime asked for that is not installed.
    """
    say = log or _logger.info
    dev = resolve_device(device)
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")
    runtimes, precisions, against = _choices(dev, runtimes, precisions, against, say)
    _check_choices(runtimes, precisions, against, dev)
    if dev.type == "cuda" and "keras" in against:
        say("keras reference skipped: it runs on the CPU only")
        against = tuple(a for a in against if a != "keras")
    name = device_name(dev)
    matmuls = {p: matmul_gflops(dev, p) for p in dict.fromkeys(("fp32", *precisions))}
    say("; ".join(f"{m.label}: {m.gflops:.1f} GFLOP/s" for m in matmuls.values()) + f" on {name}")
    with tempfile.TemporaryDirectory() as folder:
        exports = _Exports(Path(folder))
        jobs: list[_Job] = []
        for model in models:
            size = tuple(input_size or get_model_cfg(model).input_size[1:])
            macs = count_macs(create_model(model, input_size=size), (3, *size))
            x = torch.randn(batch_size, 3, *size, device=dev)
            for mode in modes:
                jobs += _jobs(model, mode, x, macs, runtimes, precisions, against, exports)
        if rounds == 1:
            rows = _measure_in_turn(jobs, warmup, repeats, matmuls, dev, say)
        else:
            rows = _measure_interleaved(jobs, warmup, repeats, rounds, tuple(matmuls), dev, say)
    _set_ratios(rows)
    return BenchResult(name, matmuls, rows)


def _choices(device: torch.device, runtimes: tuple[str, ...] | None, precisions: tuple[str, ...] | None,
             against: tuple[str, ...] | None, say: Callable[[str], None]
             ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The choices given, the defaults for those left at None; OpenVINO left out of the defaults (logged)
    where it is not installed."""
    default_runtimes, default_precisions, default_against = default_choices(device)
    if importlib.util.find_spec("openvino") is None and "openvino" in default_runtimes + default_against:
        say("OpenVINO rows left out: openvino is not installed (pip install 'convzoo[openvino]')")
        default_runtimes = tuple(r for r in default_runtimes if r != "openvino")
        default_against = tuple(a for a in default_against if a != "openvino")
    return (default_runtimes if runtimes is None else runtimes,
            default_precisions if precisions is None else precisions, default_against if against is None else against)


def results_table(rows: list[Row]) -> str:
    """The rows as a markdown table, with a ratio column for each anchor some row is compared with."""
    anchors = [a for a in ANCHORS if any(a in r.vs for r in rows)]
    header = ("model", "implementation", "mode", "batch", "median ms (min-max)", "img/s", "GMAC/img", "GFLOP/s",
              "% of matmul (ceiling)", "vs best reference", *(f"vs {a}" for a in anchors))
    cells = [(r.model, r.impl, r.mode, r.batch, f"{r.median_ms:.0f} ({r.min_ms:.0f}-{r.max_ms:.0f})",
              f"{r.img_per_s:.2f}", f"{r.gmac_per_img:.2f}", f"{r.gflops:.1f}",
              f"{100 * r.frac_matmul:.0f}% ({r.ceiling})", f"{r.ratio:.2f}x" if r.ratio is not None else "",
              *(f"{r.vs[a]:.2f}x" if a in r.vs else "" for a in anchors)) for r in rows]
    return markdown_table(header, cells)
