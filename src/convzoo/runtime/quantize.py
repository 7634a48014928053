"""Post-training static int8 quantization of an ONNX export, calibrated on a few hundred images: ONNX
Runtime's ``quantize_static`` and NNCF's ``nncf.quantize`` (for OpenVINO). Both libraries are optional and
imported here only; :mod:`.inference` checks they are installed before it calls in."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)


class _OrtCalibrationReader:
    """ONNX Runtime's calibration data reader protocol (``get_next``) over a list of batches."""

    def __init__(self, input_name: str, batches: Sequence[torch.Tensor]) -> None:
        self.feeds = iter([{input_name: x.numpy()} for x in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def quantize_onnx(src: Path, dst: Path, calibration: Sequence[torch.Tensor]) -> Path:
    """``src`` quantized statically to int8 by ONNX Runtime (QDQ, int8 weights per output channel, int8
    activations, min-max ranges over ``calibration``: float32 CPU batches (N, C, H, W)), written to ``dst``.

    The first convolution (on the image itself) and the last matmul (the logits) stay in float: both are
    cheap, and on a weakly trained xception_cifar_tiny quantizing them cost 2 points of agreement with fp32
    (96.5% instead of 98.6%, issue 16's guard figures).
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


def nncf_quantize(nncf: ModuleType, ov_model: Any, calibration: Sequence[torch.Tensor]) -> Any:
    """The OpenVINO model ``ov_model`` quantized to int8 by ``nncf`` on ``calibration`` (float32 CPU batches
    (N, C, H, W); NNCF's defaults: the 'performance' preset, symmetric int8, per-channel weights, fast bias
    correction). NNCF's progress bars, which it writes to stdout, go to the debug log."""
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        # subset_size counts the dataset's items, here batches.
        quantized = nncf.quantize(ov_model, nncf.Dataset([x.numpy() for x in calibration]),
                                  subset_size=len(calibration))
    log.debug("nncf.quantize: %s", shown.getvalue())
    return quantized
