"""Speed-ups that keep the function: BatchNorm folded into the convolution before it, channels-last
memory layout, and a CPU memory allocator that keeps freed tensor memory for the next step."""

from __future__ import annotations

import copy
import ctypes
import sys

import torch
from torch import nn

from .errors import ConfigError


@torch.no_grad()
def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a convolution, as the model's ``conv_bn_pairs()`` lists
    them, into that convolution and replace it with ``nn.Identity`` (in place, eval mode only).

    Returns the model; BatchNorms that follow no convolution (v2's pre-activations) stay as they are.
    Raises RuntimeError in training mode and :class:`ConfigError` for a pair that is not a convolution and
    a BatchNorm of its width.
    """
    if model.training:
        raise RuntimeError("fuse_batchnorm is for inference: call model.eval() first")
    for conv_path, bn_path in model.conv_bn_pairs():
        conv, bn = model.get_submodule(conv_path), model.get_submodule(bn_path)
        fits = isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and conv.out_channels == bn.num_features
        if not fits:
            raise ConfigError(f"{type(model).__name__}: {conv_path} and {bn_path} are no convolution and BatchNorm "
                              f"of the same width")
        _fold(conv, bn)
        parent, _, name = bn_path.rpartition(".")
        setattr(model.get_submodule(parent), name, nn.Identity())
    return model


def optimize_for_inference(model: nn.Module, channels_last: bool = True, dtype: torch.dtype = torch.float32
                           ) -> nn.Module:
    """A copy of ``model`` in eval mode with BatchNorm folded (in float32, then cast), its floating-point
    parameters and buffers in ``dtype`` and (by default) channels-last weights; feed it inputs of ``dtype``,
    channels-last (``x.to(dtype).contiguous(memory_format=torch.channels_last)``) for full speed.

    ``dtype=torch.bfloat16`` computes what bf16 autocast computes for these networks (convolutions and
    matmuls in bf16, their outputs and everything after them bf16) with the weights cast once instead of on
    every call; on a CPU with AVX512-BF16 it runs Xception@299 faster than autocast (docs/PERFORMANCE.md).
    """
    if not dtype.is_floating_point:
        raise ConfigError(f"optimize_for_inference casts to a floating-point dtype, got {dtype}")
    fast = fuse_batchnorm(copy.deepcopy(model).eval())
    for p in fast.parameters():
        p.requires_grad_(False)
    fast = fast.to(dtype)
    return fast.to(memory_format=torch.channels_last) if channels_last else fast


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def tune_cpu_allocator() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of returning it to the OS.

    Every CPU step frees and re-allocates the same large activation buffers; by default glibc maps
    blocks of more than ~32 MiB afresh each time and trims the heap after frees, and the kernel
    zero-fills every new page on first touch. That costs 15-25 % of a ``xception_cifar_slim_thinner``
    training step and of an Xception inference step here. With no mapping and no trimming the
    process keeps its peak memory. Process-wide and permanent; returns False (and changes nothing)
    where the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 256 << 20)))
