"""Inspecting a model: Keras-style parameter counts, a layer table, and multiply-accumulates per image."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import SeparableConv2d


@dataclass(frozen=True)
class ParamCount:
    """Keras' convention: ``total = trainable + non_trainable``, BatchNorm moving statistics non-trainable."""

    total: int
    trainable: int
    non_trainable: int


def count_params(model: nn.Module) -> ParamCount:
    """Count parameters as Keras does: trainable weights, plus BatchNorm running mean/var as non-trainable."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    stats = sum(b.numel() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in ("running_mean", "running_var"))
    return ParamCount(trainable + frozen + stats, trainable, frozen + stats)


def _probe(model: nn.Module, input_size: tuple[int, int, int]) -> torch.Tensor:
    """A zero batch of one image of ``input_size`` (C, H, W) on the model's device (the meta device for a
    model built there: shapes without memory)."""
    device = next(model.parameters(), torch.empty(0)).device
    return torch.zeros(1, *input_size, device=device)


def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass for one image of ``input_size`` (C, H, W), eval mode; a model
    on the meta device is counted without computing anything."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(_probe(model, input_size))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


@dataclass(frozen=True)
class LayerRow:
    """One row of the summary table."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int


def layer_table(model: nn.Module, input_size: tuple[int, int, int], depth: int | None = None) -> list[LayerRow]:
    """The layers a forward pass runs, in order, with output shapes (batch dimension left out) and parameters.

    A layer is a module with no children (a separable convolution counts as one, as in Keras), or, with
    ``depth``, any module that deep in the module tree. A model on the meta device gives its shapes without
    computing anything.
    """
    rows: dict[str, LayerRow] = {}
    separable = [n + "." for n, m in model.named_modules() if isinstance(m, SeparableConv2d)]

    def is_row(name: str, m: nn.Module) -> bool:
        level = name.count(".") + 1
        if not name or (depth is not None and level > depth) or any(name.startswith(p) for p in separable):
            return False
        is_leaf = isinstance(m, SeparableConv2d) or next(m.children(), None) is None
        return is_leaf or level == depth

    def hook(name: str):
        def record(m: nn.Module, _inp, out) -> None:
            if name not in rows:
                t = out[0] if isinstance(out, (tuple, list)) else out
                rows[name] = LayerRow(name, type(m).__name__, tuple(t.shape[1:]), count_params(m).total)
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if is_row(n, m)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(_probe(model, input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return list(rows.values())

