"""Folding a per-channel affine input transform into a model's first convolution.

Some published weights were trained behind a fixed input transform inside the model: torchvision's
Inception V3 (``transform_input``) takes inputs normalised with the ImageNet mean and std (``'torch'``
preprocessing) and maps channel c to ``x * std_c / 0.5 + (mean_c - 0.5) / 0.5``. The record of such a file
gives that (scale, shift). Folding it into the first convolution (unpadded, so the fold is exact at the
borders too) scales its kernel per input channel and adds a constant per output channel, which goes into the
convolution's bias or, when it has none, into the following BatchNorm's running mean. Compared module by
module with the publisher's model, the first convolution's output therefore differs by that constant while
its BatchNorm's output, and everything after, agrees.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import WeightsError


def fold_input_affine(model: nn.Module, scale: tuple[float, ...], shift: tuple[float, ...]) -> str:
    """Change ``model`` so that ``model(x)`` computes what it computed on ``scale * x + shift`` (per input
    channel). The first convolution (``default_cfg.first_conv``) must be unpadded, and without a bias it
    must be followed by a BatchNorm (the model's ``conv_bn_pairs``). Returns the path of the convolution
    changed; :class:`WeightsError` when it cannot be folded."""
    path = model.default_cfg.first_conv
    conv = model.get_submodule(path)
    if not isinstance(conv, nn.Conv2d) or tuple(conv.padding) != (0, 0) or getattr(conv, "dynamic_same", False):
        raise WeightsError(f"cannot fold the input transform into {path}: it must be an unpadded convolution")
    bn = None
    if conv.bias is None:
        bn_path = dict(model.conv_bn_pairs()).get(path)
        bn = model.get_submodule(bn_path) if bn_path is not None else None
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            raise WeightsError(f"cannot fold the input transform into {path}: no bias and no BatchNorm after it")
    with torch.no_grad():
        weight = conv.weight.double()
        a = torch.tensor(scale, dtype=torch.float64).view(1, -1, 1, 1)
        b = torch.tensor(shift, dtype=torch.float64).view(1, -1, 1, 1)
        offset = (weight * b).sum((1, 2, 3))
        conv.weight.copy_(weight * a)
        if bn is None:
            conv.bias.copy_(conv.bias.double() + offset)
        else:
            bn.running_mean.copy_(bn.running_mean.double() - offset)
    return path
