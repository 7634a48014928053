"""A convzoo model run below float32: PyTorch with bf16 autocast, ONNX Runtime fp32 / int8, OpenVINO fp32 /
bf16 / int8. Each is called like the model: a float32 (N, C, H, W) tensor, normalised as the model takes
it, in; a float32 tensor of logits (N, classes) out.

ONNX Runtime and OpenVINO read the model's ONNX export with BatchNorm folded
(:func:`export_folded_onnx`). int8 is post-training static quantization calibrated on a few hundred
images (:func:`calibration_set`): ONNX Runtime's ``quantize_static`` (QDQ, int8 weights per output
channel, int8 activations, min-max ranges; the first convolution and the classifier stay float) and
NNCF's ``nncf.quantize`` for OpenVINO (its default 'performance' preset: symmetric int8, per-channel
weights, fast bias correction).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, DataError
from ..export import export_model
from ..hardware import bf16_pays, warn_if_bf16_slow
from ..optimize import fuse_batchnorm, optimize_for_inference
from ..runtime import autocast

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
RUNTIME_PRECISIONS = {"eager": ("fp32", "bf16"), "onnxruntime": ("fp32", "int8"), "openvino": PRECISIONS}
# Images to calibrate int8 on when the caller does not say: "a few hundred" (NNCF's default subset is 300).
CALIBRATION_IMAGES = 300
_OPENVINO_PRECISION = {"fp32": "f32", "bf16": "bf16"}
_INSTALL = {"onnxruntime": "pip install 'convzoo[onnx]'", "openvino": "pip install 'convzoo[openvino]'",
            "nncf": "pip install 'convzoo[openvino]'"}

Predictor = Callable[[torch.Tensor], torch.Tensor]


def _require(package: str, runtime: str) -> ModuleType:
    """The optional ``package``, imported, or :class:`ConfigError` naming the install command."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"the {runtime} runtime needs {package}, which is not installed: "
                          f"{_INSTALL[package]}") from None


def check_precision(runtime: str, precision: str, calibration: Sequence[torch.Tensor] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``runtime`` runs ``precision`` (:data:`RUNTIME_PRECISIONS`) and,
    for int8, ``calibration`` holds images."""
    if runtime not in RUNTIME_PRECISIONS:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIME_PRECISIONS)}, got {runtime!r}")
    if precision not in RUNTIME_PRECISIONS[runtime]:
        raise ConfigError(f"the {runtime} runtime runs precision {' | '.join(RUNTIME_PRECISIONS[runtime])}, "
                          f"got {precision!r}")
    if precision == "int8" and not calibration:
        raise ConfigError("--precision int8 needs calibration images (a folder or files of a few hundred images, "
                          "or a run's training data): none were given")


def calibration_set(batches: Iterable[torch.Tensor | Sequence[torch.Tensor]],
                    limit: int = CALIBRATION_IMAGES) -> list[torch.Tensor]:
    """The first ``limit`` images of ``batches`` as float32 CPU batches (N, C, H, W), for int8 calibration.

    ``batches`` yields input tensors normalised as the model takes them, or ``(inputs, labels)`` pairs (a
    :class:`convzoo.data.BatchLoader`: a run's training data, loaded with ``train=False``). Raises
    :class:`DataError` when it yields no image or an input that is not 4-D.
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
    """Write a copy of ``model`` in eval mode with BatchNorm folded to ``path`` as ONNX (dynamic batch);
    ``model`` itself is left as it is."""
    return export_model(fuse_batchnorm(copy.deepcopy(model).eval()), path, "onnx")


class TorchModel:
    """``model`` run by PyTorch on its device for inference: BatchNorm folded, channels-last
    (:func:`convzoo.optimize.optimize_for_inference`), in fp32 or under bf16 autocast (fp32 weights);
    logits come back as float32. bf16 where it does not pay (:func:`convzoo.hardware.bf16_pays`) warns."""

    def __init__(self, model: nn.Module, precision: str = "fp32") -> None:
        check_precision("eager", precision)
        self.device = next(model.parameters()).device
        if precision == "bf16":
            warn_if_bf16_slow(self.device)
        self.model = optimize_for_inference(model)
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N, classes) of the batch ``x`` (N, C, H, W)."""
        x = x.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, self.precision == "bf16"):
            return self.model(x).float()


class _OrtCalibrationReader:
    """ONNX Runtime's calibration data reader protocol (``get_next``) over a list of batches."""

    def __init__(self, input_name: str, batches: Sequence[torch.Tensor]) -> None:
        self.feeds = iter([{input_name: x.numpy()} for x in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _quantize_onnx(src: Path, dst: Path, calibration: Sequence[torch.Tensor]) -> Path:
    """``src`` quantized statically to int8 by ONNX Runtime, written to ``dst``.

    The first convolution (on the image itself) and the last matmul (the logits) stay in float: both are
    cheap, and on a weakly trained xception_cifar_tiny quantizing them cost 2 points of agreement with fp32.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_name("prepared.onnx")
    quant_pre_process(str(src), str(prepared))
    graph = onnx.load(str(prepared), load_external_data=False).graph
    convs = [node.name for node in graph.node if node.op_type == "Conv"]
    matmuls = [node.name for node in graph.node if node.op_type in ("Gemm", "MatMul")]
    # Min-max calibration keeps only each tensor's min and max per batch, not the activations.
    quantize_static(str(prepared), str(dst), _OrtCalibrationReader(graph.input[0].name, calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                    nodes_to_exclude=convs[:1] + matmuls[-1:])
    return dst


class OnnxRuntimeModel:
    """``model`` (BatchNorm folded, exported to ONNX) run by ONNX Runtime on the CPU, in fp32 or in int8
    (static QDQ quantization calibrated on ``calibration``, batches from :func:`calibration_set`).

    Called like the model: a float32 tensor (N, C, H, W) in, float32 logits (N, classes) out. Raises
    :class:`ConfigError` when onnxruntime is not installed, for a precision other than fp32 and int8, or
    for int8 without calibration images.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32",
                 calibration: Sequence[torch.Tensor] | None = None) -> None:
        ort = _require("onnxruntime", "onnxruntime")
        check_precision("onnxruntime", precision, calibration)
        with tempfile.TemporaryDirectory() as d:
            path = export_folded_onnx(model, Path(d) / "model.onnx")
            if precision == "int8":
                path = _quantize_onnx(path, Path(d) / "model.int8.onnx", calibration)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N, classes) of the batch ``x`` (N, C, H, W)."""
        (logits,) = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})
        return torch.from_numpy(logits)


def _nncf_quantize(nncf: ModuleType, ov_model: Any, calibration: Sequence[torch.Tensor]) -> Any:
    """``ov_model`` quantized to int8 by NNCF on ``calibration``; NNCF's progress bars go to the debug log."""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        quantized = nncf.quantize(ov_model, nncf.Dataset([x.numpy() for x in calibration]),
                                  subset_size=len(calibration))
    log.debug("nncf.quantize: %s", shown.getvalue())
    return quantized


