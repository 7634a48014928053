"""``convzoo predict``: top-k classes for photos, as a table or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn
from tqdm import tqdm

from ..data.calibration import calibration_images
from ..data.transforms import ImageTransform
from ..errors import ConfigError
from ..optimize import tune_cpu_allocator
from ..predict import class_labels, decode_predictions, expand_inputs, iter_predictions, resolve_model
from ..preprocess import MODES, choose_preprocessing
from ..runtime import DEVICES, choose_precision, runtime_device
from ..train.calibration import run_calibration, run_data
from ..utils.fileio import read_names
from .common import add_runtime_flags, convzoo_warnings_as_lines, model_name, positive_int, precision_of, warn


def _top(requested: int | None, n_classes: int) -> int:
    """``--top``: as given (at most the class count), by default min(5, classes)."""
    if requested is None:
        return min(5, n_classes)
    if requested > n_classes:
        raise ConfigError(f"--top must lie in [1, {n_classes}] (the model's classes), got {requested}")
    return requested


def _print(paths: list, decoded: list, as_json: bool) -> None:
    for path, preds in zip(paths, decoded):
        if as_json:
            print(json.dumps({"image": str(path), "predictions": [
                {"class_id": c, "label": name, "probability": round(p, 6)} for c, name, p in preds]}))
        else:
            print(path)
            for rank, (c, name, p) in enumerate(preds, 1):
                print(f"  {rank}. {name:<30} {c:<10} {p:.4f}")


def _calibration(args: argparse.Namespace, model: nn.Module, mode: str | None) -> list[torch.Tensor] | None:
    """int8 calibration images, read as the photos are: ``--calibration``'s, else (for a checkpoint of a run)
    the run's training data, else None (which the runtime refuses with a one-line error)."""
    transform = ImageTransform.from_model(model, mode)
    if args.calibration is not None:
        return calibration_images(model, args.calibration, transform=transform)
    spec = run_data(args.weights) if args.weights is not None and not args.weights.startswith("imagenet") else None
    return run_calibration(spec, transform, transform.normalize) if spec is not None else None


def cmd_predict(args: argparse.Namespace) -> int:
    """``convzoo predict``: top-k classes for each image, as a table or JSON lines."""
    device = runtime_device(args.device, args.runtime)
    precision = choose_precision(args.runtime, precision_of(args), device, calibrating=args.calibration is not None)
    if device.type == "cpu":
        tune_cpu_allocator()
    paths = expand_inputs(args.images)
    given = read_names(args.classes, "class names") if args.classes is not None else None
    model, names = resolve_model(args.model, args.weights)
    labels = class_labels(model, given or names)
    top = _top(args.top, model.num_classes)
    # The override only: None keeps the recorded preprocessing, a record's own statistics included.
    mode = args.preprocessing
    _, warning = choose_preprocessing(model, mode)
    if warning:
        warn(warning)
    progress = len(paths) > 4 * args.batch_size and sys.stderr.isatty()
    with convzoo_warnings_as_lines():
        calibration = _calibration(args, model, mode) if precision == "int8" else None
        batches = iter_predictions(model, paths, batch_size=args.batch_size, mode=mode, runtime=args.runtime,
                                   device=device, precision=precision, calibration=calibration)
        probs = torch.cat(list(tqdm(batches, total=-(-len(paths) // args.batch_size), disable=not progress,
                                    unit="batch", file=sys.stderr)))
    _print(paths, decode_predictions(probs, top, labels), args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` verb."""
    p = sub.add_parser("predict", help="top-k classes of a trained classifier for photos")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--model", type=model_name, help="registered model name (not needed with a convzoo checkpoint)")
    p.add_argument("--weights", help="weights file, convzoo checkpoint (file, folder, or a run's best/ or last/), "
                                     "or 'imagenet'; the model gets the file's classifier")
    p.add_argument("--classes", metavar="FILE", help="text file naming the model's classes, one per line "
                                                    "(default: the names the checkpoint records; ImageNet's for "
                                                    "1,000 classes; else the class indices)")
    p.add_argument("--top", type=positive_int, help="classes shown per image (default: 5, at most the model's)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--preprocessing", choices=MODES,
                   help="normalise with this mode instead of the one recorded with the weights (warns)")
    add_runtime_flags(p)
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the eager runtime runs (default: auto, a CUDA GPU when there is one); "
                        "onnxruntime and openvino run on the CPU")
    p.set_defaults(func=cmd_predict)
