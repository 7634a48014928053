"""A convzoo model run for inference: PyTorch (``eager``) in fp32 or bf16, ONNX Runtime in fp32 or int8,
OpenVINO in fp32, bf16 or int8, all chosen by one function, :func:`inference_model`.

Each runtime is called like the model: a float32 (N, C, H, W) tensor, normalised as the model takes it, in;
float32 main logits (N, classes) on the CPU out. ONNX Runtime and OpenVINO read the model's ONNX export
with BatchNorm folded (:func:`export_folded_onnx`) and run on the CPU. int8 is post-training static
quantization (:mod:`.quantize`) calibrated on a few hundred images (:func:`calibration_set`, or
:func:`convzoo.data.calibration.calibration_images` for image files).
"""

from __future__ import annotations

import copy
import importlib
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, DataError, MissingDependencyError
from ..export import export_model
from ..hardware import warn_if_bf16_slow
from ..models.base import logits_of
from ..optimize import fuse_batchnorm, optimize_for_inference
from .device import DEVICES, bf16_pays, resolve_device
from .quantize import nncf_quantize, quantize_onnx

RUNTIMES = ("eager", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
RUNTIME_PRECISIONS = {"eager": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": PRECISIONS}
# Images to calibrate int8 on when the caller does not say: "a few hundred" (NNCF's default subset is 300).
CALIBRATION_IMAGES = 300
_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# The optional packages each runtime needs, those its int8 quantization adds, and where they come from.
_PACKAGES = {"eager": (), "onnxruntime": ("onnxruntime",), "openvino": ("openvino",)}
_INT8_PACKAGES = {"onnxruntime": ("onnx",), "openvino": ("nncf",)}
_INSTALL = {"onnxruntime": "pip install 'convzoo[onnx]'", "onnx": "pip install 'convzoo[onnx]'",
            "openvino": "pip install 'convzoo[openvino]'", "nncf": "pip install 'convzoo[openvino]'"}

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _check_pair(runtime: str, precision: str) -> None:
    if runtime not in RUNTIME_PRECISIONS:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIME_PRECISIONS)}, got {runtime!r}")
    if precision not in RUNTIME_PRECISIONS[runtime]:
        others = [r for r, ps in RUNTIME_PRECISIONS.items() if precision in ps]
        hint = f" ({precision} runs in --runtime {' or '.join(others)})" if others else ""
        raise ConfigError(f"the {runtime} runtime runs precision {' | '.join(RUNTIME_PRECISIONS[runtime])}, "
                          f"got {precision!r}{hint}")


