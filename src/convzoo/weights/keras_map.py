"""Placing Keras layers onto convzoo modules and converting their arrays to PyTorch layouts.

Named layers map by rule (``block4_sepconv2_bn`` -> ``block4.sepconv2_bn``, ``conv3_block2_1_conv`` ->
``conv3.block2.conv1``); Keras' unnamed layers (``conv2d``, ``conv2d_1``, ..., ``batch_normalization_N``)
map by creation order, which is the order of their numeric suffixes, onto the matching convzoo modules in
module order. Layouts: Conv2D kernels HWIO -> OIHW, depthwise (kh, kw, cin, mult) -> (cin*mult, 1, kh, kw),
Dense (in, out) -> (out, in), BatchNormalization gamma, beta, moving mean, moving variance (no gamma with
``scale=False``) -> weight, bias, running_mean, running_var. Pointwise and depthwise kernels stored in
another layout are recognised by shape (:mod:`.layouts`).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..layers import ConvBnAct, SeparableConv2d
from .keras_h5 import KerasLayer
from .layouts import KERAS_DEPTHWISE, KERAS_POINTWISE, fit_kernel
from .mapping import Mapped, Tensor

_UNNAMED_CONV = re.compile(r"conv2d(?:_(\d+))?")
_UNNAMED_BN = re.compile(r"batch_normalization(?:_(\d+))?")
_RESNET_CONV = re.compile(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)")
_RESNET_GCONV = re.compile(r"conv(\d+)_block(\d+)_2_gconv")
_RESNET_PREACT = re.compile(r"conv(\d+)_block(\d+)_preact_bn")
_RESNET_FIXED = {"conv1_conv": "conv1.conv", "conv1_bn": "conv1.bn", "post_bn": "post_bn.bn", "predictions": "fc"}
_XCEPTION_NAMED = re.compile(r"(block\d+)_(.+)")


def _creation_order(name: str, pattern: re.Pattern[str]) -> int:
    """Keras numbers repeated default names ``conv2d``, ``conv2d_1``, ... in the order it creates them."""
    m = pattern.fullmatch(name)
    return int(m.group(1)) if m and m.group(1) else -1


def _conv_kernel(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a


def _depthwise_kernel(a: np.ndarray) -> np.ndarray:
    if a.ndim != 4:
        return a
    kh, kw, cin, mult = a.shape
    return a.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)


def _dense_kernel(a: np.ndarray) -> np.ndarray:
    return a.T if a.ndim == 2 else a


def _same(a: np.ndarray) -> np.ndarray:
    return a


# A DepthwiseConv2D's kernel, read into a grouped PyTorch conv (keras-applications' ResNeXt).
_ALIASES = {"depthwise_kernel": "kernel"}
Spec = tuple[tuple[str, str, Callable[[np.ndarray], np.ndarray]], ...]
Placement = tuple[KerasLayer, str, KerasLayer | None]  # Keras layer, convzoo module path, its _2_gconv
CONV: Spec = (("kernel", "weight", _conv_kernel), ("bias", "bias", _same))
SEPARABLE: Spec = (("depthwise_kernel", "depthwise.weight", _depthwise_kernel),
                   ("pointwise_kernel", "pointwise.weight", _conv_kernel), ("bias", "pointwise.bias", _same))
DENSE: Spec = (("kernel", "weight", _dense_kernel), ("bias", "bias", _same))
BATCH_NORM: Spec = (("gamma", "weight", _same), ("beta", "bias", _same), ("moving_mean", "running_mean", _same),
                    ("moving_variance", "running_var", _same))


def gconv_kernel(filters: int, c: int) -> np.ndarray:
    """The fixed block-diagonal 1x1 kernel (1, 1, filters*c, filters) that keras-applications' ResNeXt puts
    after its depthwise convolution (``_2_gconv``): output i sums depthwise outputs ``start + j*c``."""
    kernel = np.zeros((1, 1, filters * c, filters), dtype=np.float32)
    for i in range(filters):
        start = (i // c) * c * c + i % c
        kernel[:, :, start:start + c * c:c, i] = 1.0
    return kernel


def fold_grouped_conv(depthwise: np.ndarray, gconv: np.ndarray | None, groups: int) -> np.ndarray:
    """Fold keras-applications' ResNeXt pair (a depthwise kernel (kh, kw, cin, c) then a 1x1 kernel
    (1, 1, cin*c, out), by default :func:`gconv_kernel`) into one grouped PyTorch weight
    (out, cin // groups, kh, kw). Raises ValueError when the pair is not a ``groups``-way grouped conv."""
    kh, kw, cin, c = depthwise.shape
    if gconv is None:
        gconv = gconv_kernel(cin, c)
    out = gconv.shape[-1]
    if gconv.shape[:3] != (1, 1, cin * c) or cin % groups or out % groups:
        raise ValueError(f"depthwise {depthwise.shape} and 1x1 {gconv.shape} do not form a {groups}-group conv")
    dense = np.einsum("hwim,imo->oihw", depthwise, gconv.reshape(cin, c, out))
    cin_g, out_g = cin // groups, out // groups
    block = np.arange(out)[:, None] // out_g == np.arange(cin)[None, :] // cin_g
    if np.any(dense[~block]):
        raise ValueError(f"the 1x1 kernel is not block-diagonal over {groups} groups")
    return np.stack([dense[o, (o // out_g) * cin_g:(o // out_g + 1) * cin_g] for o in range(out)])


def _spec(module: nn.Module) -> Spec | None:
    if isinstance(module, SeparableConv2d):
        return SEPARABLE
    if isinstance(module, nn.BatchNorm2d):
        return BATCH_NORM
    if isinstance(module, nn.Conv2d):
        return CONV
    if isinstance(module, nn.Linear):
        return DENSE
    return None


def _assign(layer: KerasLayer, spec: Spec) -> tuple[dict[str, np.ndarray], list[str]]:
    """Arrays by role, and the roles or positions of arrays that fit no slot of ``spec``."""
    roles = layer.roles
    known = {r for r, _, _ in spec}
    if all(r is not None for r in roles):
        named = [(_ALIASES.get(r, r) if r not in known else r, a) for r, a in layer.weights if r is not None]
        return {r: a for r, a in named if r in known}, [r for r, _ in named if r not in known]
    order = [r for r, _, _ in spec]
    if spec is BATCH_NORM and len(roles) == 3:
        order = order[1:]
    got = {order[i]: a for i, (_, a) in enumerate(layer.weights[:len(order)])}
    return got, [f"vars/{i}" for i in range(len(order), len(roles))]


def _convert(layer: KerasLayer, path: str, module: nn.Module, partner: KerasLayer | None, out: Mapped) -> None:
    origin = f"Keras '{layer.name}'"
    spec = _spec(module)
    if spec is None and isinstance(module, nn.Identity) and layer.weights:
        # A removed classifier: convert anyway, so the tensors are reported as a skipped head.
        spec = DENSE if layer.weights[0][1].ndim == 2 else CONV
    if spec is None:
        out.mismatched.append(f"{origin} -> {path}: a {type(module).__name__} takes no Keras weights")
        return
    arrays, leftovers = _assign(layer, spec)
    out.unplaced.extend(f"Keras '{layer.name}/{r}'" for r in leftovers)
    kernel = arrays.get("kernel")
    if (spec is CONV and kernel is not None and kernel.ndim == 4 and module.groups > 1
            and (partner is not None or kernel.shape[2] == module.in_channels)):
        gconv = None
        if partner is not None:
            gconv = _assign(partner, CONV)[0].get("kernel")
            origin = f"Keras '{layer.name}' + '{partner.name}'"
        try:
            arrays["kernel"] = fold_grouped_conv(kernel, gconv, module.groups).transpose(2, 3, 1, 0)
        except ValueError as exc:
            out.mismatched.append(f"{origin} -> {path}.weight: {exc}")
            return
    elif partner is not None:
        out.unplaced.append(f"Keras '{partner.name}' (its conv {path} is not grouped)")
    for role, suffix, fn in spec:
        if role not in arrays:
            continue
        key = f"{path}.{suffix}"
        owner, _, param = suffix.rpartition(".")
        fitted = None
        if param == "weight":
            target = module.get_submodule(owner) if owner else module
            fitted = fit_kernel(torch.from_numpy(np.ascontiguousarray(arrays[role])), target, True,
                                f"{origin} -> {key}")
        if fitted is None:
            value = torch.from_numpy(np.ascontiguousarray(fn(arrays[role])))
        else:
            value, layout = fitted
            if layout not in (KERAS_POINTWISE, KERAS_DEPTHWISE):
                out.notes.append(f"{origin} -> {key}: kernel stored as {layout}, converted")
        out.tensors[key] = Tensor(value, origin)


def _place_ordered(layers: list[KerasLayer], pattern: re.Pattern[str], slots: list[str],
                   placed: list[Placement], out: Mapped, what: str) -> None:
    """Pair Keras' unnamed layers, in creation order, with ``slots`` in order."""
    ordered = sorted(layers, key=lambda layer: _creation_order(layer.name, pattern))
    for layer, slot in zip(ordered, slots):
        placed.append((layer, slot, None))
    for layer in ordered[len(slots):]:
        out.unplaced.append(f"Keras '{layer.name}' (the model has {len(slots)} {what})")


def _split_unnamed(layers: list[KerasLayer]) -> tuple[list[KerasLayer], list[KerasLayer], list[KerasLayer]]:
    convs = [x for x in layers if _UNNAMED_CONV.fullmatch(x.name)]
    bns = [x for x in layers if _UNNAMED_BN.fullmatch(x.name)]
    rest = [x for x in layers if not (_UNNAMED_CONV.fullmatch(x.name) or _UNNAMED_BN.fullmatch(x.name))]
    return convs, bns, rest


def _place_xception(layers: list[KerasLayer], model: nn.Module, out: Mapped) -> list[Placement]:
    placed: list[Placement] = []
    convs, bns, rest = _split_unnamed(layers)
    slots = [n for n in model.stage_names if getattr(getattr(model, n), "has_residual_conv", False)]
    _place_ordered(convs, _UNNAMED_CONV, [f"{n}.residual" for n in slots], placed, out, "residual convs")
    _place_ordered(bns, _UNNAMED_BN, [f"{n}.residual_bn" for n in slots], placed, out, "residual BNs")
    for layer in rest:
        m = _XCEPTION_NAMED.fullmatch(layer.name)
        path = "fc" if layer.name == "predictions" else f"{m.group(1)}.{m.group(2)}" if m else None
        if path is None:
            out.unplaced.append(f"Keras '{layer.name}'")
        else:
            placed.append((layer, path, None))
    return placed


def _place_inception(layers: list[KerasLayer], model: nn.Module, out: Mapped) -> list[Placement]:
    placed: list[Placement] = []
    convs, bns, rest = _split_unnamed(layers)
    slots = [n for n, m in model.named_modules() if isinstance(m, ConvBnAct) and not n.startswith("AuxLogits")]
    _place_ordered(convs, _UNNAMED_CONV, [f"{n}.conv" for n in slots], placed, out, "convolutions")
    _place_ordered(bns, _UNNAMED_BN, [f"{n}.bn" for n in slots], placed, out, "BatchNorms")
    for layer in rest:
        if layer.name == "predictions":
            placed.append((layer, "fc", None))
        else:
            out.unplaced.append(f"Keras '{layer.name}'")
    return placed


def _place_resnet(layers: list[KerasLayer], model: nn.Module, out: Mapped) -> list[Placement]:
    placed: list[Placement] = []
    names = {x.name for x in layers}
    gconvs = {x.name.replace("_2_gconv", "_2_conv"): x for x in layers if _RESNET_GCONV.fullmatch(x.name)}
    for layer in layers:
        name = layer.name
        if _RESNET_GCONV.fullmatch(name):
            if name.replace("_2_gconv", "_2_conv") not in names:
                out.unplaced.append(f"Keras '{name}' (no matching _2_conv)")
            continue
        if name in _RESNET_FIXED:
            placed.append((layer, _RESNET_FIXED[name], None))
        elif m := _RESNET_CONV.fullmatch(name):
            placed.append((layer, f"conv{m.group(1)}.block{m.group(2)}.{m.group(4)}{m.group(3)}", gconvs.get(name)))
        elif m := _RESNET_PREACT.fullmatch(name):
            placed.append((layer, f"conv{m.group(1)}.block{m.group(2)}.preact_bn", None))
        else:
            out.unplaced.append(f"Keras '{name}'")
    return placed


def keras_placements(layers: list[KerasLayer], model: nn.Module, out: Mapped) -> list[Placement]:
    """Where each Keras layer goes in ``model``: (layer, convzoo module path, its ``_2_gconv`` partner or
    None). Layers that fit nowhere are added to ``out.unplaced``. Only layer names are read. Raises
    TypeError for a model family without a Keras layout."""
    from ..models.inception_v3 import InceptionV3
    from ..models.resnet import ResNet
    from ..models.xception import Xception

    if isinstance(model, Xception):
        return _place_xception(layers, model, out)
    if isinstance(model, InceptionV3):
        return _place_inception(layers, model, out)
    if isinstance(model, ResNet):
        return _place_resnet(layers, model, out)
    raise TypeError(f"no Keras mapping for {type(model).__name__}")


def keras_to_convzoo(layers: list[KerasLayer], model: nn.Module) -> Mapped:
    """Convert Keras layers to tensors under ``model``'s state-dict keys (see the module docstring)."""
    out = Mapped(layout="keras")
    for layer, path, partner in keras_placements(layers, model, out):
        try:
            module = model.get_submodule(path)
        except AttributeError:
            out.unplaced.append(f"Keras '{layer.name}' (no module {path})")
            continue
        out.modules[layer.name] = path
        _convert(layer, path, module, partner, out)
    return out


def guess_keras_model(layers: list[KerasLayer]) -> str | None:
    """The convzoo model a Keras file was most likely written from, judged by its layer names and, for
    ResNeXt, the shape of the first 3x3 kernel (depthwise: (3, 3, filters, filters // groups))."""
    names = [x.name for x in layers]
    if "block14_sepconv2" in names:
        return "xception"
    blocks = [int(m.group(1)) for n in names if (m := re.fullmatch(r"conv4_block(\d+)_1_conv", n))]
    if blocks:
        depth = {6: 50, 23: 101, 36: 152}.get(max(blocks))
        if depth is None:
            return None
        first = next((x for x in layers if x.name == "conv2_block1_2_conv"), None)
        kernel = first.weights[0][1] if first is not None and first.weights else None
        if kernel is not None and kernel.ndim == 4 and kernel.shape[2] != kernel.shape[3]:
            c = kernel.shape[3]
            return f"resnext{depth}_{kernel.shape[2] // c}x{c}d"
        return f"resnet{depth}v2" if any(_RESNET_PREACT.fullmatch(n) for n in names) else f"resnet{depth}"
    if sum(1 for n in names if _UNNAMED_CONV.fullmatch(n)) == 94:
        return "inception_v3_keras"
    return None
