"""Converting Keras layers' arrays to PyTorch layouts, onto the modules the model's family places them on
(its :class:`~convzoo.models.spec.KerasMapping`, from layer names only).

Layouts: Conv2D kernels HWIO -> OIHW, depthwise (kh, kw, cin, mult) -> (cin*mult, 1, kh, kw),
Dense (in, out) -> (out, in), BatchNormalization gamma, beta, moving mean, moving variance (no gamma with
``scale=False``) -> weight, bias, running_mean, running_var. Pointwise and depthwise kernels stored in
another layout are recognised by shape (:mod:`.layouts`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ..errors import WeightsError
from ..layers import SeparableConv2d
from ..models.spec import Placement
from ..registry import families, family_of
from .keras_h5 import KerasLayer
from .layouts import KERAS_DEPTHWISE, KERAS_POINTWISE, fit_kernel
from .mapping import Mapped, Tensor


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


def keras_placements(names: list[str], model: nn.Module) -> tuple[list[Placement], list[str]]:
    """Where each Keras layer (by name) goes in ``model``, as its family places it, and messages naming the
    layers that fit nowhere. Raises :class:`WeightsError` for a model whose family has no Keras mapping."""
    family = family_of(model)
    if family is None or family.keras is None:
        raise WeightsError(f"no Keras mapping for {type(model).__name__}")
    return family.keras.place(names, model)


def keras_to_convzoo(layers: list[KerasLayer], model: nn.Module) -> Mapped:
    """Convert Keras layers to tensors under ``model``'s state-dict keys (see the module docstring)."""
    out = Mapped(layout="keras")
    by_name = {layer.name: layer for layer in layers}
    placed, out.unplaced = keras_placements(list(by_name), model)
    for name, path, partner in placed:
        try:
            module = model.get_submodule(path)
        except AttributeError:
            out.unplaced.append(f"Keras '{name}' (no module {path})")
            continue
        out.modules[name] = path
        _convert(by_name[name], path, module, by_name.get(partner) if partner else None, out)
    return out


def classifier_to_convzoo(layer: KerasLayer, model: nn.Module, out: Mapped) -> None:
    """Convert the Dense ``layer`` that classifies a wrapped application's pooled features onto ``model``'s
    classifier (``default_cfg.classifier``), whatever the layer's name; a Dense without bias gets a zero one."""
    path = model.default_cfg.classifier
    out.modules[layer.name] = path
    _convert(layer, path, model.get_submodule(path), None, out)
    weight = out.tensors.get(f"{path}.weight")
    if weight is not None and f"{path}.bias" not in out.tensors and len(layer.weights) == 1:
        out.tensors[f"{path}.bias"] = Tensor(torch.zeros(weight.value.shape[0]), f"Keras '{layer.name}' (no bias)")
        out.notes.append(f"Keras '{layer.name}' has no bias: {path}.bias set to zero")


def guess_keras_model(layers: list[KerasLayer]) -> str | None:
    """The registered model a Keras file was most likely written from, as the families judge its layer
    names and weight shapes."""
    shapes = {layer.name: [a.shape for _, a in layer.weights] for layer in layers}
    guesses = (f.keras.guess(shapes) for f in families() if f.keras is not None)
    return next((g for g in guesses if g is not None), None)


def guess_keras_file(root: KerasLayer) -> str | None:
    """The registered model of the deepest model nested in a Keras file (or of the file's own model) that a
    family recognises (see :func:`guess_keras_model`)."""
    for _, model in sorted(root.models(), key=lambda found: -len(found[0])):
        guess = guess_keras_model(model.weighted())
        if guess is not None:
            return guess
    return None
