"""Training recipes: plain dataclasses, looked up by name and overridden field by field.

Every field can be set from the command line with ``--set field=value``; values are parsed by the
field's type (``--set milestones=100,200``, ``--set nesterov=false``, ``--set kernel_l2=none``,
``--set model_kwargs='{"drop_rate": 0.2}'``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from ..data.augment import TrainAugment
from ..data.dataset import MAX_SIDE
from ..data.streaming import PIPELINES as STREAM_PIPELINES
from ..errors import ConfigError
from ..preprocess import MODES
from ..utils.typed import coerce

OPTIMIZERS = ("sgd", "adamw")
PIPELINES = ("auto", *STREAM_PIPELINES)
# Seeds are non-negative signed 64-bit integers (what torch.manual_seed and numpy's SeedSequence both take).
MAX_SEED = 2 ** 63 - 1
# The epochs a run with a time budget trains before it fixes how many it trains in all: the first epoch
# builds kernels and caches, the second shows the steady pace.
BUDGET_PROBE_EPOCHS = 2
# More epochs than any run could finish (and few enough for the schedule's float arithmetic).
MAX_EPOCHS = 1_000_000
SCHEDULES = ("step", "cosine", "linear", "constant")
# Command-line words for None (in a field that may be None) and for booleans.
NONE_WORDS = ("none", "null", "")
BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
              "off": False}


@dataclass(frozen=True)
class Range:
    """The numbers a recipe field takes: from ``low`` to ``high`` (infinite: no upper bound, which also
    refuses infinity), each end included unless ``low_open``/``high_open``."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open or math.isinf(self.high) else value <= self.high
        return above and below

    def __str__(self) -> str:
        if math.isinf(self.high) and not self.low_open:
            return f"at least {_num(self.low)}"
        high = "inf)" if math.isinf(self.high) else f"{_num(self.high)}{')' if self.high_open else ']'}"
        return f"in {'(' if self.low_open else '['}{_num(self.low)}, {high}"


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


# The largest float32: the optimizer and the loss take the rates and factors below as float32 scalars.
FLOAT32_MAX = 3.4028234663852886e38
PROBABILITY = Range(0, 1)
POSITIVE = Range(0, low_open=True)
RATE = Range(0, FLOAT32_MAX, low_open=True)
FACTOR = Range(0, FLOAT32_MAX)
# The range of each numeric field of :class:`Recipe` (each value of a tuple field; None, where a field may be
# None, is not a number and always allowed). The streaming augmentation's fields are checked by
# ``TrainAugment.validate``.
FIELD_RANGES: dict[str, Range] = {
    "epochs": Range(1, MAX_EPOCHS), "batch_size": Range(1), "lr": RATE, "momentum": PROBABILITY, "weight_decay": FACTOR,
    "kernel_l2": FACTOR, "milestones": Range(0), "gamma": POSITIVE, "warmup_epochs": Range(0),
    "warmup_start": PROBABILITY, "min_lr": FACTOR, "label_smoothing": Range(0, 1, high_open=True),
    "aux_weight": FACTOR, "mean": Range(0, 255), "std": POSITIVE, "shift": Range(0, 0.5, high_open=True),
    "cutout": Range(0, MAX_SIDE), "val_fraction": Range(0, 1, low_open=True, high_open=True),
    "split_seed": Range(0, MAX_SEED),
    "seed": Range(0, MAX_SEED), "freeze_epochs": Range(0), "workers": Range(0), "checkpoint_every_min": Range(0),
    "time_budget_min": Range(0), "input_size": Range(1, MAX_SIDE),
}