def _openvino_precision(precision: str) -> str:
    """OpenVINO's inference precision for ``precision``: int8 runs its unquantized operations in bf16
    where bf16 pays on this CPU."""
    if precision == "int8":
        return "bf16" if bf16_pays(torch.device("cpu")) else "f32"
    return _OPENVINO_PRECISION[precision]


class OpenVinoModel:
    """``model`` (BatchNorm folded, exported to ONNX) compiled by OpenVINO for the CPU in ``precision``:
    'fp32' and 'bf16' set OpenVINO's ``INFERENCE_PRECISION_HINT`` (f32 / bf16; OpenVINO's own default is
    bf16 on CPUs with bf16 arithmetic, so fp32 is asked for explicitly); 'int8' quantizes with NNCF on
    ``calibration`` and runs what stays unquantized in bf16 where bf16 pays
    (:func:`convzoo.hardware.bf16_pays`; 10% faster than f32 on an EPYC with AVX512-BF16), else in f32.

    Called like the model: a float32 tensor (N, C, H, W) in, float32 logits (N, classes) out. Raises
    :class:`ConfigError` when OpenVINO (or, for int8, NNCF) is not installed, for an unknown precision,
    or for int8 without calibration images; bf16 on a CPU without bf16 arithmetic warns, then runs.
    """

    def __init__(self, model: nn.Module, precision: str = "fp32",
                 calibration: Sequence[torch.Tensor] | None = None) -> None:
        ov = _require("openvino", "openvino")
        check_precision("openvino", precision, calibration)
        nncf = _require("nncf", "openvino") if precision == "int8" else None
        if precision == "bf16":
            warn_if_bf16_slow(torch.device("cpu"))
        core = ov.Core()
        with tempfile.TemporaryDirectory() as d:
            ov_model = core.read_model(str(export_folded_onnx(model, Path(d) / "model.onnx")))
        if precision == "int8":
            ov_model = _nncf_quantize(nncf, ov_model, calibration)
        self.compiled = core.compile_model(ov_model, "CPU", {
            "INFERENCE_PRECISION_HINT": _openvino_precision(precision),
            "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.compiled.create_infer_request()
        self.precision = precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The logits (N, classes) of the batch ``x`` (N, C, H, W)."""
        self.request.infer({0: x.detach().cpu().float().contiguous().numpy()})
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


def lowp_model(model: nn.Module, runtime: str, precision: str,
               calibration: Sequence[torch.Tensor] | None = None) -> Predictor:
    """``model`` run by ``runtime`` ('eager', 'onnxruntime' or 'openvino') in ``precision`` ('fp32', 'bf16',
    'int8'; :data:`RUNTIME_PRECISIONS` says which runtime runs which): a :class:`TorchModel`,
    :class:`OnnxRuntimeModel` or :class:`OpenVinoModel`. Raises :class:`ConfigError` as they do."""
    check_precision(runtime, precision, calibration)
    if runtime == "eager":
        return TorchModel(model, precision)
    if runtime == "onnxruntime":
        return OnnxRuntimeModel(model, precision, calibration)
    return OpenVinoModel(model, precision, calibration)
