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
from collections.abc import Iterator
from typing import Any

from ..errors import AccuracyGuardError, ConfigError
from ..optimize import tune_cpu_allocator
from ..preprocess import MODES
from ..runtime import COMPILE_MODES, DEVICES, GUARD_MAX_DROP, GUARD_MIN_AGREEMENT
from ..train.compare import compare
from ..train.evaluate import EvalOptions, Evaluated, evaluate_target, evaluate_weights
from ..train.recipes import FLOAT32_MAX, MAX_EPOCHS, PIPELINES, apply_settings, get_recipe, list_recipes, override
from ..train.trainer import TrainOptions, resume_recipe, train
from . import PREFIX
from .common import (add_runtime_flags, convzoo_warnings_as_lines, float_in, int_in, non_negative_int, output_file,
                     positive_int, precision_of, seed)

DEFAULT_RECIPE = "fast"
TRAIN_LOGGER = "convzoo.train"
# Above this many classes (ImageNet's 1,000) the eval report leaves out the classes without images.
SHOWN_EMPTY = 100
# Flags that change what a run is; a resumed run keeps what it was started with.
_RUN_DEFINING = ("recipe", "data", "val_data", "labels", "pipeline", "batch_size", "lr", "seed", "weights",
                 "freeze_epochs", "preprocessing", "settings", "out", "overwrite")
DATA_HELP = ("a CIFAR folder or archive, cifar10/cifar100, an image folder (one subfolder per class, or flat with "
             "--labels), or tar shards ('shards/*.tar' or 'train-{0000..0099}.tar')")


def register(subparsers: Any) -> None:
    """Add the training verbs to the ``convzoo`` parser."""
    _register_train(subparsers)
    _register_eval(subparsers)
    p = subparsers.add_parser("compare", help="markdown table and overlaid curves of several runs")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", metavar="FILE.png", type=output_file(".png", what="the figure"),
                   help="the overlay figure (default: compare.png beside the runs)")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser("recipes", help="list the training recipes, or show one's fields")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_recipes)


def _register_data(p: argparse.ArgumentParser) -> None:
    """The flags that say how data is read, shared by train and eval."""
    p.add_argument("--labels", metavar="CSV", help="labels of a flat image folder: rows of file name, label "
                                                   "(a class name such as a WordNet id, or an index)")
    p.add_argument("--pipeline", choices=PIPELINES, help="decode the images once into memory, or stream them "
                                                         "from the files (default: auto, by their size)")
    p.add_argument("--workers", type=non_negative_int,
                   help="loader processes that decode streamed images (capped at the CPU cores; default 2)")


def _register_eval(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="accuracy and confusion matrix of a run, a checkpoint or imported weights",
                              description="Evaluate a run or checkpoint (RUN_DIR|CHECKPOINT), or imported weights "
                                          "(--model NAME --weights FILE --data DIR).",
                              epilog="Exit status: 0; 1 when the accuracy guard of a --precision other than fp32 "
                                     f"fails (top-1 more than {GUARD_MAX_DROP:g} points below fp32's, or top-1 "
                                     f"agreement with fp32 below {GUARD_MIN_AGREEMENT:g}%); 2 for bad input.")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", nargs="?")
    p.add_argument("--model", help="with --weights: the registered model the weights are imported into")
    p.add_argument("--weights", help="with --model: a weights file (any format convzoo imports), scored without a run")
    p.add_argument("--data", help=f"evaluate on this data ({DATA_HELP}); default: the run's validation split")
    _register_data(p)
    p.add_argument("--checkpoint", default="best", choices=("best", "last"), help="which checkpoint of a run")
    p.add_argument("--batch-size", type=positive_int,
                   help="images per batch (default: 32 on the CPU, 256 on CUDA)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--json", action="store_true", help="print one JSON object (top1, top5, n, per_class)")
    p.add_argument("--preprocessing", choices=MODES,
                   help="normalise with this mode instead of the one recorded with the weights (warns)")
    add_runtime_flags(p, guard="; a precision named other than fp32 is also run in fp32 (eager) on the same images "
                               "and the accuracy guard printed")
    p.set_defaults(func=cmd_eval)


