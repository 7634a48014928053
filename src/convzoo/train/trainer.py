"""``convzoo train``: a plain PyTorch training loop.

:func:`start` (a new run) or :func:`resume` (the rest of a run) returns a :class:`Run`: the model on its
device, the optimizer, the seeded loaders, the run folder and where the run stands. :meth:`Run.fit` runs the
epoch loop. One epoch: set the learning rate of each step from the recipe's schedule, forward the batch
(this rank's shard of it under torchrun), backward, add the gradient of the Keras-style kernel penalty, step;
then evaluate on the validation set, and write the ``best`` and ``last`` checkpoints, ``metrics.csv``,
TensorBoard scalars and ``curves.png`` (:class:`~convzoo.train.runfolder.RunWriter`).

Resuming is exact: the loader's shuffling and augmentation are a function of (seed, epoch), the schedule
a function of the step, and the checkpoint holds the optimizer and RNG state, so on the CPU a run stopped
after epoch k and resumed ends with the same weights as one that never stopped.

Progress lines go to the ``convzoo.train`` logger at INFO level (rank 0 only); progress bars to stderr.
"""

from __future__ import annotations

import contextlib
import logging
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
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .. import __version__
from ..data import ArrayDataset, BatchLoader, check_batch_size
from ..errors import CheckpointError, ConfigError, DivergedError
from ..optimize import tune_cpu_allocator
from ..registry import get_model_cfg
from ..runtime import COMPILE_MODES, autocast, bf16_pays, resolve_device
from ..summary import count_params
from ..utils.fileio import ensure_dir, write_json
from .build import (build_model, input_size, kernel_l2, kernels, load_start_weights, make_optimizer, normalization,
                    rebuild_args, set_frozen, train_mode)
from .data import DataSpec, absolute_source, load_run_data, resample_for, to_bgr
from .distributed import DistEnv, all_sum, barrier, broadcast, init_distributed, shard, shutdown, sync_batchnorm
from .extras import require
from .metrics import Tally, evaluate
from .recipes import Recipe, from_dict, learning_rate
from .runfolder import CONFIG_FILE, RunWriter, find_checkpoint, load_model_weights, read_config, read_state

log = logging.getLogger(__name__)

# Steps between reads of the loss on the host: every step costs nothing on the CPU, but on a GPU each read
# waits for the queue of kernels to drain.
SYNC_EVERY = {"cpu": 1, "cuda": 50}
# The optional packages a run writes its files with.
EXTRAS = ("tensorboard", "matplotlib")
# The options that decide what a new run is; a resumed run takes them from its folder.
RUN_DEFINING = ("data", "val_data", "out", "overwrite", "weights")


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
    """Train as ``opts`` says: a new run, or with ``opts.resume`` the rest of that run. Under ``torchrun``
    every rank calls this and joins the process group for the run. Returns the run folder."""
    env = init_distributed(resolve_device(opts.device).type == "cuda")
    try:
        run = resume(opts, env) if opts.resume else start(opts, env)
        return run.fit()
    finally:
        shutdown(env)


def start(opts: TrainOptions, env: DistEnv = DistEnv()) -> Run:
    """A new run as ``opts`` says, ready to :meth:`Run.fit`: its folder (``opts.out``, else
    ``runs/<model>-<time>``) created with ``config.json``, the data loaded, the model initialised from the
    recipe's seed or loaded from ``opts.weights`` (the classifier replaced when the classes differ).

    Raises :class:`ConfigError` (recipe, options, an existing folder without ``overwrite``),
    :class:`DataError`, :class:`WeightsError` or :class:`MissingDependencyError`. The folder is created
    once the data and the model are ready (with ``overwrite``, the old run in it is removed first).
    """
    if opts.resume is not None:
        raise ConfigError(f"start() begins a new run; resume() continues {opts.resume}")
    recipe = opts.recipe.validate()
    require(*EXTRAS, purpose="convzoo train")
    device = _device(opts, env)
    opts = replace(opts, channels_last=True if opts.channels_last is None else opts.channels_last,
                   bf16=bf16_pays(device) if opts.bf16 is None else opts.bf16)
    folder = _new_run_dir(opts, recipe, env)
    cfg = get_model_cfg(recipe.model)
    spec = DataSpec(absolute_source(opts.data), absolute_source(opts.val_data), recipe.val_fraction,
                    recipe.split_seed, input_size(recipe, cfg), resample_for(cfg.interpolation))
    train_ds, val_ds, model = _prepare(opts, recipe, spec, env, device)
    if opts.weights:
        report = load_start_weights(model, opts.weights)
        if env.is_main:
            log.info(report)
    run = Run(opts, recipe, env, device, folder, train_ds, val_ds, model)
    if env.is_main:
        ensure_dir(folder)
        write_json(folder / CONFIG_FILE, run.config(spec))
    barrier(env)
    return run