@dataclass
class Recipe:
    """Everything that decides how a model is trained, except the data and the machine.

    Regularisation comes in two forms. ``kernel_l2`` is Keras' ``kernel_regularizer=l2(kernel_l2)``: the
    penalty ``kernel_l2 * sum(w ** 2)`` over every convolution and linear kernel (not biases, not
    BatchNorm) is added to the loss. Its gradient is ``2 * kernel_l2 * w``, so with SGD it equals
    ``weight_decay = 2 * kernel_l2`` applied to those kernels only. ``weight_decay`` is PyTorch's (coupled
    for SGD, decoupled for AdamW) and also applies to kernels only. ``kernel_l2=None`` takes the model's
    own ``kernel_l2`` attribute (1e-4 for the seed's he_wd variants), or 0.

    The learning rate is a function of the (fractional) epoch: a linear warm-up over ``warmup_epochs``
    from ``warmup_start * lr``, then ``schedule``: 'step' (multiplied by ``gamma`` at each of the
    ``milestones``, changing at epoch boundaries as Keras' ``LearningRateScheduler``), 'cosine' or
    'linear' (from ``lr`` down to ``min_lr`` at the last epoch), or 'constant'.

    ``flip``, ``shift`` (fraction of the size, zero fill) and ``cutout`` (side in pixels of a square zeroed
    at a random place, 0 for none) augment each training batch.

    The run's one preprocessing is the user's choice when set: ``preprocessing`` (a mode of
    :mod:`convzoo.preprocess`: 'tf', 'caffe', 'torch', 'cifar'), or ``mean``/``std`` (per RGB channel, in
    0-255 pixel units); left at None it is the start weights' recorded preprocessing, else the model's own
    (the CIFAR models' is the seed's CIFAR-10 statistics); ``config.json`` and the checkpoints record the
    one chosen, and ``predict``, ``eval`` and ``export`` read it. ``freeze_epochs``: train only the
    classifier for that many epochs (the rest of the network runs in inference mode, as Keras layers with
    ``trainable=False``). ``aux_weight`` weighs the loss of an auxiliary classifier (Inception V3 built with
    ``aux_logits=True``). ``sync_bn``: under DistributedDataParallel, BatchNorm statistics over the global
    batch rather than each rank's shard.
    ``model_kwargs`` go to ``create_model`` (JSON values; tables such as Xception's ``blocks`` as lists
    of objects).

    The data pipeline: ``pipeline`` 'memory' decodes the data once into memory at the training size,
    'stream' decodes image files on the fly in ``workers`` loader processes, 'auto' streams an image folder
    whose images would not fit in memory at the training size (``data.streaming.choose_pipeline``); CIFAR
    is always in memory, tar shards always stream. ``flip``, ``shift`` and ``cutout`` augment in-memory
    data; streamed images get the ImageNet augmentation of the fields named as timm's (``scale``,
    ``ratio``, ``hflip``, ``vflip``, ``color_jitter``, ``auto_augment``, ``interpolation``, ``re_prob``,
    ``re_mode``: see ``data.augment.TrainAugment``). ``mixup``/``cutmix`` (with ``mixup_prob`` and
    ``mixup_switch_prob``) mix the batches of either pipeline; the loss then takes soft targets and the
    training accuracy counts agreement with each mixed target's larger class. ``checkpoint_every_min``: also
    write ``last/`` every that many minutes inside an epoch (0: at epoch ends only), so that ``--resume``
    continues from the middle of a long epoch.

    ``time_budget_min``: with a budget (minutes of wall time, 0 for none), the run times its first
    :data:`BUDGET_PROBE_EPOCHS` epochs and then trains as many epochs as fit in the budget
    (:func:`budget_epochs`); from then on the recipe the run records has that many ``epochs`` and no budget,
    so a resumed run trains exactly them. The learning rate of the probe epochs must not depend on
    ``epochs``: a 'step' or 'constant' schedule, or a warm-up of at least the probe.
    """

    name: str = "custom"
    model: str = "xception_cifar"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int] | None = None
    epochs: int = 300
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    kernel_l2: float | None = None
    schedule: str = "step"
    milestones: tuple[int, ...] = (100, 200)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    warmup_start: float = 0.1
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    aux_weight: float = 0.4
    preprocessing: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flip: bool = True
    shift: float = 0.125
    cutout: int = 0
    val_fraction: float = 0.1
    split_seed: int = 0
    seed: int = 0
    freeze_epochs: int = 0
    sync_bn: bool = True
    pipeline: str = "auto"
    workers: int = 2
    checkpoint_every_min: float = 0.0
    time_budget_min: float = 0.0
    scale: tuple[float, float] = TrainAugment.scale
    ratio: tuple[float, float] = TrainAugment.ratio
    hflip: float = TrainAugment.hflip
    vflip: float = TrainAugment.vflip
    color_jitter: float = TrainAugment.color_jitter
    auto_augment: str | None = TrainAugment.auto_augment
    interpolation: str | None = TrainAugment.interpolation
    re_prob: float = TrainAugment.re_prob
    re_mode: str = TrainAugment.re_mode
    mixup: float = TrainAugment.mixup
    cutmix: float = TrainAugment.cutmix
    mixup_prob: float = TrainAugment.mixup_prob
    mixup_switch_prob: float = TrainAugment.mixup_switch_prob

    def validate(self) -> "Recipe":
        """Raise :class:`ConfigError` for a value no run could use (a number outside its field's range in
        :data:`FIELD_RANGES`, an unknown choice, fields that contradict each other); return the recipe."""
        for key in FIELD_RANGES:
            check_range(key, getattr(self, key))
        checks = [
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.min_lr <= self.lr, f"min_lr must be at most lr ({self.lr:g}), got {self.min_lr:g}"),
            (self.schedule != "step" or self.gamma <= 1 or math.log(self.lr) + len(self.milestones) * math.log(
                self.gamma) <= math.log(FLOAT32_MAX), f"the step schedule's largest learning rate, lr * gamma ** "
             f"{len(self.milestones)}, must be at most {FLOAT32_MAX:g}; gamma {self.gamma:g} is too large"),
            ((self.mean is None) == (self.std is None), "mean and std must both be set or both be none"),
            (self.mean is None or len(self.mean) == len(self.std or ()) == 3,
             f"mean and std must have 3 values (one per colour channel), got {self.mean} and {self.std}"),
            (self.preprocessing is None or self.preprocessing in MODES,
             f"preprocessing must be one of {', '.join(MODES)}, got {self.preprocessing!r}"),
            (self.preprocessing is None or self.mean is None,
             f"preprocessing {self.preprocessing!r} and mean/std both set: set one of them"),
            (self.input_size is None or len(self.input_size) == 2,
             f"input_size must be two positive integers H,W, got {self.input_size}"),
            (self.pipeline in PIPELINES, f"pipeline must be one of {', '.join(PIPELINES)}, got {self.pipeline!r}"),
            (not self.time_budget_min or self.schedule in ("step", "constant")
             or self.warmup_epochs >= BUDGET_PROBE_EPOCHS,
             f"time_budget_min needs a learning rate that the budget cannot change while it is measured: a "
             f"warm-up of at least {BUDGET_PROBE_EPOCHS} epochs with the {self.schedule} schedule, got "
             f"warmup_epochs={self.warmup_epochs}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe {self.name}: {message}")
        try:
            self.augment()
        except ConfigError as e:
            raise ConfigError(f"recipe {self.name}: {e}") from None
        return self

    def augment(self) -> TrainAugment:
        """The streaming augmentation these fields describe (validated)."""
        return TrainAugment(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainAugment)}).validate()

    def as_dict(self) -> dict[str, Any]:
        """The recipe as JSON-friendly values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def budget_epochs(recipe: Recipe, elapsed: float, epoch_seconds: float) -> int:
    """How many epochs a run with ``recipe.time_budget_min`` trains: those that fit in the budget after
    ``elapsed`` seconds of the :data:`BUDGET_PROBE_EPOCHS` probe epochs, at ``epoch_seconds`` each (the last
    probe epoch's time), at most ``recipe.epochs``; at least one epoch past the warm-up and the frozen epochs
    (a shorter run would end with its learning rate still climbing, or its body never trained)."""
    more = math.floor((recipe.time_budget_min * 60 - elapsed) / max(epoch_seconds, 1e-9))
    least = max(BUDGET_PROBE_EPOCHS, math.ceil(recipe.warmup_epochs) + 1, recipe.freeze_epochs + 1)
    return min(recipe.epochs, max(BUDGET_PROBE_EPOCHS + more, least))


def learning_rate(recipe: Recipe, epoch: float) -> float:
    """The learning rate at ``epoch`` (fractional: 2.5 is half-way through the third epoch)."""
    if epoch < recipe.warmup_epochs:
        start = recipe.warmup_start * recipe.lr
        return start + (recipe.lr - start) * epoch / recipe.warmup_epochs
    if recipe.schedule == "step":
        return recipe.lr * recipe.gamma ** sum(int(epoch) >= m for m in recipe.milestones)
    if recipe.schedule == "constant":
        return recipe.lr
    span = max(recipe.epochs - recipe.warmup_epochs, 1e-12)
    progress = min(max((epoch - recipe.warmup_epochs) / span, 0.0), 1.0)
    factor = 0.5 * (1 + math.cos(math.pi * progress)) if recipe.schedule == "cosine" else 1 - progress
    return recipe.min_lr + (recipe.lr - recipe.min_lr) * factor


def _seed_recipe(model: str, kernel_l2: float) -> Recipe:
    return Recipe(name=model, model=model, epochs=300, batch_size=64, optimizer="sgd", lr=0.01, momentum=0.9,
                  nesterov=True, kernel_l2=kernel_l2, schedule="step", milestones=(100, 200), gamma=0.1,
                  flip=True, shift=0.125)


# The seed's CIFAR-10 recipe, per seed variant: SGD (momentum 0.9, Nesterov), batch 64, lr 0.01 divided by
# 10 at epochs 100 and 200 of 300, flip and shift up to 1/8; Keras L2 1e-4 on kernels for the he_wd family.
# The seed's CIFAR-10 mean and std are the CIFAR models' own preprocessing ('cifar').
SEED_RECIPES = {
    "xception_cifar": _seed_recipe("xception_cifar", 0.0),
    "xception_cifar_he_wd": _seed_recipe("xception_cifar_he_wd", 1e-4),
    "xception_cifar_slim": _seed_recipe("xception_cifar_slim", 1e-4),
    "xception_cifar_slim_thinner": _seed_recipe("xception_cifar_slim_thinner", 1e-4),
    "inception_v3_cifar": _seed_recipe("inception_v3_cifar", 0.0),
}

# The recipe of `make demo`: the most held-out accuracy from 3.5 minutes of training on 2 CPU cores
# (docs/FAST_RECIPE.md records the runs behind each value). A tiny Xception that downsamples early buys
# epochs; a linear one-cycle schedule, label smoothing and kernel weight decay are the cheap regularisers.
# The budget fixes the schedule's length after the probe: ~25 epochs on an AVX2 CPU, more where bf16 pays.
FAST = Recipe(
    name="fast",
    model="xception_cifar_tiny",
    epochs=60,
    time_budget_min=3.5,
    batch_size=64,
    optimizer="sgd",
    lr=0.2,
    momentum=0.9,
    nesterov=True,
    weight_decay=1e-3,
    kernel_l2=0.0,
    schedule="linear",
    warmup_epochs=5.0,
    warmup_start=0.0,
    label_smoothing=0.1,
)

RECIPES: dict[str, Recipe] = {**SEED_RECIPES, "fast": FAST}


def list_recipes() -> list[str]:
    """The names of the built-in recipes, sorted."""
    return sorted(RECIPES)


def get_recipe(name: str) -> Recipe:
    """A fresh copy of the built-in recipe ``name``, or :class:`ConfigError` naming the closest ones."""
    if name not in RECIPES:
        close = difflib.get_close_matches(name, list(RECIPES), n=3, cutoff=0.4)
        hint = f"; closest: {', '.join(close)}" if close else f"; recipes: {', '.join(list_recipes())}"
        raise ConfigError(f"unknown recipe {name!r}{hint}")
    return dataclasses.replace(RECIPES[name], model_kwargs=json.loads(json.dumps(RECIPES[name].model_kwargs)))


def field_names() -> list[str]:
    """The names of the recipe fields, in declaration order."""
    return [f.name for f in dataclasses.fields(Recipe)]


def check_range(key: str, value: Any) -> None:
    """:class:`ConfigError` naming field ``key``, its range (:data:`FIELD_RANGES`) and ``value`` when ``value``
    (or one value of a tuple) is not a finite number in that range."""
    bounds = FIELD_RANGES.get(key)
    if bounds is None or value is None:
        return
    values = value if isinstance(value, (tuple, list)) else (value,)
    if not all(isinstance(v, (int, float)) and math.isfinite(v) and v in bounds for v in values):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        each = "each value of " if isinstance(value, (tuple, list)) else ""
        raise ConfigError(f"{each}recipe field {key} must be {bounds}, got {shown}")


def override(recipe: Recipe, **values: Any) -> Recipe:
    """``recipe`` with ``values`` replacing fields (already typed values); ConfigError for an unknown name or
    a number outside its field's range."""
    for key, value in values.items():
        _check_field(key)
        check_range(key, value)
    return dataclasses.replace(recipe, **values)


def apply_settings(recipe: Recipe, settings: list[str]) -> Recipe:
    """``recipe`` with each ``'field=value'`` of ``settings`` applied, values parsed by the field's type and
    checked against its range (:func:`check_range`)."""
    hints = typing.get_type_hints(Recipe)
    values = {}
    for item in settings:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"--set expects field=value, got {item!r}")
        _check_field(key)
        values[key] = parse_value(key, text.strip(), hints[key])
        check_range(key, values[key])
    return dataclasses.replace(recipe, **values)