def _register_train(subparsers: Any) -> None:
    p = subparsers.add_parser("train", help="train a model (single process, or every rank under torchrun)",
                              description="Train a model with a recipe. Any recipe field can be set with "
                                          "--set FIELD=VALUE; `convzoo recipes NAME` lists the fields.")
    p.add_argument("--model", help="registered model name (default: the recipe's)")
    p.add_argument("--recipe", help=f"recipe name (default: {DEFAULT_RECIPE}); `convzoo recipes` lists them")
    p.add_argument("--data", help=f"training data: {DATA_HELP} (default: the embedded CIFAR-10 subset)")
    p.add_argument("--val-data", help="validation data (its test split); default: hold out val_fraction of --data")
    _register_data(p)
    p.add_argument("--epochs", type=int_in(1, MAX_EPOCHS), help="epochs to train (this many, also where the "
                                                              "recipe has a time budget)")
    p.add_argument("--batch-size", type=positive_int, help="global batch size (split over torchrun processes)")
    p.add_argument("--lr", type=float_in(0.0, FLOAT32_MAX, low_open=True), help="peak learning rate")
    p.add_argument("--seed", type=seed, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--weights", help="start from these weights (any format convzoo imports); the classifier "
                                     "is replaced when the classes differ")
    p.add_argument("--freeze-epochs", type=non_negative_int, help="train only the classifier for the first N epochs")
    p.add_argument("--preprocessing", choices=MODES,
                   help="normalise with this mode (recorded for every verb) instead of the one recorded with "
                        "--weights, or the model's own")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a recipe field (repeatable)")
    p.add_argument("--out", help="run folder (default: runs/<model>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace the run folder given by --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR (only --epochs and --workers "
                                                       "may change)")
    p.add_argument("--device", default="auto", choices=DEVICES)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels-last memory format (default: on)")
    p.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES, metavar="MODE",
                   help=f"torch.compile the model; MODE: {', '.join(COMPILE_MODES)} (default: default; "
                        f"reduce-overhead captures CUDA graphs)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction,
                   help="bfloat16 autocast (default: on where bf16 pays: a CUDA GPU with bf16, a CPU with AMX-BF16 or "
                        "AVX512-BF16, see `convzoo info`; forced on a CPU without, it warns that it will be slow)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms only")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """``convzoo train``: a new run from a recipe and flags, or ``--resume`` of a run."""
    if args.resume:
        given = [f"--{name.replace('_', '-')}" for name in _RUN_DEFINING if getattr(args, name)]
        if given:
            raise ConfigError(f"--resume continues a run as it was started; {', '.join(given)} cannot change "
                              f"(only --epochs and --workers can)")
        recipe = resume_recipe(args.resume, args.model, args.epochs, args.workers)
    else:
        recipe = get_recipe(args.recipe or DEFAULT_RECIPE)
        if args.model and args.model != recipe.model:
            recipe = override(recipe, model=args.model, model_kwargs={})
        recipe = apply_settings(recipe, args.settings)
        flags = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                     freeze_epochs=args.freeze_epochs, pipeline=args.pipeline, workers=args.workers,
                     preprocessing=args.preprocessing)
        recipe = override(recipe, **{k: v for k, v in flags.items() if v is not None})
        named = {item.partition("=")[0].strip() for item in args.settings}
        if (args.epochs is not None or "epochs" in named) and "time_budget_min" not in named:
            # Epochs the user names are trained, whatever the recipe's time budget would fit.
            recipe = override(recipe, time_budget_min=0.0)
    opts = TrainOptions(recipe=recipe, data=args.data, val_data=args.val_data, labels=args.labels, out=args.out,
                        overwrite=args.overwrite, resume=args.resume, weights=args.weights, device=args.device,
                        channels_last=args.channels_last, compile=args.compile, bf16=args.bf16,
                        deterministic=args.deterministic)
    with _progress_lines_to_stdout(), convzoo_warnings_as_lines():
        train(opts)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``convzoo eval``: accuracy, per-class accuracy and the confusion matrix's file."""
    tune_cpu_allocator()
    opts = EvalOptions(labels=args.labels, pipeline=args.pipeline or "auto",
                       workers=2 if args.workers is None else args.workers, batch_size=args.batch_size,
                       device=args.device, preprocessing=args.preprocessing, runtime=args.runtime,
                       precision=precision_of(args), calibration=args.calibration)
    imported = args.model is not None or args.weights is not None
    if imported and (args.target or not (args.model and args.weights and args.data)):
        raise ConfigError("expected either RUN_DIR|CHECKPOINT, or --model NAME --weights FILE --data DATA")
    if not imported and not args.target:
        raise ConfigError("expected a run folder or checkpoint to evaluate, or --model NAME --weights FILE --data DATA")
    with convzoo_warnings_as_lines():
        result = (evaluate_weights(args.model, args.weights, args.data, opts) if imported
                  else evaluate_target(args.target, args.data, args.checkpoint, opts))
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        _print_eval(result)
    return _guard_status(result)


def _print_eval(result: Evaluated) -> None:
    """The report of ``convzoo eval``: totals, then one line per class that has images."""
    t = result.tally
    epoch = f" (epoch {result.epoch})" if result.epoch is not None else ""
    print(f"{result.model}, checkpoint {result.checkpoint}{epoch}")
    skipped = f" ({result.skipped} unreadable images skipped)" if result.skipped else ""
    print(f"data: {result.data}, {t.n} images{skipped}")
    print(f"runtime {result.runtime}, precision {result.precision}")
    print(f"top-1 {t.top1_acc:.4f}  top-5 {t.top5_acc:.4f}  loss {t.loss:.4f}")
    counts = t.confusion.sum(1).tolist()
    width = max(len(c) for c in result.classes + ["class"])
    print(f"{'class':<{width}}  accuracy  images")
    absent = 0
    for name, acc, count in zip(result.classes, t.per_class(), counts):
        if count:
            print(f"{name:<{width}}  {acc:8.4f}  {count:6d}")
        elif len(result.classes) > SHOWN_EMPTY:
            absent += 1
        else:
            print(f"{name:<{width}}  {'-':>8}  {0:6d}")
    if absent:
        print(f"({absent} classes without images not shown)")
    print(f"confusion matrix: {result.confusion_png}")
    g = result.guard
    if g is not None:
        print(f"accuracy guard, {result.precision} against fp32 on {g.n} images: {'passed' if g.passed else 'FAILED'}")
        print(f"  top-1 {g.top1_candidate:.2f}% against fp32's {g.top1_fp32:.2f}%: {-g.drop:+.2f} points "
              f"(at most {g.max_drop:g} below allowed)")
        print(f"  top-1 agreement with fp32 {g.agreement:.2f}% (at least {g.min_agreement:g}% needed)")


def _guard_status(result: Evaluated) -> int:
    """The exit status of ``eval``: 1, with the guard's one-line verdict on stderr, when the accuracy guard
    fails; else 0."""
    try:
        if result.guard is not None:
            result.guard.check(f"{result.runtime} {result.precision}")
    except AccuracyGuardError as exc:
        print(f"{PREFIX}{exc}", file=sys.stderr)
        return 1
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
