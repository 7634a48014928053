"""Pointwise and depthwise kernels in whichever layout a file stores them.

A pointwise (1x1, ungrouped) convolution's weight (out, in, 1, 1) is read from PyTorch's (out, in, 1, 1) or
(out, in), or Keras' (1, 1, in, out); in a Keras file a 2-D kernel may also be Keras' (in, out). A depthwise
convolution's weight (cin*mult, 1, kh, kw) is read from PyTorch's layout or Keras' (kh, kw, cin, mult).
Every layout whose shape fits is tried; one distinct result loads, two distinct results (a square 2-D
kernel in a Keras file, a (k, 1) depthwise kernel over k channels) are a :class:`WeightsError`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightsError

POINTWISE = "pointwise"
DEPTHWISE = "depthwise"
TORCH_POINTWISE = "PyTorch (out, in, 1, 1)"
TORCH_DEPTHWISE = "PyTorch (cin*mult, 1, kh, kw)"
KERAS_POINTWISE = "Keras (1, 1, in, out)"
KERAS_DEPTHWISE = "Keras (kh, kw, cin, mult)"


def kernel_kind(module: nn.Module) -> str | None:
    """``'pointwise'`` for an ungrouped 1x1 convolution, ``'depthwise'`` for a convolution with one group per
    input channel, else None."""
    if not isinstance(module, nn.Conv2d):
        return None
    if module.groups == 1 and tuple(module.kernel_size) == (1, 1):
        return POINTWISE
    if module.groups > 1 and module.groups == module.in_channels:
        return DEPTHWISE
    return None


def _candidates(value: torch.Tensor, module: nn.Conv2d, kind: str, keras_file: bool
                ) -> list[tuple[str, torch.Tensor]]:
    target = tuple(module.weight.shape)
    found = tuple(value.shape)
    out = []
    if kind == POINTWISE:
        o, i = target[:2]
        if found == target:
            out.append((TORCH_POINTWISE, value))
        if found == (1, 1, i, o):
            out.append((KERAS_POINTWISE, value.permute(3, 2, 0, 1)))
        if found == (o, i):
            out.append(("PyTorch (out, in)", value.reshape(target)))
        if keras_file and found == (i, o):
            out.append(("Keras (in, out)", value.t().reshape(target)))
        return out
    kh, kw = module.kernel_size
    if found == target:
        out.append((TORCH_DEPTHWISE, value))
    cin = module.in_channels
    if value.dim() == 4 and found[:3] == (kh, kw, cin) and cin * found[3] == target[0]:
        out.append((KERAS_DEPTHWISE, value.permute(2, 3, 0, 1).reshape(target)))
    return out


def fit_kernel(value: torch.Tensor, module: nn.Conv2d, keras_file: bool, name: str
               ) -> tuple[torch.Tensor, str] | None:
    """``value`` as ``module``'s weight and the layout it was read as, or None when no layout fits.

    ``keras_file``: the array comes from a Keras file (which makes a 2-D kernel possibly (in, out)).
    ``name`` names the tensor in the error raised when two layouts fit and disagree."""
    kind = kernel_kind(module)
    if kind is None:
        return None
    distinct: list[tuple[str, torch.Tensor]] = []
    for layout, tensor in _candidates(value, module, kind, keras_file):
        if not any(torch.equal(tensor, seen) for _, seen in distinct):
            distinct.append((layout, tensor))
    if not distinct:
        return None
    if len(distinct) > 1:
        readings = " and ".join(layout for layout, _ in distinct)
        raise WeightsError(f"{name}: ambiguous {kind} kernel layout: the model expects "
                           f"{tuple(module.weight.shape)}, the file holds {tuple(value.shape)}, readable as {readings}")
    layout, tensor = distinct[0]
    return tensor.contiguous(), layout