def check_precision(runtime: str, precision: str, calibration: Sequence[torch.Tensor] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``runtime`` runs ``precision`` (:data:`RUNTIME_PRECISIONS`) and,
    for int8, ``calibration`` holds images."""
    _check_pair(runtime, precision)
    if precision == "int8" and not calibration:
        raise ConfigError("--precision int8 needs calibration images (--calibration DIR|GLOB: a few hundred images "
                          "like those it will see, or a run's training data): none were given")


def require_runtime(runtime: str, precision: str) -> list[ModuleType]:
    """The optional packages ``runtime`` needs to run ``precision`` (ONNX Runtime; onnx for its int8;
    OpenVINO; NNCF for its int8), imported, in that order. Raises :class:`ConfigError` as
    :func:`check_precision` and :class:`MissingDependencyError` (one line naming the install command) for a
    package that is not installed."""
    _check_pair(runtime, precision)
    modules = []
    for package in _PACKAGES[runtime] + (_INT8_PACKAGES[runtime] if precision == "int8" else ()):
        try:
            modules.append(importlib.import_module(package))
        except ImportError:
            raise MissingDependencyError(f"the {runtime} runtime needs {package}, which is not installed: "
                                         f"{_INSTALL[package]}") from None
    return modules


def default_precision(runtime: str, device: torch.device) -> str:
    """The precision ``runtime`` runs in when none is asked for: bf16 where the runtime runs it and it pays on
    ``device`` (:func:`convzoo.hardware.bf16_pays`), else fp32 (int8 is never a default: it needs
    calibration images). Raises :class:`ConfigError` for an unknown runtime."""
    _check_pair(runtime, "fp32")
    return "bf16" if "bf16" in RUNTIME_PRECISIONS[runtime] and bf16_pays(device) else "fp32"


def runtime_device(device: str, runtime: str = "eager") -> torch.device:
    """The device ``runtime`` runs on for a ``--device`` choice ('auto', 'cpu' or 'cuda'): the eager runtime
    where :func:`.device.resolve_device` says, ONNX Runtime and OpenVINO on the CPU ('auto' included).
    Raises :class:`ConfigError` for an unknown runtime or device, and for 'cuda' with those two."""
    _check_pair(runtime, "fp32")
    if runtime == "eager":
        return resolve_device(device)
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda":
        raise ConfigError(f"--runtime {runtime} runs on the CPU here: use --runtime eager with --device cuda")
    return torch.device("cpu")


def choose_precision(runtime: str, precision: str | None, device: torch.device, calibrating: bool = False) -> str:
    """The precision a verb runs ``runtime`` in on ``device``: ``precision``, or None for
    :func:`default_precision`; checked before any work is done. Raises :class:`ConfigError` for a precision
    the runtime does not run and for calibration images (``calibrating``) with a precision other than int8,
    and :class:`MissingDependencyError` for a runtime (or its int8 quantizer) that is not installed."""
    precision = default_precision(runtime, device) if precision is None else precision
    require_runtime(runtime, precision)
    if calibrating and precision != "int8":
        raise ConfigError(f"--calibration images calibrate --precision int8; they have no use in {precision}")
    return precision


def calibration_set(batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
                    limit: int = CALIBRATION_IMAGES) -> list[torch.Tensor]:
    """The first ``limit`` images of ``batches`` as float32 CPU batches (N, C, H, W), for int8 calibration.

    ``batches`` yields input tensors normalised as the model takes them, or ``(inputs, labels)`` pairs (a
    :class:`convzoo.data.BatchLoader`: a run's training data, loaded with ``train=False``). Raises
    :class:`ConfigError` for a limit below 1 and :class:`DataError` when ``batches`` yields no image or an
    input that is not 4-D.
    """
    if limit < 1:
        raise ConfigError(f"the calibration limit must be a positive number of images, got {limit}")
    out: list[torch.Tensor] = []
    n = 0
    for item in batches:
        x = item if isinstance(item, torch.Tensor) else item[0]
        if x.dim() != 4:
            raise DataError(f"expected calibration batches (N, C, H, W), found shape {tuple(x.shape)}")
        out.append(x[:limit - n].detach().to("cpu", torch.float32).contiguous())
        n += out[-1].shape[0]
        if n >= limit:
            break
    if n == 0:
        raise DataError("expected calibration images, found none")
    return out


def export_folded_onnx(model: nn.Module, path: str | Path) -> Path:
    """Write a copy of ``model`` in eval mode with BatchNorm folded to ``path`` as ONNX (dynamic batch, main
    logits only); ``model`` itself is left as it is. Raises :class:`convzoo.export.ExportError`."""
    return export_model(fuse_batchnorm(copy.deepcopy(model).eval()), path, "onnx")


def _device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without parameters)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _cpu_batch(x: torch.Tensor) -> Any:
    return x.detach().to("cpu", torch.float32).contiguous().numpy()


class TorchModel:
    """``model`` run by PyTorch for inference on ``device`` (default: where its parameters are): a copy with
    BatchNorm folded and channels-last weights (:func:`convzoo.optimize.optimize_for_inference`), in fp32 or
    in bf16 (``optimize_for_inference(..., dtype=torch.bfloat16)``: weights cast once, input cast per call,
    the same arithmetic as bf16 autocast without its per-call weight casts). bf16 where it does not pay
    (:func:`convzoo.hardware.bf16_pays`) warns one line, then runs. ``model`` is left as it is."""

    def __init__(self, model: nn.Module, precision: str = "fp32", device: torch.device | str | None = None) -> None:
        check_precision("eager", precision)
        self.device = torch.device(device) if device is not None else _device_of(model)
        if precision == "bf16":
            warn_if_bf16_slow(self.device)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = optimize_for_inference(model, dtype=self.dtype).to(self.device)
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The main logits (N, classes) of the batch ``x`` (N, C, H, W), float32 on the CPU."""
        x = x.to(self.device, self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return logits_of(self.model(x)).float().cpu()


class _OnnxFileModel:
    """What the runtimes that read an ONNX file share: building one from a convzoo model's export."""

    runtime = ""

    @classmethod
    def from_model(cls, model: nn.Module, precision: str = "fp32",
                   calibration: Sequence[torch.Tensor] | None = None) -> Any:
        """``model`` (a copy in eval mode, BatchNorm folded, exported to ONNX with a dynamic batch) run by this
        runtime; ``model`` is left as it is. Raises as the constructor, before the export."""
        require_runtime(cls.runtime, precision)
        check_precision(cls.runtime, precision, calibration)
        with tempfile.TemporaryDirectory() as d:
            return cls(export_folded_onnx(model, Path(d) / "model.onnx"), precision, calibration)


class OnnxRuntimeModel(_OnnxFileModel):
    """An ONNX file run by ONNX Runtime on the CPU with torch's thread count, in fp32 or in int8
    (:func:`.quantize.quantize_onnx` on ``calibration``, batches from :func:`calibration_set`); from a convzoo
    model with :meth:`from_model`. Called with a float32 batch (N, C, H, W); float32 logits on the CPU out.

    Raises :class:`MissingDependencyError` when onnxruntime (or, for int8, onnx) is not installed,
    :class:`ConfigError` for a precision other than fp32 and int8 or for int8 without calibration images.
    """

    runtime = "onnxruntime"

    def __init__(self, onnx_path: str | Path, precision: str = "fp32",
                 calibration: Sequence[torch.Tensor] | None = None) -> None:
        ort = require_runtime(self.runtime, precision)[0]
        check_precision(self.runtime, precision, calibration)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        with tempfile.TemporaryDirectory() as d:
            path = quantize_onnx(Path(onnx_path), Path(d) / "model.int8.onnx", calibration) \
                if precision == "int8" else onnx_path
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N, classes) of the batch ``x`` (N, C, H, W), float32 on the CPU."""
        (logits,) = self.session.run(None, {self.input_name: _cpu_batch(x)})
        return torch.from_numpy(logits)


def _openvino_precision(precision: str) -> str:
    """OpenVINO's inference precision hint for ``precision``: int8 runs what stays unquantized in bf16
    where bf16 pays on this CPU (10% faster than f32 on an EPYC with AVX512-BF16), else in f32."""
    if precision == "int8":
        return "bf16" if bf16_pays(torch.device("cpu")) else "f32"
    return _OPENVINO_PRECISION[precision]


class OpenVinoModel(_OnnxFileModel):
    """An ONNX file compiled by OpenVINO for the CPU in ``precision``, with torch's thread count and the
    latency hint; from a convzoo model with :meth:`from_model`. 'fp32' and 'bf16' set OpenVINO's
    ``INFERENCE_PRECISION_HINT`` (f32 / bf16; OpenVINO's own default is bf16 on CPUs with bf16 arithmetic,
    so fp32 is asked for explicitly); 'int8' quantizes with NNCF on ``calibration``
    (:func:`.quantize.nncf_quantize`). Called with a float32 batch (N, C, H, W); float32 logits on the CPU out.

    Raises :class:`MissingDependencyError` when OpenVINO (or, for int8, NNCF) is not installed and
    :class:`ConfigError` for an unknown precision or int8 without calibration images; bf16 on a CPU without
    bf16 arithmetic warns one line, then runs.
    """

    runtime = "openvino"

    def __init__(self, onnx_path: str | Path, precision: str = "fp32",
                 calibration: Sequence[torch.Tensor] | None = None) -> None:
        ov, *nncf = require_runtime(self.runtime, precision)
        check_precision(self.runtime, precision, calibration)
        if precision == "bf16":
            warn_if_bf16_slow(torch.device("cpu"))
        core = ov.Core()
        ov_model = core.read_model(str(onnx_path))
        if precision == "int8":
            ov_model = nncf_quantize(nncf[0], ov_model, calibration)
        self.compiled = core.compile_model(ov_model, "CPU", {
            "INFERENCE_PRECISION_HINT": _openvino_precision(precision),
            "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N, classes) of the batch ``x`` (N, C, H, W), float32 on the CPU."""
        self.request.infer({0: _cpu_batch(x)})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def inference_model(model: nn.Module, runtime: str = "eager", precision: str | None = None,
                    calibration: Sequence[torch.Tensor] | None = None, *,
                    device: torch.device | str | None = None) -> Predictor:
    """``model`` as run by ``runtime`` ('eager': PyTorch on ``device``, default the model's; 'onnxruntime'
    and 'openvino': the CPU) in ``precision`` ('fp32', 'bf16', 'int8'; :data:`RUNTIME_PRECISIONS` says which
    runtime runs which; None: :func:`default_precision`), int8 calibrated on ``calibration`` (float32 batches
    (N, C, H, W) normalised as the model takes them). The one chooser of ``predict`` and ``eval`` (``bench``
    builds the same runtimes, from one export per model).

    Returns a :class:`TorchModel`, :class:`OnnxRuntimeModel` or :class:`OpenVinoModel`: float32 (N, C, H, W)
    in, float32 main logits (N, classes) on the CPU out. Raises :class:`ConfigError` for an unknown runtime or
    precision, a precision the runtime does not run, int8 without calibration, ONNX Runtime or OpenVINO on a
    device other than the CPU, and :class:`MissingDependencyError` for a runtime that is not installed.
    """
    _check_pair(runtime, "fp32")
    dev = torch.device(device) if device is not None else _device_of(model)
    precision = default_precision(runtime, dev) if precision is None else precision
    check_precision(runtime, precision, calibration)
    if runtime == "eager":
        return TorchModel(model, precision, dev)
    if dev.type != "cpu":
        raise ConfigError(f"the {runtime} runtime runs on the CPU, got device {dev}: use --runtime eager there")
    return (OnnxRuntimeModel if runtime == "onnxruntime" else OpenVinoModel).from_model(model, precision, calibration)
