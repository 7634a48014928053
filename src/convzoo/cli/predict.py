"""``convzoo predict``: top-k classes for photos, as a table or JSON lines."""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from ..errors import ConfigError
from ..optimize import tune_cpu_allocator
from ..predict import decode_predictions, expand_inputs, iter_predictions, resolve_model, runtime_device
from ..preprocess import MODES, choose_preprocessing
from ..runtime import DEVICES, RUNTIMES
from .common import warn


def cmd_predict(args: argparse.Namespace) -> int:
    """``convzoo predict``: top-k classes for each image, as a table or JSON lines."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = runtime_device(args.device, args.runtime)
    if device.type == "cpu":
        tune_cpu_allocator()
    paths = expand_inputs(args.images)
    model, class_names = resolve_model(args.model, args.weights)
    if args.weights is None:
        warn(f"no --weights given, {args.model} is randomly initialised")
    n_classes = model.num_classes
    if not 1 <= args.top <= n_classes:
        raise ConfigError(f"--top must lie in [1, {n_classes}], got {args.top}")
    if class_names is None and n_classes != 1000:
        class_names = [str(i) for i in range(n_classes)]
    mode, warning = choose_preprocessing(model, args.preprocessing)
    if warning:
        warn(warning)
    batches = iter_predictions(model, paths, batch_size=args.batch_size, mode=mode, runtime=args.runtime,
                               device=device)
    progress = len(paths) > 4 * args.batch_size and sys.stderr.isatty()
    probs = torch.cat(list(tqdm(batches, total=-(-len(paths) // args.batch_size), disable=not progress,
                                unit="batch", file=sys.stderr)))
    for path, preds in zip(paths, decode_predictions(probs, args.top, class_names)):
        if args.json:
            print(json.dumps({"image": str(path), "predictions": [
                {"class_id": c, "label": name, "probability": round(p, 6)} for c, name, p in preds]}))
        else:
            print(path)
            for rank, (c, name, p) in enumerate(preds, 1):
                print(f"  {rank}. {name:<30} {c:<10} {p:.4f}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` verb."""
    p = sub.add_parser("predict", help="top-k ImageNet (or checkpoint) classes for photos")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--model", help="registered model name (not needed with a convzoo checkpoint)")
    p.add_argument("--weights", help="weights file, convzoo checkpoint, or 'imagenet'")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.add_argument("--preprocessing", choices=MODES,
                   help="normalise with this mode instead of the one recorded with the weights (warns)")
    p.add_argument("--runtime", choices=RUNTIMES, default="eager",
                   help="run the model in PyTorch (eager) or, BatchNorm folded and exported to ONNX, in ONNX Runtime")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where the eager runtime runs (default: auto, a CUDA GPU when there is one); "
                        "onnxruntime runs on the CPU")
    p.set_defaults(func=cmd_predict)
