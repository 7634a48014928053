"""Inference below float32 on the CPU: bf16 autocast, ONNX Runtime int8, and OpenVINO fp32 / bf16 / int8,
each called like the model, plus the accuracy guard that checks a lower precision against fp32.

:mod:`.runtimes` builds the runtimes from a convzoo model (BatchNorm folded, exported to ONNX for ONNX
Runtime and OpenVINO; int8 by post-training quantization on calibration batches); :mod:`.guard` compares
a candidate with the fp32 model on labelled batches. Calibration batches from image files come from
:func:`convzoo.data.calibration.calibration_images` (data layer); from a run's training data, from
:func:`.runtimes.calibration_set` over its loader.
"""

from .guard import GUARD_MAX_DROP, GUARD_MIN_AGREEMENT, AccuracyGuardError, GuardResult, compare_predictors
from .runtimes import (CALIBRATION_IMAGES, PRECISIONS, RUNTIME_PRECISIONS, OnnxRuntimeModel, OpenVinoModel,
                       TorchModel, calibration_set, export_folded_onnx, lowp_model)

__all__ = ["CALIBRATION_IMAGES", "GUARD_MAX_DROP", "GUARD_MIN_AGREEMENT", "PRECISIONS", "RUNTIME_PRECISIONS",
           "AccuracyGuardError", "GuardResult", "OnnxRuntimeModel", "OpenVinoModel", "TorchModel",
           "calibration_set", "compare_predictors", "export_folded_onnx", "lowp_model"]