def resume(opts: TrainOptions, env: DistEnv = DistEnv()) -> Run:
    """The run in folder ``opts.resume``, restored from its last complete checkpoint and ready to
    :meth:`Run.fit` the rest of ``opts.recipe.epochs`` (``opts.recipe`` from :func:`resume_recipe`). The run
    keeps the numerics it was started with (bf16, channels-last, deterministic) unless ``opts`` sets them.

    Raises :class:`CheckpointError` (not a run, no checkpoint), :class:`ConfigError` (fewer epochs than
    already trained, or options that would change what the run is), :class:`DataError` or
    :class:`MissingDependencyError`.
    """
    if opts.resume is None:
        raise ConfigError("resume() continues a run: set opts.resume to its folder")
    given = [name for name in RUN_DEFINING if getattr(opts, name)]
    if given:
        raise ConfigError(f"a resumed run keeps what it was started with; {', '.join(given)} cannot be set")
    recipe = opts.recipe.validate()
    require(*EXTRAS, purpose="convzoo train")
    folder = Path(opts.resume)
    config = read_config(folder)
    checkpoint = find_checkpoint(folder / "last")
    if checkpoint is None:
        raise CheckpointError(f"{folder} has no checkpoint to resume from (no complete last/); "
                              f"start it again with --out {folder} --overwrite")
    device = _device(opts, env)
    opts = replace(opts, bf16=config["bf16"] if opts.bf16 is None else opts.bf16,
                   channels_last=config["channels_last"] if opts.channels_last is None else opts.channels_last,
                   deterministic=opts.deterministic or config["deterministic"])
    train_ds, val_ds, model = _prepare(opts, recipe, DataSpec.from_dict(config["data"]), env, device)
    load_model_weights(model, checkpoint)
    run = Run(opts, recipe, env, device, folder, train_ds, val_ds, model)
    run.restore(read_state(checkpoint))
    if env.is_main:
        write_json(folder / CONFIG_FILE, {**config, "recipe": recipe.as_dict()})
    barrier(env)
    return run