def from_dict(values: dict[str, Any]) -> Recipe:
    """The recipe recorded by :meth:`Recipe.as_dict` (lists become tuples again); ConfigError naming a field
    whose value does not fit its type or range."""
    hints = typing.get_type_hints(Recipe)
    typed = {}
    for key, value in values.items():
        _check_field(key)
        typed[key] = coerce(value, hints[key], f"recipe field {key}")
        check_range(key, typed[key])
    return Recipe(**typed)


def _check_field(key: str) -> None:
    names = field_names()
    if key not in names:
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else f"; fields: {', '.join(names)}"
        raise ConfigError(f"unknown recipe field {key!r}{hint}")


def parse_value(key: str, text: str, hint: Any) -> Any:
    """The command-line text of field ``key`` as a value of type ``hint``: 'none' (or 'null', or nothing) for
    a field that may be None, true/false (also yes/no, on/off, 1/0) for booleans, comma-separated values or a
    JSON list for tuples, a JSON object for dicts. ConfigError when it does not fit."""
    name = f"recipe field {key}"
    alternatives = typing.get_args(hint)
    if type(None) in alternatives:
        if text.lower() in NONE_WORDS:
            return None
        hint = next(a for a in alternatives if a is not type(None))
    return coerce(_from_text(name, text, hint), hint, name)


def _from_text(name: str, text: str, hint: Any) -> Any:
    """The JSON-like value ``text`` stands for, for :func:`coerce` to check against ``hint``."""
    origin = typing.get_origin(hint)
    if hint is bool:
        return BOOL_WORDS.get(text.lower(), text)
    if origin is tuple:
        if not text.startswith("["):
            return [_number(t.strip()) for t in text.split(",") if t.strip()]
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError(f"{name}: expected comma-separated values, got {text!r}") from None
    if origin is dict:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{name}: expected a JSON object, got {text!r} ({e.msg})") from None
    return text if hint is str else _number(text)


def _number(text: str) -> int | float | str:
    """``text`` as an int or a float where it is one, else the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
