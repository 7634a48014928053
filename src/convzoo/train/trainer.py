"""``convzoo train``: a plain PyTorch training loop.

One epoch: set the learning rate of each step from the recipe's schedule, forward the batch (this rank's
shard of it under torchrun), backward, add the gradient of the Keras-style kernel penalty, step; then
evaluate on the validation set, write the ``best`` and ``last`` checkpoints, ``metrics.csv`` and
TensorBoard scalars, and redraw ``curves.png`` (at most every ``PLOT_EVERY_S`` seconds, and at the end).

Resuming is exact: the loader's shuffling and augmentation are a function of (seed, epoch), the schedule
a function of the step, and the checkpoint holds the optimizer and RNG state, so on the CPU a run stopped
after epoch k and resumed ends with the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..data import ArrayDataset, BatchLoader, check_batch_size
from ..errors import CheckpointError, ConfigError, ConvzooError
from ..optimize import tune_cpu_allocator
from ..runtime import COMPILE_MODES, bf16_pays, resolve_device
from ..registry import get_model_cfg
from .build import (build_model, input_size, kernel_l2, kernels, load_start_weights, make_optimizer, normalization,
                    rebuild_args, set_frozen, train_mode)
from .checkpoint import CONFIG_FILE, find_checkpoint, load_model_weights, read_state, write_checkpoint, write_json
from .data import DataSpec, absolute_source, load_run_data, resample_for, to_bgr
from .distributed import DistEnv, all_sum, barrier, broadcast, init_distributed, shard, shutdown, sync_batchnorm
from .metrics import Tally, autocast, evaluate, write_history
from .plots import plot_curves
from .recipes import Recipe, from_dict, learning_rate


# Steps between reads of the loss on the host: every step costs nothing on the CPU, but on a GPU each read
# waits for the queue of kernels to drain.
SYNC_EVERY = {"cpu": 1, "cuda": 50}
# curves.png is redrawn at most this often (and after the last epoch): drawing takes ~0.3 s, as long as
# a whole epoch of the fast recipe on a GPU.
PLOT_EVERY_S = 30.0

# TensorBoard tag -> metrics.csv column; the step is the epoch number.
TENSORBOARD_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_acc",
                    "accuracy/val": "val_acc", "accuracy/val_top5": "val_top5", "lr": "lr",
                    "throughput/img_per_s": "img_per_s"}


class DivergedError(ConvzooError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainOptions:
    """A training run: the recipe, the data, the run folder and the machine settings.

    ``resume`` names a run folder to continue (``recipe`` must then come from :func:`resume_recipe`);
    ``weights`` starts a new run from a weight file. ``channels_last`` and ``bf16`` left at None mean
    "where it pays": channels-last always, bf16 autocast on a CUDA device that supports it (a resumed run
    keeps what it was started with). ``compile`` is a :func:`torch.compile` mode ('default',
    'reduce-overhead' captures CUDA graphs, 'max-autotune') or None. ``progress``: draw progress bars
    (default: when stderr is a terminal).
    """

    recipe: Recipe
    data: str | None = None
    val_data: str | None = None
    out: str | Path | None = None
    overwrite: bool = False
    resume: str | Path | None = None
    weights: str | Path | None = None
    device: str = "auto"
    channels_last: bool | None = None
    compile: str | None = None
    bf16: bool | None = None
    deterministic: bool = False
    progress: bool | None = None


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a run folder, or :class:`CheckpointError`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"no run folder at {run_dir}")
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a convzoo run folder (no {CONFIG_FILE})")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def resume_recipe(run_dir: str | Path, model: str | None = None, epochs: int | None = None) -> Recipe:
    """The recipe of the run in ``run_dir``, with ``epochs`` changed if given; raises CheckpointError if the
    folder is not a run, or is a run of another model than ``model``."""
    config = read_config(run_dir)
    if model is not None and model != config["model"]:
        raise CheckpointError(f"{run_dir} is a run of {config['model']}, not {model}")
    recipe = from_dict(config["recipe"])
    if epochs is not None:
        recipe.epochs = epochs
    return recipe


def classification_loss(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                        recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed (not averaged) loss to optimise, summed cross-entropy of the main logits, and correct count.

    An auxiliary output (Inception V3 ``(logits, aux)``) adds ``aux_weight`` times its cross-entropy.
    """
    logits, aux = output if isinstance(output, tuple) else (output, None)
    ce = F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=recipe.label_smoothing)
    total = ce
    if aux is not None:
        total = ce + recipe.aux_weight * F.cross_entropy(aux.float(), target, reduction="sum",
                                                          label_smoothing=recipe.label_smoothing)
    return total, ce, (logits.argmax(1) == target).sum()