class Run:
    """One training run, built by :func:`start` or :func:`resume`: the model on its device (in
    ``opts.channels_last`` layout, BatchNorm over the global batch under torchrun with ``recipe.sync_bn``),
    its optimizer, the seeded training loader and this rank's part of the validation set, and where the run
    stands (``epoch`` finished, ``history`` rows, ``best`` epoch and accuracy, ``wall_time`` in seconds).
    Only rank 0 writes the run folder."""

    def __init__(self, opts: TrainOptions, recipe: Recipe, env: DistEnv, device: torch.device, folder: Path,
                 train_ds: ArrayDataset, val_ds: ArrayDataset, model: nn.Module) -> None:
        self.opts, self.recipe, self.env, self.device, self.folder = opts, recipe, env, device, folder
        self.classes, self.sizes = train_ds.classes, (len(train_ds), len(val_ds))
        self.mean, self.std, self.bgr = normalization(recipe, model.default_cfg)
        if self.bgr:
            train_ds, val_ds = to_bgr(train_ds), to_bgr(val_ds)
        model.to(device, memory_format=torch.channels_last if opts.channels_last else torch.preserve_format)
        if env.enabled and recipe.sync_bn:
            sync_batchnorm(model, device.type == "cuda")
        self.model = model
        self.optimizer = make_optimizer(recipe, model, fused=device.type == "cuda")
        self.kernel_l2 = kernel_l2(recipe, model)
        self.train_loader = BatchLoader(train_ds, recipe.batch_size, mean=self.mean, std=self.std, train=True,
                                        flip=recipe.flip, shift=recipe.shift, seed=recipe.seed, device=device,
                                        channels_last=opts.channels_last, cutout=recipe.cutout)
        val_part = val_ds.subset(torch.arange(len(val_ds)).tensor_split(env.world_size)[env.rank])
        self.val_loader = BatchLoader(val_part, recipe.batch_size, mean=self.mean, std=self.std, device=device,
                                      channels_last=opts.channels_last)
        self.progress = env.is_main and (sys.stderr.isatty() if opts.progress is None else opts.progress)
        self.epoch, self.history, self.best, self.wall_time = 0, [], {"epoch": 0, "val_acc": -1.0}, 0.0

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's run ``state``: optimizer, RNG, epochs finished, history, best."""
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        self.wall_time = state["wall_time"]
        if self.epoch > self.recipe.epochs:
            raise ConfigError(f"{self.folder} has already trained {self.epoch} epochs; --epochs must be at "
                              f"least that")

    def config(self, spec: DataSpec) -> dict[str, Any]:
        """The run's ``config.json``: what it trains, on what, how, and on which machine."""
        opts, recipe = self.opts, self.recipe
        return dict(
            model=recipe.model, recipe=recipe.as_dict(), data=spec.as_dict(), classes=self.classes,
            num_classes=len(self.classes), input_size=[len(self.mean), *spec.input_size],
            normalization=dict(mean=list(self.mean), std=list(self.std), bgr=self.bgr), kernel_l2=self.kernel_l2,
            params=count_params(self.model).total, train_images=self.sizes[0], val_images=self.sizes[1],
            weights=str(opts.weights) if opts.weights else None, world_size=self.env.world_size,
            device=str(self.device), bf16=opts.bf16, channels_last=opts.channels_last, compile=opts.compile,
            deterministic=opts.deterministic, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            convzoo_version=__version__, torch_version=torch.__version__,
        )

    def fit(self) -> Path:
        """Train the epochs from ``epoch`` to ``recipe.epochs``, recording each (rank 0: checkpoints,
        metrics.csv, TensorBoard, curves.png); returns the run folder. Raises :class:`DivergedError` when the
        loss becomes NaN or infinite, before any checkpoint of that epoch is written."""
        recipe, env = self.recipe, self.env
        self._say(f"training {recipe.model} ({recipe.name} recipe) on {self.sizes[0]} images, validating on "
                  f"{self.sizes[1]}; {recipe.epochs} epochs, batch {recipe.batch_size}, {self.device}"
                  f"{f' x {env.world_size} processes' if env.enabled else ''}; run folder {self.folder}")
        if self.epoch:
            self._say(f"resuming after epoch {self.epoch}")
        with self._writer() as writer:
            clock = time.perf_counter() - self.wall_time
            net, frozen = None, None
            for epoch in range(self.epoch, recipe.epochs):
                if frozen != (epoch < recipe.freeze_epochs):
                    frozen = epoch < recipe.freeze_epochs
                    set_frozen(self.model, frozen)
                    net = _wrap(self.model, env, self.device, self.opts.compile)
                started = time.perf_counter()
                train_loss, train_acc, lr, images_per_s = self._train_epoch(net, epoch, frozen)
                tally = _all_sum_tally(evaluate(self.model, self.val_loader, len(self.classes), self.opts.bf16),
                                       env, self.device)
                self.wall_time = time.perf_counter() - clock
                self._record(writer, dict(
                    epoch=epoch + 1, train_loss=train_loss, train_acc=train_acc, val_loss=tally.loss,
                    val_acc=tally.top1_acc, val_top5=tally.top5_acc, lr=lr, img_per_s=images_per_s,
                    seconds=time.perf_counter() - started, wall_time=self.wall_time))
                barrier(env)
        if self.history:
            self._say(f"best val acc {self.best['val_acc']:.4f} at epoch {self.best['epoch']}; run folder "
                      f"{self.folder}")
        return self.folder

    def _train_epoch(self, net: nn.Module, epoch: int, frozen: bool) -> tuple[float, float, float, float]:
        """One pass over the training set; returns mean loss, accuracy, last learning rate and images/s.

        The sums of loss and hits stay on the device and are read (and checked for NaN) every ``SYNC_EVERY``
        steps and at the end, so a GPU never waits for the host inside that interval; a NaN stops the run at
        the first read after it.
        """
        train_mode(self.model, frozen)
        self.train_loader.set_epoch(epoch)
        steps, every = len(self.train_loader), SYNC_EVERY.get(self.device.type, 1)
        penalised = [w for w in kernels(self.model) if w.requires_grad] if self.kernel_l2 > 0 else []
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        loss_sum = correct = 0.0
        seen, lr, started = 0, learning_rate(self.recipe, epoch), time.perf_counter()
        with tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.recipe.epochs}", unit="batch", leave=False,
                  disable=not self.progress, dynamic_ncols=True) as bar:
            for step, (x, y) in enumerate(self.train_loader):
                lr = learning_rate(self.recipe, epoch + step / steps)
                sums += self._step(net, x, y, lr, penalised)
                seen += y.shape[0]
                if (step + 1) % every and step + 1 < steps:
                    continue
                loss_sum, correct, objective_sum = all_sum(sums.clone(), self.env).tolist()
                if not (math.isfinite(loss_sum) and math.isfinite(objective_sum)):
                    raise DivergedError(_diverged_message(loss_sum + objective_sum, epoch, step, lr, self.folder))
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}",
                                img_s=f"{seen / max(time.perf_counter() - started, 1e-9):.0f}", refresh=False)
                bar.update(step + 1 - bar.n)
        return loss_sum / seen, correct / seen, lr, seen / max(time.perf_counter() - started, 1e-9)

    def _step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
              penalised: list[torch.Tensor]) -> torch.Tensor:
        """One optimizer step at learning rate ``lr`` on the global batch ``x`` (N, C, H, W), ``y`` (N,) (this
        rank's shard of it); returns the summed cross-entropy, hits and objective of the shard (float64)."""
        if self.opts.compile == "reduce-overhead":
            # CUDA graphs are replayed: each step starts a new generation of outputs.
            torch.compiler.cudagraph_mark_step_begin()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        global_batch = y.shape[0]
        x, y = shard(x, self.env), shard(y, self.env)
        with autocast(self.device, self.opts.bf16):
            output = net(x)
        total, ce, hits = classification_loss(output, y, self.recipe)
        # Scaled so that DDP's average over ranks is the mean over the global batch.
        loss = total * (self.env.world_size / global_batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if penalised:
            _add_l2_gradient(penalised, self.kernel_l2)
        self.optimizer.step()
        return torch.stack([ce.detach().double(), hits.double(), loss.detach().double()])

    def _record(self, writer: RunWriter | None, row: dict[str, float]) -> None:
        """Add the finished epoch's ``row`` to the history; rank 0 writes its files and reports it."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = row["val_acc"] > self.best["val_acc"]
        if improved:
            self.best = {"epoch": self.epoch, "val_acc": row["val_acc"]}
        if writer is not None:
            extra = dict(recipe=self.recipe.name, epoch=self.epoch, val_acc=row["val_acc"], mean=list(self.mean),
                         std=list(self.std), bgr=self.bgr)
            writer.record(self.model, extra, self._state(), improved, final=self.epoch == self.recipe.epochs)
        self._say(f"epoch {self.epoch}/{self.recipe.epochs}  train loss {row['train_loss']:.4f} acc "
                  f"{row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr "
                  f"{row['lr']:.3g}  {row['img_per_s']:.0f} img/s  {row['seconds']:.1f}s")

    def _state(self) -> dict[str, Any]:
        """What resuming after the current epoch needs (``state.pt`` of a checkpoint)."""
        cuda = self.device.type == "cuda"
        return dict(model=self.recipe.model, epoch=self.epoch, optimizer=self.optimizer.state_dict(),
                    rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state_all() if cuda else [],
                    loader=dict(seed=self.train_loader.seed, epoch=self.epoch), history=self.history,
                    best=self.best, wall_time=self.wall_time)

    def _writer(self) -> RunWriter | contextlib.nullcontext[None]:
        """Rank 0's writer of the run folder; None on the other ranks."""
        if not self.env.is_main:
            return contextlib.nullcontext()
        return RunWriter(self.folder, self.classes, rebuild_args(self.recipe, len(self.classes)),
                         f"{self.recipe.model} ({self.recipe.name})", self.epoch)

    def _say(self, message: str) -> None:
        if self.env.is_main:
            log.info(message)


def _device(opts: TrainOptions, env: DistEnv) -> torch.device:
    """This rank's device for ``opts.device`` ('auto', 'cpu' or 'cuda'); ConfigError for an unknown compile
    mode too."""
    use_cuda = resolve_device(opts.device).type == "cuda"
    if opts.compile is not None and opts.compile not in COMPILE_MODES:
        raise ConfigError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {opts.compile!r}")
    return torch.device(f"cuda:{env.local_rank}" if use_cuda else "cpu")


def _prepare(opts: TrainOptions, recipe: Recipe, spec: DataSpec, env: DistEnv,
             device: torch.device) -> tuple[ArrayDataset, ArrayDataset, nn.Module]:
    """Set up the machine (CPU allocator, determinism), load the training and validation sets of ``spec``
    and build the recipe's model for their classes, initialised from ``recipe.seed``."""
    if device.type == "cpu":
        tune_cpu_allocator()
    _set_determinism(opts.deterministic, device.type == "cuda")
    train_ds, val_ds = load_run_data(spec)
    check_batch_size(train_ds, recipe.batch_size)
    if recipe.batch_size % env.world_size:
        raise ConfigError(f"batch size {recipe.batch_size} does not split evenly over {env.world_size} processes")
    torch.manual_seed(recipe.seed)
    return train_ds, val_ds, build_model(recipe, len(train_ds.classes))


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
