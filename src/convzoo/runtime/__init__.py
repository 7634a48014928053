"""Where and how a model runs: the device a ``--device`` choice names, whether bf16 pays there, autocast
(:mod:`.device`); the inference runtimes (PyTorch, ONNX Runtime, OpenVINO) in fp32, bf16 and int8 behind
one chooser, :func:`inference_model` (:mod:`.inference`, with int8 quantization in :mod:`.quantize`); and
the accuracy guard of a lower precision against fp32 (:mod:`.guard`)."""

from ..hardware import warn_if_bf16_slow
from .device import COMPILE_MODES, DEVICES, autocast, bf16_pays, resolve_device
from .guard import GUARD_MAX_DROP, GUARD_MIN_AGREEMENT, GuardCount, GuardResult, compare_predictors
from .inference import (CALIBRATION_IMAGES, PRECISIONS, RUNTIME_PRECISIONS, RUNTIMES, OnnxRuntimeModel,
                        OpenVinoModel, Predictor, TorchModel, calibration_set, check_precision, choose_precision,
                        default_precision, export_folded_onnx, inference_model, require_runtime, runtime_device)

__all__ = ["CALIBRATION_IMAGES", "COMPILE_MODES", "DEVICES", "GUARD_MAX_DROP", "GUARD_MIN_AGREEMENT", "PRECISIONS",
           "RUNTIMES", "RUNTIME_PRECISIONS", "GuardCount", "GuardResult", "OnnxRuntimeModel", "OpenVinoModel",
           "Predictor", "TorchModel", "autocast", "bf16_pays", "calibration_set", "check_precision",
           "choose_precision", "compare_predictors", "default_precision", "export_folded_onnx", "inference_model",
           "require_runtime", "resolve_device", "runtime_device", "warn_if_bf16_slow"]
