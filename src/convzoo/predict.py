"""Predictions on photos: top-k labels the way Keras' ``decode_predictions`` prints them, and ``convzoo predict``."""

from __future__ import annotations

import argparse
import glob
import json
import sys
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from .errors import ConfigError, ImageError
from .optimize import optimize_for_inference, tune_cpu_allocator
from .preprocess import MODES, choose_preprocessing
from .runtime import DEVICES, RUNTIMES, bf16_pays, resolve_device, runtime_model

Prediction = tuple[str, str, float]


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1,000 ImageNet classes as (wnid, name), from the Keras class index shipped with convzoo."""
    text = (resources.files("convzoo") / "resources" / "imagenet_class_index.json").read_text()
    index = json.loads(text)
    return [tuple(index[str(i)]) for i in range(len(index))]


def decode_predictions(probs: torch.Tensor, top: int = 5, class_names: Sequence[str] | None = None
                       ) -> list[list[Prediction]]:
    """For each row of ``probs`` (N, classes), the ``top`` classes as ``(class_id, name, probability)``.

    With 1,000 classes and no ``class_names`` these are ImageNet's ``('n02504458', 'African_elephant', p)``;
    with ``class_names`` (a model trained on other classes) the id is the class index as a string.
    """
    probs = torch.as_tensor(probs)
    if probs.dim() != 2:
        raise ConfigError(f"expected probabilities of shape (N, classes), got {tuple(probs.shape)}")
    n_classes = probs.shape[1]
    if not 1 <= top <= n_classes:
        raise ConfigError(f"top must lie in [1, {n_classes}], got {top}")
    if class_names is None:
        if n_classes != 1000:
            raise ConfigError(f"expected 1000 ImageNet classes or class names, got {n_classes} classes")
        labels = imagenet_classes()
    else:
        if len(class_names) != n_classes:
            raise ConfigError(f"expected {n_classes} class names, got {len(class_names)}")
        labels = [(str(i), str(c)) for i, c in enumerate(class_names)]
    values, indices = probs.topk(top, dim=1)
    return [[(*labels[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def expand_inputs(items: Sequence[str]) -> list[Path]:
    """Image paths from files, folders (their image files, sorted) and glob patterns, in the order given."""
    from .data.images import IMAGE_EXTENSIONS

    paths: list[Path] = []
    for item in items:
        if any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise ImageError(f"expected images matching {item!r}, found none")
            paths.extend(Path(m) for m in matches if Path(m).is_file())
        elif Path(item).is_dir():
            found = sorted(p for p in Path(item).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise ImageError(f"expected image files in folder {item}, found none")
            paths.extend(found)
        else:
            paths.append(Path(item))
    return paths


def resolve_model(model_name: str | None, weights: str | None) -> tuple[nn.Module, list[str] | None]:
    """A model in eval mode and its class names, from a registry name and/or a weights file or checkpoint."""
    from .registry import create_model
    from .weights import load_checkpoint
    from .weights.formats import CONVZOO, detect_format

    if weights is not None and not weights.startswith("imagenet") and detect_format(weights)[0] == CONVZOO:
        model = load_checkpoint(weights)
        if model_name is not None and model_name != model.default_cfg.name:
            raise ConfigError(f"--model {model_name} given, but the checkpoint holds {model.default_cfg.name}")
        return model.eval(), model.class_names
    if model_name is None:
        raise ConfigError("expected --model NAME (or a convzoo checkpoint as --weights)")
    model = create_model(model_name, weights=weights).eval()
    if weights is None:
        print(f"convzoo: warning: no --weights given, {model_name} is randomly initialised", file=sys.stderr)
    return model, None


def runtime_device(device: str, runtime: str = "eager") -> torch.device:
    """The device ``runtime`` runs on for a ``--device`` choice: ONNX Runtime runs on the CPU."""
    if runtime == "eager":
        return resolve_device(device)
    if device == "cuda":
        raise ConfigError(f"--runtime {runtime} runs on the CPU here: use --runtime eager with --device cuda")
    return torch.device("cpu")


def _forward(model: nn.Module, runtime: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as run by ``runtime`` on ``device``, taking a CPU batch and giving float32 logits on the CPU."""
    if runtime != "eager":
        if device.type != "cpu":
            raise ConfigError(f"the {runtime} runtime runs on the CPU here, not on {device}")
        return runtime_model(model, runtime)
    fast = optimize_for_inference(model).to(device)
    bf16 = bf16_pays(device)

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = fast(x)
        return logits.float().cpu()

    return forward


def predict_files(model: nn.Module, paths: Sequence[Path], *, batch_size: int = 8, mode: str | None = None,
                  progress: bool = False, runtime: str = "eager", device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """Class probabilities (N, classes, float32, on the CPU) for the image files at ``paths``, preprocessed as
    recorded with the model's weights (``model.weights_meta``, else its ``default_cfg``); ``mode`` overrides
    the preprocessing. ``runtime`` ('eager' or 'onnxruntime', see :mod:`convzoo.runtime`) runs the model;
    the eager runtime runs a BatchNorm-folded, channels-last copy of it on ``device`` (under bfloat16
    autocast on CUDA), ONNX Runtime only on the CPU. ``model`` is left as it is."""
    from tqdm import tqdm

    from .data.transforms import ImageTransform

    transform = ImageTransform.from_model(model, mode)
    forward = _forward(model, runtime, torch.device(device))
    out = []
    batches = range(0, len(paths), batch_size)
    with torch.inference_mode():
        for start in tqdm(batches, disable=not progress, unit="batch", file=sys.stderr):
            x = transform(paths[start:start + batch_size])
            out.append(forward(x).softmax(1))
    return torch.cat(out)


def cmd_predict(args: argparse.Namespace) -> int:
    """``convzoo predict``: top-k classes for each image, as a table or JSON lines."""
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    device = runtime_device(args.device, args.runtime)
    if device.type == "cpu":
        tune_cpu_allocator()
    paths = expand_inputs(args.images)
    model, class_names = resolve_model(args.model, args.weights)
    n_classes = model.num_classes
    if not 1 <= args.top <= n_classes:
        raise ConfigError(f"--top must lie in [1, {n_classes}], got {args.top}")
    if class_names is None and n_classes != 1000:
        class_names = [str(i) for i in range(n_classes)]
    mode, warning = choose_preprocessing(model, args.preprocessing)
    if warning:
        print(f"convzoo: warning: {warning}", file=sys.stderr)
    probs = predict_files(model, paths, batch_size=args.batch_size, mode=mode, runtime=args.runtime,
                          device=device, progress=len(paths) > 4 * args.batch_size and sys.stderr.isatty())
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