def train(opts: TrainOptions) -> Path:
    """Train as ``opts`` says; returns the run folder."""
    recipe = opts.recipe.validate()
    use_cuda = resolve_device(opts.device).type == "cuda"
    env = init_distributed(use_cuda)
    try:
        return _train(opts, recipe, env, use_cuda)
    finally:
        shutdown(env)


def _train(opts: TrainOptions, recipe: Recipe, env: DistEnv, use_cuda: bool) -> Path:
    device = torch.device(f"cuda:{env.local_rank}" if use_cuda else "cpu")
    say = print if env.is_main else _quiet
    cfg = get_model_cfg(recipe.model)

    if opts.resume:
        run_dir = Path(opts.resume)
        config = read_config(run_dir)
        checkpoint = find_checkpoint(run_dir / "last")
        if checkpoint is None:
            raise CheckpointError(f"{run_dir} has no checkpoint to resume from (no complete last/); "
                                  f"start it again with --out {run_dir} --overwrite")
        spec = DataSpec.from_dict(config["data"])
        # A resumed run keeps the numerics it was started with.
        opts = replace(opts, bf16=config["bf16"] if opts.bf16 is None else opts.bf16,
                       channels_last=config["channels_last"] if opts.channels_last is None else opts.channels_last,
                       deterministic=opts.deterministic or config["deterministic"])
    else:
        run_dir = _new_run_dir(opts, recipe, env)
        spec = DataSpec(absolute_source(opts.data), absolute_source(opts.val_data), recipe.val_fraction,
                        recipe.split_seed, input_size(recipe, cfg), resample_for(cfg.interpolation))

    opts = replace(opts, channels_last=True if opts.channels_last is None else opts.channels_last,
                   bf16=bf16_pays(torch.device("cuda" if use_cuda else "cpu")) if opts.bf16 is None else opts.bf16)
    if opts.compile is not None and opts.compile not in COMPILE_MODES:
        raise ConfigError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {opts.compile!r}")
    if not use_cuda:
        tune_cpu_allocator()
    _set_determinism(opts.deterministic, use_cuda)
    train_ds, val_ds = load_run_data(spec)
    check_batch_size(train_ds, recipe.batch_size)
    if recipe.batch_size % env.world_size:
        raise ConfigError(f"batch size {recipe.batch_size} does not split evenly over {env.world_size} processes")
    classes = train_ds.classes

    torch.manual_seed(recipe.seed)
    model = build_model(recipe, len(classes))
    if opts.weights and not opts.resume:
        say(load_start_weights(model, opts.weights))
    mean, std, bgr = normalization(recipe, model.default_cfg)
    if bgr:
        train_ds, val_ds = to_bgr(train_ds), to_bgr(val_ds)
    if opts.resume:
        load_model_weights(model, checkpoint)
    model.to(device, memory_format=torch.channels_last if opts.channels_last else torch.preserve_format)
    if env.enabled and recipe.sync_bn:
        sync_batchnorm(model, use_cuda)
    optimizer = make_optimizer(recipe, model, fused=use_cuda)
    l2 = kernel_l2(recipe, model)

    start_epoch, history, best, wall_time = 0, [], {"epoch": 0, "val_acc": -1.0}, 0.0
    if opts.resume:
        state = read_state(checkpoint)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if use_cuda and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        start_epoch, history, best, wall_time = state["epoch"], state["history"], state["best"], state["wall_time"]
        if start_epoch > recipe.epochs:
            raise ConfigError(f"{run_dir} has already trained {start_epoch} epochs; --epochs must be at least that")

    if env.is_main:
        if opts.resume:
            config["recipe"] = recipe.as_dict()
        else:
            run_dir.mkdir(parents=True, exist_ok=True)
            config = _config(opts, recipe, spec, train_ds, val_ds, model, mean, std, bgr, l2, env, device)
        write_json(run_dir / CONFIG_FILE, config)
    barrier(env)

    train_loader = BatchLoader(train_ds, recipe.batch_size, mean=mean, std=std, train=True, flip=recipe.flip,
                               shift=recipe.shift, seed=recipe.seed, device=device, channels_last=opts.channels_last,
                               cutout=recipe.cutout)
    val_part = val_ds.subset(torch.arange(len(val_ds)).tensor_split(env.world_size)[env.rank])
    val_loader = BatchLoader(val_part, recipe.batch_size, mean=mean, std=std, device=device,
                             channels_last=opts.channels_last)
    writer = _summary_writer(run_dir, start_epoch) if env.is_main else None
    model_args = rebuild_args(recipe, len(classes))
    normalised = dict(mean=list(mean), std=list(std), bgr=bgr)
    show_progress = env.is_main and (sys.stderr.isatty() if opts.progress is None else opts.progress)

    say(f"training {recipe.model} ({recipe.name} recipe) on {len(train_ds)} images, validating on {len(val_ds)}; "
        f"{recipe.epochs} epochs, batch {recipe.batch_size}, {device}"
        f"{f' x {env.world_size} processes' if env.enabled else ''}; run folder {run_dir}")
    if start_epoch:
        say(f"resuming after epoch {start_epoch}")
    net, frozen = None, None
    session_started = time.perf_counter()
    plotted = -math.inf
    try:
        for epoch in range(start_epoch, recipe.epochs):
            if frozen != (epoch < recipe.freeze_epochs):
                frozen = epoch < recipe.freeze_epochs
                set_frozen(model, frozen)
                net = _wrap(model, env, device, opts.compile)
            started = time.perf_counter()
            train_loss, train_acc, lr, images_per_s = _train_epoch(
                net, model, train_loader, optimizer, recipe, epoch, l2, frozen, env, device, opts.bf16,
                opts.compile, show_progress, run_dir)
            tally = evaluate(model, val_loader, len(classes), opts.bf16)
            tally = _all_sum_tally(tally, env, device)
            seconds = time.perf_counter() - started
            row = dict(epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=tally.loss,
                       val_acc=tally.top1_acc, val_top5=tally.top5_acc, lr=lr, img_per_s=images_per_s,
                       seconds=seconds, wall_time=wall_time + time.perf_counter() - session_started)
            history.append(row)
            improved = row["val_acc"] > best["val_acc"]
            if improved:
                best = {"epoch": epoch + 1, "val_acc": row["val_acc"]}
            if env.is_main:
                state = dict(model=recipe.model, epoch=epoch + 1, optimizer=optimizer.state_dict(),
                             rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state_all() if use_cuda else [],
                             loader=dict(seed=train_loader.seed, epoch=epoch + 1), history=history, best=best,
                             wall_time=row["wall_time"])
                extra = dict(recipe=recipe.name, epoch=epoch + 1, val_acc=row["val_acc"], **normalised)
                _record_epoch(run_dir, model, classes, extra, model_args, state, improved, writer)
                if epoch + 1 == recipe.epochs or time.perf_counter() - plotted >= PLOT_EVERY_S:
                    plot_curves(history, run_dir / "curves.png", f"{recipe.model} ({recipe.name})")
                    plotted = time.perf_counter()
            say(f"epoch {epoch + 1}/{recipe.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
                f"val loss {tally.loss:.4f} acc {tally.top1_acc:.4f}  lr {lr:.3g}  {images_per_s:.0f} img/s  "
                f"{seconds:.1f}s", flush=True)
            barrier(env)
    finally:
        if writer is not None:
            writer.close()
    if history:
        say(f"best val acc {best['val_acc']:.4f} at epoch {best['epoch']}; run folder {run_dir}")
    return run_dir


