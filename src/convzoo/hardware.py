"""What the processor offers for low-precision arithmetic, and whether bfloat16 pays on a device.

One place for the CPU's vendor, model and instruction-set flags (Linux ``/proc/cpuinfo``; elsewhere the
flags torch's cpuinfo library detects), torch's and oneDNN's view of the same CPU, and the rule
:func:`bf16_pays` that the trainer, ``predict``, ``eval`` and ``bench`` follow.

The bf16 rule on a CPU, from issue 16's measurements (bf16 autocast against fp32, interleaved runs on 2
shared cores): AMX-BF16 (Intel Xeon Sapphire Rapids and later: bf16 matmul 6.6x fp32, Xception@299
inference 2.7x) and AVX512-BF16 without AMX (AMD EPYC Zen 5: bf16 matmul 3.3x, Xception@299 inference
1.9-3.6x, a training step 2.0x) both pay. Without either (emulated on that EPYC by capping oneDNN's ISA)
bf16 costs: 0.88x fp32 with AVX-512 and no BF16, 0.15x with AVX2 only, as oneDNN converts to fp32 or
falls back to reference kernels.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from .errors import ConvzooWarning

# The flags that decide low-precision speed, by their /proc/cpuinfo names.
FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "amx_fp16", "avx512f", "avx512_bf16", "avx512_vnni",
         "avx512_fp16", "avx_vnni", "avx2")
# Native bf16 arithmetic, fastest first: AMX tiles, then AVX-512 dot products (VDPBF16PS).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
# Native int8 dot products, fastest first.
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
# torch.cpu's probes (private, present in torch >= 2.3) for the flags above, used where /proc/cpuinfo is not.
_TORCH_PROBES = {"amx_tile": "_is_amx_tile_supported", "amx_fp16": "_is_amx_fp16_supported",
                 "avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
                 "avx512_vnni": "_is_vnni_supported", "avx2": "_is_avx2_supported"}
_ISA_LINE = re.compile(r"onednn_verbose,(?:v\d+,)?info,cpu,isa:(.*)")
# A convolution big enough that torch runs it through oneDNN, in a fresh process whose oneDNN prints its ISA.
_ISA_PROBE = ("import torch; torch.nn.functional.conv2d(torch.zeros(8, 32, 32, 32), torch.zeros(32, 32, 3, 3))")


@dataclass(frozen=True)
class CpuInfo:
    """The CPU: ``vendor`` and ``model`` as the OS names them, ``logical_cpus`` (all of the machine's),
    ``flags`` (those of :data:`FLAGS` the CPU has) and ``source`` (where the flags were read)."""

    vendor: str
    model: str
    logical_cpus: int
    flags: frozenset[str]
    source: str

    @property
    def bf16_arithmetic(self) -> str | None:
        """The fastest native bf16 instruction set ('amx_bf16' or 'avx512_bf16'), or None."""
        return next((f for f in BF16_FLAGS if f in self.flags), None)

    @property
    def int8_arithmetic(self) -> str | None:
        """The fastest native int8 dot-product instruction set ('amx_int8', 'avx512_vnni', 'avx_vnni'), or None."""
        return next((f for f in INT8_FLAGS if f in self.flags), None)


def parse_cpuinfo(text: str) -> CpuInfo:
    """The :class:`CpuInfo` in the text of Linux's ``/proc/cpuinfo`` (its first processor's fields)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(vendor=fields.get("vendor_id") or fields.get("CPU implementer") or "unknown",
                   model=fields.get("model name") or platform.processor() or "unknown",
                   logical_cpus=os.cpu_count() or 1, flags=frozenset(flags & set(FLAGS)), source="/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU, read once per process: from ``/proc/cpuinfo`` on Linux, else from torch's probes
    (which do not report AMX-BF16 and AMX-INT8 separately: there ``amx_tile`` stands for both)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        pass
    flags = {flag for flag, probe in _TORCH_PROBES.items() if _torch_probe(probe)}
    if "amx_tile" in flags:
        flags |= {"amx_bf16", "amx_int8"}
    return CpuInfo(vendor=platform.machine() or "unknown", model=platform.processor() or "unknown",
                   logical_cpus=os.cpu_count() or 1, flags=frozenset(flags), source="torch.cpu")


def _torch_probe(name: str) -> bool | None:
    """The answer of ``torch.cpu.<name>()``, or None where this torch has no such probe."""
    probe = getattr(torch.cpu, name, None)
    return bool(probe()) if callable(probe) else None


def bf16_verdict(device: torch.device) -> tuple[bool, str]:
    """Whether bfloat16 is the default on ``device``, and why, as a phrase (for ``convzoo info`` and the
    slow-bf16 warning).

    CUDA: where the GPU supports bf16 (``torch.cuda.is_bf16_supported()``). CPU: where it has native bf16
    arithmetic (AMX-BF16 or AVX512-BF16, see the module docstring for the measurements) and torch has
    oneDNN, which runs bf16 convolutions and matmuls. Any other device: no.
    """
    if device.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return True, "the GPU supports bf16"
        return False, "no CUDA device with bf16 support"
    if device.type != "cpu":
        return False, f"convzoo has no bf16 rule for {device.type} devices"
    info = cpu_info()
    if info.bf16_arithmetic is None:
        return False, ("the CPU has no AMX-BF16 or AVX512-BF16 arithmetic, so bf16 is emulated with conversions "
                       "(0.15-0.9x fp32)")
    if not torch.backends.mkldnn.is_available():
        return False, f"the CPU has {info.bf16_arithmetic}, but this torch has no oneDNN to use it"
    return True, f"the CPU has {info.bf16_arithmetic} arithmetic and torch has oneDNN"


def bf16_pays(device: torch.device) -> bool:
    """Whether bfloat16 is the default on ``device`` (:func:`bf16_verdict`): the rule the trainer,
    ``predict``, ``eval`` and ``bench`` follow."""
    return bf16_verdict(device)[0]


def warn_if_bf16_slow(device: torch.device) -> None:
    """Warn (one line, :class:`ConvzooWarning`) when bf16 is asked for on a device where it does not pay; for
    the command-line verbs when bf16 is forced (they print it as a ``convzoo: warning:`` line)."""
    pays, why = bf16_verdict(device)
    if pays:
        return
    where = f"this CPU ({cpu_info().model})" if device.type == "cpu" else str(device)
    warnings.warn(f"bf16 on {where} will be slow: {why}; fp32 is faster here", ConvzooWarning, stacklevel=2)


@functools.lru_cache(maxsize=1)
def onednn_isa() -> str | None:
    """The instruction set oneDNN (inside torch) dispatches to on this CPU, as oneDNN words it (e.g. 'Intel
    AVX-512 with Intel DL Boost and bfloat16 support'); None where torch has no oneDNN or it printed none.

    oneDNN reports its ISA only on its verbose channel, which writes to the process's standard output, so
    this runs one small convolution with ``ONEDNN_VERBOSE=1`` in a child Python process (about 2 s, once
    per process).
    """
    if not torch.backends.mkldnn.is_available():
        return None
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    try:
        out = subprocess.run([sys.executable, "-c", _ISA_PROBE], env=env, capture_output=True, text=True,
                             timeout=120, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = next(filter(None, map(_ISA_LINE.match, out.splitlines())), None)
    return match.group(1).strip() if match else None


def torch_cpu_view() -> dict[str, Any]:
    """What torch detects: its kernels' vector ISA (``torch.backends.cpu.get_cpu_capability()``), its
    cpuinfo probes (None where this torch lacks one), oneDNN's presence and version, and its threads."""
    onednn = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        **{probe.lstrip("_"): _torch_probe(probe) for probe in _TORCH_PROBES.values()},
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "onednn_version": onednn.group(1) if onednn else None,
        "threads": torch.get_num_threads(),
    }


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _openvino_cpu() -> list[str] | None:
    """OpenVINO's view of the CPU (its optimisation capabilities, e.g. ['BF16', 'FP32', 'INT8', ...])."""
    try:
        import openvino
    except ImportError:
        return None
    return list(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def hardware_report(onednn: bool = True) -> dict[str, Any]:
    """Everything above as one JSON-friendly dict, for ``convzoo info``: the CPU and its flags, torch's and
    oneDNN's view (``onednn=False`` skips the 2 s oneDNN probe), OpenVINO's view where it is installed, CUDA,
    whether bf16 pays on each device and why, and the versions of the optional runtimes."""
    info = cpu_info()
    cuda = torch.cuda.is_available()
    return {
        "cpu": {"vendor": info.vendor, "model": info.model, "logical_cpus": info.logical_cpus,
                "flags": sorted(info.flags), "flags_from": info.source, "bf16_arithmetic": info.bf16_arithmetic,
                "int8_arithmetic": info.int8_arithmetic},
        "torch": torch_cpu_view(),
        "onednn_isa": onednn_isa() if onednn else "not probed",
        "openvino_cpu": _openvino_cpu(),
        "cuda": {"available": cuda, "device": torch.cuda.get_device_name() if cuda else None,
                 "bf16_supported": torch.cuda.is_bf16_supported() if cuda else None},
        "bf16_pays": {"cpu": bf16_pays(torch.device("cpu")),
                      "cuda": bf16_pays(torch.device("cuda")) if cuda else None},
        "bf16_why": {"cpu": bf16_verdict(torch.device("cpu"))[1],
                     "cuda": bf16_verdict(torch.device("cuda"))[1] if cuda else None},
        "runtimes": {name: _package_version(name) for name in ("onnxruntime", "openvino", "nncf")},
    }
