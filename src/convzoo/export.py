"""Export to ONNX, TorchScript and ``torch.export`` (.pt2), each with a dynamic batch; a model built with an
auxiliary head is exported with its main logits only.

Every exported file is right at every input size it accepts, and refuses the others:

- TorchScript and .pt2 take any height and width from the model's minimum input size up, computing
  TensorFlow's 'same' padding for the size they are run at (see :mod:`convzoo.layers`); a smaller input is
  refused by the program (TorchScript: a ``ValueError`` naming the minimum; .pt2: a failed guard
  ``x.size()[2] >= MIN``).
- ONNX has no way to state a minimum size, so it is exported for the model's input size only (its
  ``default_cfg['input_size']``); ONNX Runtime refuses another size with a message naming the expected one.

Every file made by :func:`export_model` says how its input is prepared (:func:`input_metadata`, the record
of the model's weights: for a training run's checkpoint, the run's one preprocessing) as the JSON text
:data:`METADATA`: an ONNX metadata property, a TorchScript or .pt2 extra file.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from pathlib import Path

import torch
import torch.fx.experimental._config as shape_config
from torch import nn

from .errors import ConfigError, ConvzooError
from .models.base import logits_of
from .preprocess import recorded_normalize
from .utils.fileio import atomic_write

FORMATS = ("onnx", "torchscript", "pt2")
# The file extensions each format is written with.
EXTENSIONS = {"onnx": (".onnx",), "torchscript": (".pt", ".torchscript"), "pt2": (".pt2",)}
# Formats whose files take any input size from the model's minimum up (the others: the exported size only).
DYNAMIC_SIZE = ("torchscript", "pt2")
MAX_BATCH = 4096
# The ONNX metadata key, or the TorchScript / .pt2 extra file, holding :func:`input_metadata`.
METADATA = "convzoo.json"


class ExportError(ConvzooError):
    """An export that the exporter could not complete."""


class MainLogits(nn.Module):
    """``model`` giving only its main logits (N, classes), for a model that returns ``(logits, aux_logits)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(x))


def _example(model: nn.Module, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, *model.default_cfg.input_size)


def input_metadata(model: nn.Module) -> str:
    """JSON text saying how ``model``'s input is prepared, from the record of its weights
    (``model.weights_meta``, else its ``default_cfg``): ``model``, ``input_size`` (C, H, W), the resize
    (``interpolation``; shorter side to size / ``crop_pct``, then a centre crop), ``preprocessing`` (a mode of
    :mod:`convzoo.preprocess`, or ``'custom'``) with the per-channel ``mean`` and ``std`` it amounts to, in
    0..255 pixel units in the model's channel order, BGR when ``bgr`` (input = (pixels - mean) / std), and the
    ``class_names`` the model holds (None when it holds none)."""
    cfg = model.default_cfg
    meta = getattr(model, "weights_meta", None) or cfg
    normalize = recorded_normalize(model)
    mean, std, bgr = normalize.pixel_stats()
    names = getattr(model, "class_names", None)
    return json.dumps(dict(model=cfg.name, input_size=list(cfg.input_size), interpolation=meta.interpolation,
                           crop_pct=meta.crop_pct, preprocessing=normalize.record()[0], mean=list(mean), std=list(std),
                           bgr=bgr, class_names=None if names is None else list(names)))


def _onnx(model: nn.Module, x: torch.Tensor, metadata: str | None) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                dynamic_shapes=({0: batch},), verbose=False)
    if metadata is not None:
        program.model.metadata_props[METADATA] = metadata
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        program.save(str(path))
        return path.read_bytes()


def _torchscript(model: nn.Module, x: torch.Tensor, metadata: str | None) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(model, x), buffer, _extra_files={METADATA: metadata} if metadata else None)
    return buffer.getvalue()


def _pt2(model: nn.Module, x: torch.Tensor, min_size: tuple[int, int], metadata: str | None) -> bytes:
    dims = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH), 2: torch.export.Dim("height", min=min_size[0]),
            3: torch.export.Dim("width", min=min_size[1])}
    # A size-1 feature map (e.g. Inception's last grid at its minimum input) changes no result, only which
    # memory layout is contiguous: reason about sizes as if none were 1, instead of refusing those sizes.
    with shape_config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, (x,), dynamic_shapes=(dims,))
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={METADATA: metadata} if metadata else None)
    return buffer.getvalue()


def to_bytes(model: nn.Module, fmt: str, x: torch.Tensor, min_size: tuple[int, int] = (2, 2),
             metadata: str | None = None) -> bytes:
    """The bytes of ``model`` (in eval mode) as a ``fmt`` file, traced on the example batch ``x`` (N, C, H, W);
    TorchScript and .pt2 take any H, W from ``min_size`` up, ONNX ``x``'s only (see the module docstring).
    A model that returns ``(logits, aux_logits)`` gives its main logits. ``metadata``: text stored in the
    file as :data:`METADATA`."""
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    traced = MainLogits(model).eval() if getattr(model, "aux_logits", False) else model
    if fmt == "onnx":
        return _onnx(traced, x, metadata)
    if fmt == "torchscript":
        return _torchscript(traced, x, metadata)
    return _pt2(traced, x, min_size, metadata)


def export_model(model: nn.Module, path: str | Path, fmt: str) -> Path:
    """Write ``model`` (put in eval mode) to ``path`` as ``fmt`` ('onnx', 'torchscript' or 'pt2') with a
    dynamic batch: float32 (N, C, H, W) in, the model's output (N, classes) out. TorchScript and .pt2 take
    any H, W from the model's ``min_input_size`` up, ONNX its ``input_size`` only (see the module docstring).
    The file holds :func:`input_metadata` as :data:`METADATA`, and is written atomically. Raises
    :class:`ConfigError` (unknown format), :class:`~convzoo.errors.OutputError` (``path`` cannot be written)
    and :class:`ExportError`."""
    model = model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = to_bytes(model, fmt, _example(model), tuple(model.default_cfg.min_input_size[1:]),
                            input_metadata(model))
    except ImportError as exc:
        raise ExportError(f"{fmt} export needs an optional package ({exc.name}): pip install 'convzoo[onnx]'") from None
    except (RuntimeError, torch._dynamo.exc.TorchDynamoException) as exc:
        raise ExportError(f"{fmt} export failed: {str(exc).splitlines()[0][:200]}") from None
    return atomic_write(path, data)