def _record_epoch(run_dir: Path, model: nn.Module, classes: list[str], extra: dict[str, Any],
                  model_args: dict[str, Any], state: dict[str, Any], improved: bool, writer: Any) -> None:
    """Write the checkpoints, metrics.csv and TensorBoard scalars of the epoch just finished."""
    # best before last: a crash between the two leaves last one epoch behind, and resuming from it
    # recomputes the same epoch and rewrites best identically.
    if improved:
        write_checkpoint(run_dir / "best", model, classes, extra, model_args, state)
    write_checkpoint(run_dir / "last", model, classes, extra, model_args, state)
    history = state["history"]
    write_history(run_dir / "metrics.csv", history)
    for tag, key in TENSORBOARD_TAGS.items():
        writer.add_scalar(tag, history[-1][key], state["epoch"])
    writer.flush()


def _train_epoch(net: nn.Module, model: nn.Module, loader: BatchLoader, optimizer: torch.optim.Optimizer,
                 recipe: Recipe, epoch: int, l2: float, frozen: bool, env: DistEnv, device: torch.device,
                 bf16: bool, compile_mode: str | None, show_progress: bool,
                 run_dir: Path) -> tuple[float, float, float, float]:
    """One pass over the training set; returns mean loss, accuracy, last learning rate and images/s.

    The sums of loss and hits stay on the device and are read (and checked for NaN) every ``SYNC_EVERY``
    steps and at the end, so a GPU never waits for the host inside that interval; a NaN stops the run at
    the first read after it, before any checkpoint of this epoch is written.
    """
    from tqdm import tqdm

    train_mode(model, frozen)
    loader.set_epoch(epoch)
    steps = len(loader)
    sync_every = SYNC_EVERY.get(device.type, 1)
    # torch.compile's 'reduce-overhead' replays CUDA graphs: each step starts a new generation of outputs.
    graphed = compile_mode == "reduce-overhead"
    penalised = [w for w in kernels(model) if w.requires_grad] if l2 > 0 else []
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    loss_sum = correct = 0.0
    seen = 0
    lr = learning_rate(recipe, epoch)
    started = time.perf_counter()
    with tqdm(total=steps, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch", leave=False,
              disable=not show_progress, dynamic_ncols=True) as bar:
        for step, (x, y) in enumerate(loader):
            if graphed:
                torch.compiler.cudagraph_mark_step_begin()
            lr = learning_rate(recipe, epoch + step / steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            global_batch = y.shape[0]
            x, y = shard(x, env), shard(y, env)
            with autocast(device, bf16):
                output = net(x)
            total, ce, hits = classification_loss(output, y, recipe)
            # Scaled so that DDP's average over ranks is the mean over the global batch.
            loss = total * (env.world_size / global_batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if penalised:
                _add_l2_gradient(penalised, l2)
            optimizer.step()
            sums += torch.stack([ce.detach().double(), hits.double(), loss.detach().double()])
            seen += global_batch
            if (step + 1) % sync_every and step + 1 < steps:
                continue
            loss_sum, correct, objective_sum = all_sum(sums.clone(), env).tolist()
            if not (math.isfinite(loss_sum) and math.isfinite(objective_sum)):
                raise DivergedError(_diverged_message(loss_sum + objective_sum, epoch, step, lr, run_dir))
            elapsed = time.perf_counter() - started
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                            img_s=f"{seen / max(elapsed, 1e-9):.0f}", refresh=False)
            bar.update(step + 1 - bar.n)
    return loss_sum / seen, correct / seen, lr, seen / max(time.perf_counter() - started, 1e-9)


@torch.no_grad()
def _add_l2_gradient(weights: list[torch.Tensor], l2: float) -> None:
    """Add the gradient of Keras' kernel penalty ``l2 * sum(w ** 2)`` (2 * l2 * w) in one fused operation."""
    with_grad = [w for w in weights if w.grad is not None]
    torch._foreach_add_([w.grad for w in with_grad], with_grad, alpha=2 * l2)


def _diverged_message(loss: float, epoch: int, step: int, lr: float, run_dir: Path) -> str:
    what = "nan" if math.isnan(loss) else "infinite"
    kept = find_checkpoint(run_dir / "last")
    tail = (f"the last good checkpoint is {kept} (epoch {read_state(kept)['epoch']})" if kept
            else "no checkpoint was written")
    return f"loss became {what} at epoch {epoch + 1}, step {step + 1} (lr {lr:.3g}); stopped, {tail}"


def _all_sum_tally(tally: Tally, env: DistEnv, device: torch.device) -> Tally:
    if not env.enabled:
        return tally
    flat = torch.cat([torch.tensor([tally.loss_sum, tally.top5], dtype=torch.float64),
                      tally.confusion.flatten().double()]).to(device)
    flat = all_sum(flat, env).cpu()
    tally.loss_sum, tally.top5 = float(flat[0]), int(flat[1])
    tally.confusion = flat[2:].round().long().view_as(tally.confusion)
    return tally


def _wrap(model: nn.Module, env: DistEnv, device: torch.device, compile_: str | None) -> nn.Module:
    """The module that trains: ``model`` itself, in DistributedDataParallel, compiled (in mode ``compile_``),
    or both."""
    net = model
    if env.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile_ is not None:
        # Static shapes: the epoch's last, smaller batch gets its own graph instead of making every
        # kernel shape-generic.
        net = torch.compile(net, mode=compile_, dynamic=False)
    return net


def _set_determinism(deterministic: bool, use_cuda: bool) -> None:
    if deterministic:
        if use_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    if use_cuda:
        torch.backends.cudnn.benchmark = not deterministic


def _new_run_dir(opts: TrainOptions, recipe: Recipe, env: DistEnv) -> Path:
    """The folder of a new run (checked, not created): ``--out``, or ``runs/<model>-<time>``."""
    if opts.out is not None:
        out = Path(opts.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{recipe.model}-{stamp}"
        suffix = 2
        while out.exists():
            out = Path("runs") / f"{recipe.model}-{stamp}-{suffix}"
            suffix += 1
    out = Path(broadcast(str(out), env))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not opts.overwrite:
            raise ConfigError(f"{out} already exists: --resume {out} continues it, --overwrite replaces it")
        if not (out / CONFIG_FILE).is_file():
            raise ConfigError(f"{out} is not a convzoo run folder (no {CONFIG_FILE}); not overwriting it")
        barrier(env)
        if env.is_main:
            shutil.rmtree(out)
    return out


def _config(opts: TrainOptions, recipe: Recipe, spec: DataSpec, train_ds: ArrayDataset, val_ds: ArrayDataset,
            model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], bgr: bool, l2: float,
            env: DistEnv, device: torch.device) -> dict[str, Any]:
    from ..summary import count_params

    return dict(
        model=recipe.model, recipe=recipe.as_dict(), data=spec.as_dict(), classes=train_ds.classes,
        num_classes=len(train_ds.classes), input_size=[len(mean), *spec.input_size],
        normalization=dict(mean=list(mean), std=list(std), bgr=bgr), kernel_l2=l2,
        params=count_params(model).total, train_images=len(train_ds), val_images=len(val_ds),
        weights=str(opts.weights) if opts.weights else None, world_size=env.world_size, device=str(device),
        bf16=opts.bf16, channels_last=opts.channels_last, compile=opts.compile, deterministic=opts.deterministic,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), convzoo_version=__version__, torch_version=torch.__version__,
    )


def _summary_writer(run_dir: Path, start_epoch: int) -> Any:
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch + 1 if start_epoch else None)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """``print`` for ranks other than 0."""
