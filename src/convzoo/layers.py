"""Building blocks shared by every family.

TensorFlow/Keras ``'same'`` padding pads ``total = max((ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)``
pixels and puts the odd one at the bottom/right. For stride 1 and odd kernels that is symmetric and
static; otherwise it depends on the input size, so it is computed in ``forward``, for the actual size also
in exported programs: in integer arithmetic that ``torch.export`` keeps symbolic (dynamic H and W), and,
while ``torch.jit.trace`` records a TorchScript program, by TorchScript functions that the trace calls
instead of baking the traced size's padding in.
"""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from typing import Callable, List, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

Padding = Literal["same", "valid"] | int
"""``'same'`` (TensorFlow semantics), ``'valid'`` (none), or a symmetric int (PyTorch semantics)."""
KernelInit = Literal["glorot_uniform", "he_normal"]
"""The Keras kernel initialisers :func:`init_keras_` knows."""
KERNEL_INITS = get_args(KernelInit)


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Return the (before, after) padding TensorFlow's ``'same'`` uses along one axis."""
    before, after = _window_pads(size, kernel, stride, dilation)
    return before, torch.sym_max(after, 0)


def _same_total(size: int, kernel: int, stride: int, dilation: int) -> int:
    """TF 'same''s total padding before it is clipped at 0, in integer arithmetic (also compiled by
    TorchScript, and kept symbolic by ``torch.export``)."""
    return ((size + stride - 1) // stride - 1) * stride + (kernel - 1) * dilation + 1 - size


def _window_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF 'same' (before, after) in a form ``torch.export`` keeps symbolic and can prove two paths of a block
    equal in size with; ``after`` is negative (a crop of pixels no window reads) where a 1x1 window's stride
    skips the last ones."""
    reach = (kernel - 1) * dilation + 1
    total = _same_total(size, kernel, stride, dilation)
    if reach == 1:
        return 0, total
    if reach < stride:  # only then can the total go negative
        total = torch.sym_max(total, 0)
    return total // 2, total - total // 2


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _is_static_same(kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> bool:
    return all(s == 1 and (d * (k - 1)) % 2 == 0 for k, s, d in zip(kernel, stride, dilation))


def _script_pad_same(x: torch.Tensor, kernel: List[int], stride: List[int], dilation: List[int],
                     value: float) -> torch.Tensor:
    th = max(_same_total(x.size(2), kernel[0], stride[0], dilation[0]), 0)
    tw = max(_same_total(x.size(3), kernel[1], stride[1], dilation[1]), 0)
    return F.pad(x, [tw // 2, tw - tw // 2, th // 2, th - th // 2], value=value)


def _script_check_size(x: torch.Tensor, height: int, width: int, what: str) -> torch.Tensor:
    if x.size(-2) < height or x.size(-1) < width:
        raise ValueError(what + " needs inputs of at least " + str(height) + "x" + str(width) + ", got "
                         + str(x.size(-2)) + "x" + str(x.size(-1)))
    return x


@lru_cache(maxsize=None)
def _scripted(fn: Callable) -> Callable:
    """``fn`` compiled by TorchScript (once), for a trace to call with the sizes of each run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(fn)


def check_min_size_traced(x: torch.Tensor, height: int, width: int, what: str) -> torch.Tensor:
    """``x``, after a check of its size that a TorchScript trace keeps (a ``ValueError`` when ``x`` is
    smaller than ``height`` x ``width``); call it only while ``torch.jit.is_tracing()``."""
    return _scripted(_script_check_size)(x, height, width, what)


def _traced_sizes(x: torch.Tensor) -> bool:
    """Whether ``x``'s sizes may differ when the program being traced runs (TorchScript trace, or symbolic
    sizes in ``torch.export``): then no size-specific shortcut may be taken."""
    return torch.jit.is_tracing() or not all(isinstance(n, int) for n in x.shape[-2:])


def _pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
              dilation: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    if torch.jit.is_tracing():
        return _scripted(_script_pad_same)(x, list(kernel), list(stride), list(dilation), value)
    if _traced_sizes(x):
        ph = _window_pads(x.shape[-2], kernel[0], stride[0], dilation[0])
        pw = _window_pads(x.shape[-1], kernel[1], stride[1], dilation[1])
        return F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=value)
    ph = same_pad_amounts(x.shape[-2], kernel[0], stride[0], dilation[0])
    pw = same_pad_amounts(x.shape[-1], kernel[1], stride[1], dilation[1])
    if ph == (0, 0) and pw == (0, 0):
        return x
    return F.pad(x, (pw[0], pw[1], ph[0], ph[1]), value=value)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that also accepts ``padding='same'`` with TensorFlow's asymmetric rule at any stride."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: Padding = "valid", dilation: int = 1,
                 groups: int = 1, bias: bool = True) -> None:
        k, s, d = _pair(kernel_size), _pair(stride), _pair(dilation)
        self.dynamic_same = padding == "same" and not _is_static_same(k, s, d)
        if padding == "same":
            static = (0, 0) if self.dynamic_same else (d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
        elif padding == "valid":
            static = (0, 0)
        else:
            static = _pair(padding)
        super().__init__(in_channels, out_channels, k, s, static, d, groups, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same:
            x = _pad_same(x, self.kernel_size, self.stride, self.dilation)
        return super().forward(x)


class MaxPool2d(nn.Module):
    """Max pooling with ``'same'`` (TensorFlow: pad with -inf, extra at the bottom/right), ``'valid'`` or int padding."""

    def __init__(self, kernel_size: int, stride: int, padding: Padding = "valid") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), padding
        self.static_padding = 0 if padding in ("same", "valid") else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            native = None if _traced_sizes(x) else self._native_same(x.shape[-2], x.shape[-1])
            if native is not None:
                return F.max_pool2d(x, self.kernel_size, self.stride, native[0], ceil_mode=native[1])
            x = _pad_same(x, self.kernel_size, self.stride, (1, 1), value=float("-inf"))
        return F.max_pool2d(x, self.kernel_size, self.stride, self.static_padding)

    def _native_same(self, h: int, w: int) -> tuple[tuple[int, int], bool] | None:
        """TF 'same' as PyTorch's own padding, without a padded copy: symmetric padding, or one extra cell
        at the bottom/right as ``ceil_mode``'s extra window. None when neither fits."""
        pads = [same_pad_amounts(n, k, s) for n, k, s in zip((h, w), self.kernel_size, self.stride)]
        if all(a == b for a, b in pads):
            return (pads[0][0], pads[1][0]), False
        if all(b - a == 1 and 2 * a <= k // 2 for (a, b), k in zip(pads, self.kernel_size)):
            outs = [(n + 2 * a - k + s - 1) // s + 1 for n, (a, _), k, s in zip((h, w), pads, self.kernel_size,
                                                                               self.stride)]
            if all(o == math.ceil(n / s) and (o - 1) * s < n + a for o, n, (a, _), s in
                   zip(outs, (h, w), pads, self.stride)):
                return (pads[0][0], pads[1][0]), True
        return None

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class AvgPool2d(nn.Module):
    """Average pooling. ``'same'`` follows TensorFlow: the padded cells are left out of each average.

    An int padding follows PyTorch's default (``count_include_pad=True``), as torchvision's Inception does.
    """

    def __init__(self, kernel_size: int, stride: int, padding: Padding = "valid") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "valid":
            return F.avg_pool2d(x, self.kernel_size, self.stride)
        if self.padding != "same":
            return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        if _is_static_same(self.kernel_size, self.stride, (1, 1)):
            pad = ((self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2)
            return F.avg_pool2d(x, self.kernel_size, self.stride, pad, count_include_pad=False)
        total = F.avg_pool2d(_pad_same(x, self.kernel_size, self.stride, (1, 1)), self.kernel_size,
                             self.stride, divisor_override=1)
        ones = torch.ones_like(x[:1, :1])
        count = F.avg_pool2d(_pad_same(ones, self.kernel_size, self.stride, (1, 1)), self.kernel_size,
                             self.stride, divisor_override=1)
        return total / count

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


def batch_norm(channels: int, eps: float, momentum: float, affine_scale: bool = True) -> nn.BatchNorm2d:
    """BatchNorm in torch terms (``momentum`` = 1 − Keras momentum); ``affine_scale=False`` drops gamma as Keras ``scale=False``."""
    bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    if not affine_scale:
        bn.weight = None
        bn.register_parameter("weight", None)
    return bn


class ConvBnAct(nn.Sequential):
    """Convolution, BatchNorm and (optionally) ReLU, with children ``conv``, ``bn``, ``act``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: Padding = "valid", *, groups: int = 1,
                 bias: bool = False, bn_eps: float = 1e-5, bn_momentum: float = 0.1, bn_scale: bool = True,
                 act: bool = True) -> None:
        super().__init__()
        self.conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=bias)
        self.bn = batch_norm(out_channels, bn_eps, bn_momentum, bn_scale)
        if act:
            self.act = nn.ReLU(inplace=True)


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D``: a depthwise k×k convolution (``depth_multiplier`` outputs per input
    channel, no bias) then a pointwise 1×1 convolution (bias if ``bias``). Children: ``depthwise``, ``pointwise``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: Padding = "same", *, depth_multiplier: int = 1, bias: bool = False) -> None:
        super().__init__()
        mid = in_channels * depth_multiplier
        self.depthwise = Conv2d(in_channels, mid, kernel_size, stride, padding, groups=in_channels, bias=False)
        self.pointwise = Conv2d(mid, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def _keras_fans(weight: torch.Tensor, groups: int) -> tuple[int, int]:
    """Fan-in and fan-out as Keras computes them from its own kernel layout."""
    if weight.dim() == 2:
        return weight.shape[1], weight.shape[0]
    rf = weight.shape[2] * weight.shape[3]
    if groups > 1 and weight.shape[1] == 1:
        return groups * rf, (weight.shape[0] // groups) * rf
    return weight.shape[1] * rf, weight.shape[0] * rf


def init_keras_(model: nn.Module, kernel_init: KernelInit = "glorot_uniform") -> None:
    """Initialise like Keras: kernels ``glorot_uniform`` (default) or ``he_normal`` (truncated normal,
    std = sqrt(2 / fan_in)), biases 0, BatchNorm gamma 1 and beta 0. Fans follow Keras' kernel layout,
    which for depthwise kernels differs from PyTorch's. Any other ``kernel_init`` is a :class:`ConfigError`."""
    if kernel_init not in KERNEL_INITS:
        raise ConfigError(f"kernel_init must be one of {', '.join(KERNEL_INITS)}, got {kernel_init!r}")
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in, fan_out = _keras_fans(m.weight, getattr(m, "groups", 1))
            with torch.no_grad():
                if kernel_init == "he_normal":
                    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
                    nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
                else:
                    limit = math.sqrt(6.0 / (fan_in + fan_out))
                    nn.init.uniform_(m.weight, -limit, limit)
                if m.bias is not None:
                    m.bias.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
