"""Building the network a recipe trains and the arguments that rebuild it: start weights, a new classifier,
and the parameter groups that regularisation and freezing act on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..factory import create_model
from ..preprocess import MODES, mode_stats
from ..registry import ModelCfg, model_kwargs_from_json
from ..weights import load_weights
from .recipes import Recipe

# Per-channel mean and std in 0-255 pixel units for each preprocessing mode, and whether the mode feeds
# BGR images (preprocess.mode_stats, by mode).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...], bool]] = {m: mode_stats(m) for m in MODES}


def build_model(recipe: Recipe, num_classes: int) -> nn.Module:
    """The recipe's model for ``num_classes`` classes at the recipe's input size (freshly initialised)."""
    kwargs = model_kwargs_from_json(recipe.model, recipe.model_kwargs)
    size = tuple(recipe.input_size) if recipe.input_size else None
    return create_model(recipe.model, num_classes=num_classes, input_size=size, **kwargs)


def load_start_weights(model: nn.Module, path: str | Path) -> str:
    """Load the weights a fine-tuning run starts from (anything :func:`convzoo.weights.load_weights` imports).

    Every tensor but the classifier must fit. A classifier for another number of classes is not loaded:
    the model keeps its freshly initialised one, sized for the new classes. Returns a one-line report.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = load_weights(model, path, strict=True)
    replaced = " (classifier replaced for the new classes)" if report.skipped else ""
    return f"started from {report.path} ({report.format}, {len(report.loaded)} tensors){replaced}"


def rebuild_args(recipe: Recipe, num_classes: int) -> dict[str, Any]:
    """The JSON ``create_model`` arguments that rebuild the trained model (tables as lists and objects, read
    back by :func:`~convzoo.registry.model_kwargs_from_json`)."""
    args: dict[str, Any] = {"num_classes": num_classes, **recipe.model_kwargs}
    if recipe.input_size:
        args["input_size"] = list(recipe.input_size)
    return args


def normalization(recipe: Recipe, cfg: ModelCfg) -> tuple[tuple[float, ...], tuple[float, ...], bool]:
    """The recipe's per-channel mean and std (pixel units), or those of the model's preprocessing; and
    whether the model takes BGR input."""
    if recipe.mean is not None and recipe.std is not None:
        return tuple(recipe.mean), tuple(recipe.std), False
    if cfg.preprocessing not in NORMALIZATION:
        raise ConfigError(f"{cfg.name}: no normalisation known for preprocessing {cfg.preprocessing!r}; "
                          "set mean and std")
    return NORMALIZATION[cfg.preprocessing]


def input_size(recipe: Recipe, cfg: ModelCfg) -> tuple[int, int]:
    """The (H, W) the recipe trains at: its own ``input_size``, else the model's."""
    return (int(recipe.input_size[0]), int(recipe.input_size[1])) if recipe.input_size else tuple(cfg.input_size[1:])


def kernels(model: nn.Module) -> list[nn.Parameter]:
    """The weights of every convolution and linear layer: what Keras' ``kernel_regularizer`` acts on."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def kernel_l2(recipe: Recipe, model: nn.Module) -> float:
    """The Keras-style L2 factor in force: the recipe's, or (when it is None) the model's ``kernel_l2``."""
    return float(getattr(model, "kernel_l2", 0.0)) if recipe.kernel_l2 is None else recipe.kernel_l2


def make_optimizer(recipe: Recipe, model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """SGD or AdamW over every parameter; ``weight_decay`` on kernels only. ``fused``: one kernel per
    step for all parameters (CUDA)."""
    kernel_ids = {id(p) for p in kernels(model)}
    decay = [p for p in model.parameters() if id(p) in kernel_ids]
    rest = [p for p in model.parameters() if id(p) not in kernel_ids]
    groups = [dict(params=decay, weight_decay=recipe.weight_decay), dict(params=rest, weight_decay=0.0)]
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr, fused=fused or None)
    nesterov = recipe.nesterov and recipe.momentum > 0
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=nesterov, fused=fused or None)


def set_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the classifier."""
    head = {id(p) for p in model.get_classifier().parameters()}
    for p in model.parameters():
        p.requires_grad_(not frozen or id(p) in head)


def train_mode(model: nn.Module, frozen: bool) -> None:
    """Put ``model`` in training mode; with ``frozen``, the BatchNorm layers outside the classifier keep
    their running statistics (inference mode), as Keras does for layers with ``trainable=False``."""
    model.train()
    if frozen:
        head = set(model.get_classifier().modules())
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head:
                m.eval()
