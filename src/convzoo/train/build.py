"""Building the network a recipe trains and the arguments that rebuild it: start weights, a new classifier,
the run's one preprocessing and the weight record its checkpoints carry, and the parameter groups that
regularisation and freezing act on."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..factory import create_model
from ..models.spec import WeightRecord
from ..preprocess import Normalize, recorded_normalize
from ..registry import ModelCfg, model_kwargs_from_json
from ..weights import load_weights
from .recipes import Recipe

# Where a run's preprocessing came from, for the run's report.
FROM_RECIPE, FROM_WEIGHTS, FROM_MODEL = "set for the run", "recorded with the start weights", "the model's own"


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


def run_preprocessing(recipe: Recipe, model: nn.Module) -> tuple[Normalize, str]:
    """The one preprocessing of a new run, and where it comes from: the user's (the recipe's
    ``preprocessing`` mode, or its ``mean`` and ``std``), else the one recorded with the start weights
    (``model.weights_meta``, which :func:`load_start_weights` attached, whatever the file's format), else the
    model's registered one (the seed's CIFAR-10 statistics for the CIFAR models)."""
    if recipe.preprocessing is not None:
        return Normalize(mode=recipe.preprocessing), FROM_RECIPE
    if recipe.mean is not None and recipe.std is not None:
        return Normalize.matching(tuple(recipe.mean), tuple(recipe.std)), FROM_RECIPE
    origin = FROM_WEIGHTS if getattr(model, "weights_meta", None) is not None else FROM_MODEL
    return recorded_normalize(model), origin


def recorded_run_preprocessing(config: dict[str, Any], where: str) -> Normalize:
    """The preprocessing a run's ``config.json`` records (``where`` names it in errors). A run written before
    runs recorded one reads as the statistics it trained with (its ``normalization``). Raises
    :class:`CheckpointError` for a record that is neither."""
    try:
        return Normalize.from_json(config["preprocessing"] if "preprocessing" in config else
                                   config.get("normalization"), where)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None


def run_record(model: nn.Module, name: str, size: tuple[int, int], resample: str,
               normalize: Normalize) -> WeightRecord:
    """The weight record of a run's checkpoints (``model.weights_meta`` when they are written): the run's
    preprocessing, its input ``size`` (H, W), its validation transform (``resample``, no crop beyond the
    cover resize), so that ``predict``, ``eval`` and ``export`` of a checkpoint prepare images as the run
    validated them. ``name`` identifies the run."""
    cfg = model.default_cfg
    mode, mean, std = normalize.record()
    return WeightRecord(name, cfg.name, "convzoo train", None, None, None, None, model.num_classes > 0,
                        (cfg.input_size[0], *size), resample, 1.0, mode, tuple(mean), tuple(std), None)


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
