"""Building blocks against Keras' own layers (torch backend) and the seeds' parameter arithmetic."""

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convzoo.layers import AvgPool2d, Conv2d, MaxPool2d, SeparableConv2d, same_pad_amounts


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("cin, cout, plain, separable", [(16, 32, 4608, 656), (3, 64, 1728, 219)])
def test_seed_parameter_arithmetic(cin, cout, plain, separable):
    assert n_params(Conv2d(cin, cout, 3, bias=False)) == plain
    assert n_params(SeparableConv2d(cin, cout, 3, bias=False)) == separable


def test_same_padding_is_asymmetric_for_stride_2_on_even_sizes():
    assert same_pad_amounts(74, 3, 2) == (0, 1)
    assert same_pad_amounts(147, 3, 2) == (1, 1)
    assert same_pad_amounts(32, 3, 1) == (1, 1)
    assert same_pad_amounts(148, 1, 2) == (0, 0)


def _nhwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def _to_torch(y) -> torch.Tensor:
    return torch.as_tensor(np.asarray(keras.ops.convert_to_numpy(y))).permute(0, 3, 1, 2)


@pytest.mark.parametrize("size, stride", [(10, 2), (11, 2), (10, 1), (9, 3)])
def test_conv_same_matches_keras(size, stride):
    x = torch.randn(2, 3, size, size)
    k = keras.layers.Conv2D(4, 3, strides=stride, padding="same", use_bias=True)
    y_ref = _to_torch(k(_nhwc(x)))
    conv = Conv2d(3, 4, 3, stride, "same")
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in k.weights)
    conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(bias.copy())
    assert torch.allclose(conv(x), y_ref, atol=1e-5)


@pytest.mark.parametrize("size, stride", [(10, 2), (11, 2), (8, 1)])
def test_max_pooling_same_matches_keras(size, stride):
    x = torch.randn(2, 3, size, size)
    y_ref = _to_torch(keras.layers.MaxPooling2D(3, stride, padding="same")(_nhwc(x)))
    assert torch.allclose(MaxPool2d(3, stride, "same")(x), y_ref, atol=1e-6)


@pytest.mark.parametrize("size, stride", [(11, 2), (8, 1)])
def test_avg_pooling_same_matches_keras_where_padding_is_symmetric(size, stride):
    x = torch.randn(2, 3, size, size)
    y_ref = _to_torch(keras.layers.AveragePooling2D(3, stride, padding="same")(_nhwc(x)))
    assert torch.allclose(AvgPool2d(3, stride, "same")(x), y_ref, atol=1e-6)


def test_avg_pooling_same_excludes_asymmetric_padding_like_tensorflow():
    """Keras' torch backend replicates edges for asymmetric 'same' pooling; TF, which trained the
    published weights, averages only the real cells. convzoo follows TF."""
    x = torch.randn(1, 2, 10, 10)
    y = AvgPool2d(3, 2, "same")(x)
    expected = torch.stack([torch.stack([x[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].mean((2, 3))
                                         for j in range(5)], -1) for i in range(5)], -2)
    assert y.shape == (1, 2, 5, 5)
    assert torch.allclose(y, expected, atol=1e-6)


def test_avg_pool_int_padding_counts_the_padding_like_torchvision():
    x = torch.randn(1, 2, 6, 6)
    assert torch.equal(AvgPool2d(3, 1, 1)(x), F.avg_pool2d(x, 3, 1, 1))
    assert not torch.allclose(AvgPool2d(3, 1, 1)(x), AvgPool2d(3, 1, "same")(x))


def test_separable_conv_matches_keras_with_depth_multiplier_and_bias():
    x = torch.randn(2, 4, 9, 9)
    k = keras.layers.SeparableConv2D(6, 3, strides=2, padding="same", depth_multiplier=2, use_bias=True)
    y_ref = _to_torch(k(_nhwc(x)))
    dw, pw, bias = (keras.ops.convert_to_numpy(w) for w in k.weights)
    sep = SeparableConv2d(4, 6, 3, 2, "same", depth_multiplier=2, bias=True)
    assert sep.depthwise.bias is None
    sep.depthwise.weight.data = torch.from_numpy(dw.reshape(3, 3, 8).transpose(2, 0, 1)[:, None].copy())
    sep.pointwise.weight.data = torch.from_numpy(pw.transpose(3, 2, 0, 1).copy())
    sep.pointwise.bias.data = torch.from_numpy(bias.copy())
    assert n_params(sep) == k.count_params()
    assert torch.allclose(sep(x), y_ref, atol=1e-5)


def test_grouped_conv_equals_keras_applications_resnext_construction():
    """Keras-applications ResNeXt: DepthwiseConv2D(depth_multiplier=c) then a fixed block-diagonal 1x1 conv."""
    filters, groups, stride = 64, 32, 2
    c = filters // groups
    x = torch.randn(2, filters, 8, 8)
    dw = torch.randn(3, 3, filters, c)  # Keras depthwise kernel layout (kh, kw, cin, multiplier)
    y_dw = F.conv2d(x, dw.permute(2, 3, 0, 1).reshape(filters * c, 1, 3, 3), stride=stride, padding=1,
                    groups=filters)
    fixed = torch.zeros(filters, filters * c, 1, 1)
    for i in range(filters):
        start = (i // c) * c * c + i % c
        fixed[i, start:start + c * c:c] = 1.0
    y_keras = F.conv2d(y_dw, fixed)

    grouped = nn.Conv2d(filters, filters, 3, stride, 1, groups=groups, bias=False)
    o = torch.arange(filters)
    g = o // c
    weight = torch.stack([dw[:, :, g[:, None] * c + torch.arange(c)[None, :], (o % c)[:, None]][..., oi, :]
                          for oi in range(filters)])  # (filters, kh, kw, c)
    grouped.weight.data = weight.permute(0, 3, 1, 2).contiguous()
    assert torch.allclose(grouped(x), y_keras, atol=1e-5)
