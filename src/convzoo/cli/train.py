"""``convzoo train``, ``eval``, ``compare`` and ``recipes``: training runs, their evaluation and comparison,
and the training recipes.

The trainer reports through the ``convzoo.train`` logger; while ``convzoo train`` runs, its INFO lines are
printed to stdout as they come. A :class:`~convzoo.errors.ConvzooWarning` (e.g. ``eval --preprocessing``
differing from the recorded mode) is one ``convzoo: warning: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any

from ..errors import ConfigError, ConvzooWarning
from ..optimize import tune_cpu_allocator
from ..preprocess import MODES
from ..runtime import COMPILE_MODES, DEVICES
from ..train.compare import compare
from ..train.evaluate import evaluate_target
from ..train.recipes import apply_settings, get_recipe, list_recipes, override
from ..train.trainer import TrainOptions, resume_recipe, train

DEFAULT_RECIPE = "fast"
TRAIN_LOGGER = "convzoo.train"
# Flags that change what a run is; a resumed run keeps what it was started with.
_RUN_DEFINING = ("recipe", "data", "val_data", "batch_size", "lr", "seed", "weights", "freeze_epochs", "settings",
                 "out", "overwrite")


def register(subparsers: Any) -> None:
    """Add the training verbs to the ``convzoo`` parser."""
    _register_train(subparsers)
    p = subparsers.add_parser("eval", help="accuracy and confusion matrix of a run or checkpoint")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    p.add_argument("--data", help="evaluate on this data's test split (default: the run's validation split)")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint of a run")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, n, per_class)")
    p.add_argument("--preprocessing", choices=MODES,
                   help="normalise with this mode instead of the one recorded with the weights (warns)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser("compare", help="markdown table and overlaid curves of several runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.png", help="the overlay figure (default: compare.png beside the runs)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("recipes", help="list the training recipes, or show one's fields")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_recipes)


def _register_train(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a model (single process, or every rank under torchrun)",
                              description="Train a model with a recipe. Any recipe field can be set with "
                                          "--set FIELD=VALUE; `convzoo recipes NAME` lists the fields.")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--recipe", help=f"recipe name (default: {DEFAULT_RECIPE}); `convzoo recipes` lists them")
    p.add_argument("--data", help="training data: a CIFAR folder or archive, cifar10/cifar100, or an image "
                                  "folder (default: the embedded CIFAR-10 subset)")
    p.add_argument("--val-data", help="validation data (its test split); default: hold out val_fraction of --data")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="global batch size (split over torchrun processes)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--seed", type=int, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--weights", help="start from these weights (any format convzoo imports); the classifier "
                                     "is replaced when the classes differ")
    p.add_argument("--freeze-epochs", type=int, help="train only the classifier for the first N epochs")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field (repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run folder given by --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (only --epochs may change)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels-last memory format (default: on)")
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile the model; MODE: {', '.join(COMPILE_MODES)} (default: default; "
                        f"reduce-overhead captures CUDA graphs)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="bfloat16 autocast (default: on with a CUDA device that supports it, off on the CPU)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``convzoo train``: a new run from a recipe and flags, or ``--resume`` of a run."""
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in _RUN_DEFINING if getattr(args, name)]
        if given:
            raise ConfigError(f"--resume continues a run as it was started; {', '.join(given)} cannot change "
                              f"(only --epochs can)")
        recipe = resume_recipe(args.resume, args.model, args.epochs)
    else:
        recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
        if args.model and args.model != recipe.model:
            recipe = override(recipe, model=args.model, model_kwargs={})
        recipe = apply_settings(recipe, args.settings)
        flags = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     freeze_epochs=args.freeze_epochs)
        recipe = override(recipe, **{k: v for k, v in flags.items() if v is not None})
    opts = TrainOptions(recipe=recipe, data=args.data, val_data=args.val_data, out=args.out,
                        overwrite=args.overwrite, resume=args.resume, weights=args.weights, device=args.device,
                        channels_last=args.channels_last, compile=args.compile, bf16=args.bf16,
                        deterministic=args.deterministic)
    with _progress_lines_to_stdout():
        train(opts)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``convzoo eval``: accuracy, per-class accuracy and the confusion matrix's file."""
    tune_cpu_allocator()
    with _warnings_as_lines():
        result = evaluate_target(args.target, args.data, args.checkpoint, args.batch_size, args.device,
                                 args.preprocessing)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    t = result.tally
    epoch = f" (epoch {result.epoch})" if result.epoch is not None else ""
    print(f"{result.model}, checkpoint {result.checkpoint}{epoch}")
    print(f"data: {result.data}, {t.n} images")
    print(f"top-1 {t.top1_acc:.4f}  top-5 {t.top5_acc:.4f}  loss {t.loss:.4f}")
    width = max(len(c) for c in result.classes + ["class"])
    print(f"{'class':<{width}}  accuracy  images")
    for name, acc, count in zip(result.classes, t.per_class(), t.confusion.sum(1).tolist()):
        print(f"{name:<{width}}  {acc:8.4f}  {count:6d}" if count else f"{name:<{width}}  {'-':>8}  {0:6d}")
    print(f"confusion matrix: {result.confusion_png}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``convzoo compare``: the markdown table, then where the figure went."""
    table, png = compare(args.runs, args.out)
    print(table)
    print(f"\ncurves: {png}")
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    """``convzoo recipes [NAME]``: one line per recipe, or one line per field of recipe NAME."""
    if args.name is None:
        for name in list_recipes():
            r = get_recipe(name)
            print(f"{name:<30} {r.model:<30} {r.epochs:>4} epochs, batch {r.batch_size}, {r.optimizer} lr {r.lr:g}, "
                  f"{r.schedule} schedule")
        return 0
    for key, value in get_recipe(args.name).as_dict().items():
        print(f"{key:<16} {json.dumps(value)}")
    return 0


class _StdoutLines(logging.Handler):
    """Each record as one line on the current ``sys.stdout``, flushed at once (so a pipe reader sees each
    epoch as it ends)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


@contextlib.contextmanager
def _progress_lines_to_stdout() -> Iterator[None]:
    """While inside, the trainer's INFO lines (logger ``convzoo.train``) are printed to stdout."""
    logger = logging.getLogger(TRAIN_LOGGER)
    handler, level = _StdoutLines(logging.INFO), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """While inside, each :class:`ConvzooWarning` is printed as one ``convzoo: warning:`` line on stderr;
    other warnings are shown as Python shows them."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvzooWarning)
            yield
    finally:
        for w in caught:
            if issubclass(w.category, ConvzooWarning):
                print(f"convzoo: warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
