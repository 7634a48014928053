"""``convzoo train``: a plain PyTorch training loop.

:func:`start` (a new run) or :func:`resume` (the rest of a run) returns a :class:`Run`: the model on its
device, the optimizer, the seeded loaders, the run folder (held by this process alone, see
:class:`~convzoo.train.runfolder.RunLock`) and where the run stands. :meth:`Run.fit` runs the epoch loop.
One epoch: set the learning rate of each step from the recipe's schedule, forward the batch (this rank's
part of the global batch under torchrun), backward, add the gradient of the Keras-style kernel penalty,
step; then evaluate on the validation set, and write the ``best`` and ``last`` checkpoints,
``metrics.csv``, TensorBoard scalars and ``curves.png`` (:class:`~convzoo.train.runfolder.RunWriter`).
With ``checkpoint_every_min`` set, ``last`` is also written inside an epoch, with the loader's position
and the epoch's sums so far.

Resuming is exact: the loader's shuffling and augmentation are a function of (seed, epoch) and the
position in the epoch, the schedule a function of the step, and the checkpoint holds the optimizer and RNG
state, so on the CPU a run stopped after any checkpoint (at an epoch's end or inside one) and resumed ends
with the same weights as one that never stopped.

Progress lines go to the ``convzoo.train`` logger at INFO level (rank 0 only): every
:data:`PROGRESS_EVERY_S` seconds inside an epoch (images/s, ETA, images skipped), and one per epoch.
Progress bars go to stderr.
"""

from __future__ import annotations

import contextlib
import errno
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

from ..version import __version__
from ..data import check_batch_size
from ..data.shards import is_shard_source
from ..data.streaming import StreamLoader, resolve_workers
from ..data.transforms import ImageTransform
from ..errors import CheckpointError, ConfigError, DataError, DivergedError, OutputError
from ..preprocess import Normalize
from ..optimize import tune_cpu_allocator
from ..registry import get_model_cfg
from ..runtime import COMPILE_MODES, autocast, bf16_pays, resolve_device, warn_if_bf16_slow
from ..summary import count_params
from ..utils.fileio import ensure_dir, write_json
from .build import (build_model, input_size, kernel_l2, kernels, load_start_weights, make_optimizer, rebuild_args,
                    recorded_run_preprocessing, run_preprocessing, run_record, set_frozen, train_mode)
from .data import DataSpec, RunSources, absolute_source, eval_batches, open_run_data, resample_for, train_batches
from .distributed import (DistEnv, all_sum, barrier, broadcast, host_sum, init_distributed, shard, shutdown,
                          sync_batchnorm)
from .extras import require
from .metrics import Tally, evaluate
from .recipes import BUDGET_PROBE_EPOCHS, Recipe, budget_epochs, from_dict, learning_rate
from .runfolder import (CONFIG_FILE, LOCK_FILE, STATE_FILE, RunLock, RunWriter, load_model_weights, lock_holder,
                        newest_checkpoint, read_config, read_state)

log = logging.getLogger(__name__)

# Steps between reads of the loss on the host: every step costs nothing on the CPU, but on a GPU each read
# waits for the queue of kernels to drain.
SYNC_EVERY = {"cpu": 1, "cuda": 50}
# Seconds between progress lines inside an epoch.
PROGRESS_EVERY_S = 60.0
# The optional packages a run writes its files with.
EXTRAS = ("tensorboard", "matplotlib")
# The options that decide what a new run is; a resumed run takes them from its folder.
RUN_DEFINING = ("data", "val_data", "labels", "out", "overwrite", "weights")
# The per-epoch sums of a rank: summed cross-entropy, hits, objective, images trained on, images skipped.
SUMS = ("loss", "hits", "objective", "images", "skipped")
# A param-group setting only this optimizer of the recipes has: which optimizer a checkpoint's state is of.
OPTIMIZER_MARKS = {"sgd": "nesterov", "adamw": "betas"}


@dataclass
class TrainOptions:
    """A training run: the recipe, the data, the run folder and the machine settings.

    ``resume`` names a run folder to continue (``recipe`` must then come from :func:`resume_recipe`);
    ``weights`` starts a new run from a weight file. ``labels``: the CSV file labelling a flat ``data``
    folder. ``channels_last`` and ``bf16`` left at None mean "where it pays": channels-last always, bf16
    autocast on a CUDA device that supports it (a resumed run keeps what it was started with). ``compile``
    is a :func:`torch.compile` mode ('default', 'reduce-overhead' captures CUDA graphs, 'max-autotune') or
    None. ``progress``: draw progress bars (default: when stderr is a terminal).
    """

    recipe: Recipe
    data: str | None = None
    val_data: str | None = None
    labels: str | Path | None = None
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


def resume_recipe(run_dir: str | Path, model: str | None = None, epochs: int | None = None,
                  workers: int | None = None) -> Recipe:
    """The recipe of the run in ``run_dir``, with ``epochs`` and ``workers`` changed if given; raises
    CheckpointError if the folder is not a run, or is a run of another model than ``model``."""
    config = read_config(run_dir)
    if model is not None and model != config["model"]:
        raise CheckpointError(f"{run_dir} is a run of {config['model']}, not {model}")
    recipe = from_dict(config["recipe"])
    if epochs is not None:
        # Epochs the user names are trained, also by a run stopped before its time budget fixed them.
        recipe.epochs, recipe.time_budget_min = epochs, 0.0
    if workers is not None:
        recipe.workers = workers
    return recipe


def classification_loss(output: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                        recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed (not averaged) loss to optimise, summed cross-entropy of the main logits, and correct count.

    ``target``: class indices (N,), or soft targets (N, classes) from mixup/cutmix, whose larger class then
    counts as the right one. An auxiliary output (Inception V3 ``(logits, aux)``) adds ``aux_weight`` times
    its cross-entropy.
    """
    logits, aux = output if isinstance(output, tuple) else (output, None)
    ce = F.cross_entropy(logits.float(), target, reduction="sum", label_smoothing=recipe.label_smoothing)
    total = ce
    if aux is not None:
        total = ce + recipe.aux_weight * F.cross_entropy(aux.float(), target, reduction="sum",
                                                          label_smoothing=recipe.label_smoothing)
    labels = target.argmax(1) if target.dim() == 2 else target
    return total, ce, (logits.argmax(1) == labels).sum()


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
    ``runs/<model>-<time>``) created with ``config.json`` and held by this process, the data opened
    through the recipe's pipeline, the model initialised from the recipe's seed or loaded from
    ``opts.weights`` (the classifier replaced when the classes differ). The run's one preprocessing is
    the recipe's when the user set it, else the start weights' recorded one, else the model's
    (:func:`~convzoo.train.build.run_preprocessing`); ``config.json`` and every checkpoint record it.

    Raises :class:`ConfigError` (recipe, options, an existing folder without ``overwrite``),
    :class:`OutputError` (a folder that cannot be written, or that another run is writing),
    :class:`DataError`, :class:`WeightsError` or :class:`MissingDependencyError`. The folder is created
    once the data and the model are ready (with ``overwrite``, the old run in it is removed then).
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
                    recipe.split_seed, input_size(recipe, cfg), resample_for(cfg.interpolation),
                    pipeline=recipe.pipeline, labels=absolute_source(opts.labels))
    spec, sources, model = _prepare(opts, recipe, spec, env, device)
    if opts.weights:
        report = load_start_weights(model, opts.weights)
        if env.is_main:
            log.info(report)
    normalize, origin = run_preprocessing(recipe, model)
    lock = _agreed(env, lambda: _claim_run_dir(folder, opts.overwrite))
    run = Run(opts, recipe, env, device, folder, spec, sources, model, lock, normalize, origin)
    if env.is_main:
        write_json(folder / CONFIG_FILE, run.config())
    barrier(env)
    return run


def resume(opts: TrainOptions, env: DistEnv = DistEnv()) -> Run:
    """The run in folder ``opts.resume``, held by this process and restored from its furthest complete
    checkpoint (``last/``, or ``best/`` when writing ``last/`` failed), ready to :meth:`Run.fit` the rest of
    ``opts.recipe.epochs`` (``opts.recipe`` from :func:`resume_recipe`), from the middle of an epoch if
    that is where the checkpoint was written. The run keeps the numerics it was started with (bf16,
    channels-last, deterministic) unless ``opts`` sets them.

    Raises :class:`CheckpointError` (not a run, no checkpoint), :class:`OutputError` (another process is
    training it), :class:`ConfigError` (fewer epochs than already trained, or options that would change
    what the run is), :class:`DataError` or :class:`MissingDependencyError`.
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
    lock = _agreed(env, lambda: RunLock.acquire(folder, "wait for it to end (or stop it) before resuming"))
    checkpoint = newest_checkpoint(folder)
    if checkpoint is None:
        raise CheckpointError(f"{folder} has no complete checkpoint to resume from (no epoch finished); "
                              f"start it again with --out {folder} --overwrite")
    device = _device(opts, env)
    opts = replace(opts, bf16=config["bf16"] if opts.bf16 is None else opts.bf16,
                   channels_last=config["channels_last"] if opts.channels_last is None else opts.channels_last,
                   deterministic=opts.deterministic or config["deterministic"])
    spec, sources, model = _prepare(opts, recipe, DataSpec.from_dict(config["data"]), env, device)
    load_model_weights(model, checkpoint)
    run = Run(opts, recipe, env, device, folder, spec, sources, model, lock,
              recorded_run_preprocessing(config, str(folder / CONFIG_FILE)), "recorded by the run")
    run.restore(read_state(checkpoint), checkpoint / STATE_FILE)
    if env.is_main:
        write_json(folder / CONFIG_FILE, {**config, "recipe": recipe.as_dict()})
    barrier(env)
    return run


class Run:
    """One training run, built by :func:`start` or :func:`resume`: the model on its device (in
    ``opts.channels_last`` layout, BatchNorm over the global batch under torchrun with ``recipe.sync_bn``),
    its optimizer, the seeded training loader and this rank's part of the validation set, and where the run
    stands (``epoch`` finished, ``partial`` progress into the next one, ``history`` rows, ``best`` epoch and
    accuracy, ``wall_time`` in seconds). Only rank 0 writes the run folder, which it holds (``lock``) until
    :meth:`fit` ends or :meth:`close`. ``normalize`` is the run's one preprocessing (``origin`` says where it
    came from): training, validation, ``config.json`` and the checkpoints' weight record all use it."""

    def __init__(self, opts: TrainOptions, recipe: Recipe, env: DistEnv, device: torch.device, folder: Path,
                 spec: DataSpec, sources: RunSources, model: nn.Module, lock: RunLock | None,
                 normalize: Normalize, origin: str) -> None:
        self.opts, self.recipe, self.env, self.device, self.folder = opts, recipe, env, device, folder
        self.spec, self.lock, self.normalize, self.origin = spec, lock, normalize, origin
        self.classes, self.sizes = sources.classes, (len(sources.train), len(sources.val))
        model.weights_meta = run_record(model, f"{recipe.model}.{folder.name}", spec.input_size, spec.resample,
                                        normalize)
        model.to(device, memory_format=torch.channels_last if opts.channels_last else torch.preserve_format)
        if env.enabled and recipe.sync_bn:
            sync_batchnorm(model, device.type == "cuda")
        self.model = model
        self.optimizer = make_optimizer(recipe, model, fused=device.type == "cuda")
        self.kernel_l2 = kernel_l2(recipe, model)
        self.workers = resolve_workers(recipe.workers) if spec.pipeline == "stream" else 0
        self.train_loader = train_batches(sources.train, recipe, spec, normalize, len(self.classes), env, device,
                                          opts.channels_last, self.workers)
        self.streaming = isinstance(self.train_loader, StreamLoader)
        transform = ImageTransform.with_normalize(spec.input_size, 1.0, spec.resample, normalize)
        self.val_loader = eval_batches(sources.val, transform, normalize, recipe.batch_size,
                                       device=device, channels_last=opts.channels_last, workers=self.workers,
                                       env=env, persistent=False)
        self.progress = env.is_main and (sys.stderr.isatty() if opts.progress is None else opts.progress)
        self.epoch, self.history, self.best, self.wall_time = 0, [], {"epoch": 0, "val_acc": -1.0}, 0.0
        self.partial: dict[str, Any] | None = None
        self.clock = 0.0

    def restore(self, state: dict[str, Any], source: Path) -> None:
        """Continue from a checkpoint's run ``state`` (read from ``source``): optimizer, RNG, epochs finished and
        the position inside the next one, history, best."""
        _load_optimizer(self.optimizer, state["optimizer"], self.recipe.optimizer, source)
        try:
            torch.set_rng_state(state["rng"])
        except (TypeError, RuntimeError):
            raise CheckpointError(f"{source}: expected torch's CPU RNG state in rng, found another tensor") from None
        if self.device.type == "cuda" and state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.epoch, self.history, self.best = state["epoch"], state["history"], state["best"]
        self.wall_time, self.partial = state["wall_time"], state.get("partial")
        if self.epoch > self.recipe.epochs or (self.epoch == self.recipe.epochs and self.partial):
            raise ConfigError(f"{self.folder} has already trained {self.epoch} epochs; --epochs must be at "
                              f"least {self.epoch + bool(self.partial)}")
        loader = state["loader"]
        if self.partial and is_shard_source(self.spec.source) and \
                (loader.get("workers"), loader.get("world_size")) != (self.workers, self.env.world_size):
            raise ConfigError(f"{self.folder} stopped inside an epoch of tar shards read by {loader.get('workers')} "
                              f"workers x {loader.get('world_size')} processes; resume it with the same numbers "
                              f"(now {self.workers} x {self.env.world_size})")

    def config(self) -> dict[str, Any]:
        """The run's ``config.json``: what it trains, on what, how, and on which machine."""
        opts, recipe, spec = self.opts, self.recipe, self.spec
        return dict(
            model=recipe.model, recipe=recipe.as_dict(), data=spec.as_dict(), classes=self.classes,
            num_classes=len(self.classes), input_size=[self.model.default_cfg.input_size[0], *spec.input_size],
            preprocessing=self.normalize.to_json(), kernel_l2=self.kernel_l2,
            params=count_params(self.model).total, train_images=self.sizes[0], val_images=self.sizes[1],
            weights=str(opts.weights) if opts.weights else None, world_size=self.env.world_size,
            device=str(self.device), bf16=opts.bf16, channels_last=opts.channels_last, compile=opts.compile,
            deterministic=opts.deterministic, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            convzoo_version=__version__, torch_version=torch.__version__,
        )

    def fit(self) -> Path:
        """Train the epochs from where the run stands to ``recipe.epochs``, recording each (rank 0:
        checkpoints, metrics.csv, TensorBoard, curves.png); returns the run folder and gives it up. Raises
        :class:`DivergedError` when the loss becomes NaN or infinite, before any checkpoint of that epoch
        is written, :class:`OutputError` when a file of the run cannot be written and :class:`DataError`
        when streamed data turns out unusable (a class without a readable image): the last complete
        checkpoint is kept, and the message says how to go on."""
        recipe, env = self.recipe, self.env
        epochs = f"up to {recipe.epochs} epochs in {recipe.time_budget_min:g} min" if recipe.time_budget_min \
            else f"{recipe.epochs} epochs"
        self._say(f"training {recipe.model} ({recipe.name} recipe) on {self.sizes[0]} images ({self.spec.pipeline}"
                  f"{f', {self.workers} loader processes' if self.streaming else ''}), validating on "
                  f"{self.sizes[1]}; {epochs}, batch {recipe.batch_size}, {self.device}"
                  f"{f' x {env.world_size} processes' if env.enabled else ''}; preprocessing "
                  f"{self.normalize.describe()} ({self.origin}); run folder {self.folder}")
        if self.epoch or self.partial:
            self._say(f"resuming after {_where(self.epoch, self.partial)}")
        try:
            with self._writer() as writer:
                self._epochs(writer)
        except OutputError as exc:
            fix = "free space on that disk" if os.strerror(errno.ENOSPC) in str(exc) else "fix that"
            raise OutputError(self._stopped(exc, fix)) from None
        except DataError as exc:
            raise DataError(self._stopped(exc, "fix the data")) from None
        finally:
            self.close()
        if self.history:
            self._say(f"best val acc {self.best['val_acc']:.4f} at epoch {self.best['epoch']}; run folder "
                      f"{self.folder}")
        return self.folder

    def close(self) -> None:
        """Give the run folder up (another process may then resume it)."""
        if self.lock is not None:
            self.lock.release()

    def _epochs(self, writer: RunWriter | None) -> None:
        env = self.env
        self.clock = time.perf_counter() - self.wall_time
        net, frozen = None, None
        while self.epoch < self.recipe.epochs:
            epoch = self.epoch
            if frozen != (epoch < self.recipe.freeze_epochs):
                frozen = epoch < self.recipe.freeze_epochs
                set_frozen(self.model, frozen)
                net = _wrap(self.model, env, self.device, self.opts.compile)
            row = self._train_epoch(net, epoch, frozen, writer)
            tally = _all_sum_tally(evaluate(self.model, self.val_loader, len(self.classes), self.opts.bf16),
                                   env, self.device)
            self.wall_time = time.perf_counter() - self.clock
            seconds = row["seconds"] + time.perf_counter() - row["ended"]
            if self.recipe.time_budget_min and epoch + 1 == BUDGET_PROBE_EPOCHS:
                self._fix_epochs(seconds)
            self._record(writer, dict(
                epoch=epoch + 1, train_loss=row["train_loss"], train_acc=row["train_acc"], val_loss=tally.loss,
                val_acc=tally.top1_acc, val_top5=tally.top5_acc, lr=row["lr"], img_per_s=row["img_per_s"],
                seconds=seconds, wall_time=self.wall_time, skipped=row["skipped"]))
            barrier(env)

    def _fix_epochs(self, epoch_seconds: float) -> None:
        """End the time budget's probe: set the epochs that fit (rank 0's count on every rank) and record, in
        ``config.json``, the recipe with those epochs and no budget, and what the probe measured."""
        budget = self.recipe.time_budget_min
        epochs = broadcast(budget_epochs(self.recipe, self.wall_time, epoch_seconds), self.env)
        self.recipe = replace(self.recipe, epochs=epochs, time_budget_min=0.0)
        if self.env.is_main:
            config = read_config(self.folder)
            write_json(self.folder / CONFIG_FILE, {
                **config, "recipe": self.recipe.as_dict(),
                "time_budget": dict(minutes=budget, probe_epochs=BUDGET_PROBE_EPOCHS, epoch_seconds=epoch_seconds,
                                    probe_wall_time=self.wall_time, epochs=epochs)})
        self._say(f"time budget {budget:g} min: {epochs} epochs ({epoch_seconds:.1f} s per epoch)")

    def _train_epoch(self, net: nn.Module, epoch: int, frozen: bool, writer: RunWriter | None) -> dict[str, float]:
        """One pass over the training set (or the rest of it after a checkpoint inside it); returns mean loss,
        accuracy, last learning rate, images/s, seconds, images skipped, and when it ``ended``.

        The sums of loss and hits stay on the device and are read (and checked for NaN) every ``SYNC_EVERY``
        steps and at the end, so a GPU never waits for the host inside that interval; a NaN stops the run at
        the first read after it. A checkpoint inside the epoch is taken at such a read.
        """
        train_mode(self.model, frozen)
        meter = _EpochMeter(self, epoch)
        self.train_loader.set_epoch(epoch, meter.start)
        steps, every = len(self.train_loader), SYNC_EVERY.get(self.device.type, 1)
        penalised = [w for w in kernels(self.model) if w.requires_grad] if self.kernel_l2 > 0 else []
        sums = torch.zeros(len(SUMS) - 1, dtype=torch.float64, device=self.device)
        lr = learning_rate(self.recipe, epoch + meter.start / steps)
        with tqdm(total=steps, initial=meter.start, desc=f"epoch {epoch + 1}/{self.recipe.epochs}", unit="batch",
                  leave=False, disable=not self.progress, dynamic_ncols=True) as bar:
            for step, (x, y) in enumerate(meter.timed(self.train_loader), meter.start):
                lr = learning_rate(self.recipe, epoch + step / steps)
                sums += self._step(net, x, y, lr, penalised)
                if (step + 1) % every and step + 1 < steps:
                    continue
                totals = meter.read(sums, step + 1, lr)
                bar.set_postfix(loss=f"{totals['loss'] / max(totals['images'], 1):.4f}",
                                img_s=f"{meter.images_per_s(totals):.0f}", refresh=False)
                bar.update(step + 1 - bar.n)
                meter.report(totals, step + 1)
                if writer is not None and step + 1 < steps and meter.checkpoint_due():
                    self._checkpoint_inside(writer, epoch, step + 1, totals, meter)
        return meter.result(lr)

    def _step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float,
              penalised: list[torch.Tensor]) -> torch.Tensor:
        """One optimizer step at learning rate ``lr``: in memory on this rank's shard of the global batch ``x``
        (N, C, H, W), ``y`` (N,) or (N, classes); streamed on this rank's part as loaded (unreadable images
        left out). Returns the summed cross-entropy, hits, objective and images of this rank (float64). A
        step where some rank has no readable image is skipped by every rank."""
        if self.opts.compile == "reduce-overhead":
            # CUDA graphs are replayed: each step starts a new generation of outputs.
            torch.compiler.cudagraph_mark_step_begin()
        if self.streaming:
            global_batch, empty = host_sum([y.shape[0], int(y.shape[0] == 0)], self.env)
            if empty:
                return torch.zeros(len(SUMS) - 1, dtype=torch.float64, device=self.device)
        else:
            global_batch = y.shape[0]
            x, y = shard(x, self.env), shard(y, self.env)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
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
        return torch.stack([ce.detach().double(), hits.double(), loss.detach().double(),
                            ce.new_tensor(y.shape[0], dtype=torch.float64)])

    def _checkpoint_inside(self, writer: RunWriter, epoch: int, step: int, totals: dict[str, float],
                           meter: _EpochMeter) -> None:
        """Write ``last/`` at ``step`` of ``epoch``: what resuming there needs, with the epoch's sums so far."""
        self.partial = dict(step=step, totals=totals, seconds=meter.seconds())
        self.wall_time = time.perf_counter() - self.clock
        writer.checkpoint(self.model, self._extra(), self._state())
        meter.checkpointed()
        self._say(f"checkpoint at epoch {epoch + 1}, step {step}/{len(self.train_loader)}")

    def _record(self, writer: RunWriter | None, row: dict[str, float]) -> None:
        """Add the finished epoch's ``row`` to the history; rank 0 writes its files and reports it."""
        self.history.append(row)
        self.epoch, self.partial = row["epoch"], None
        improved = row["val_acc"] > self.best["val_acc"]
        if improved:
            self.best = {"epoch": self.epoch, "val_acc": row["val_acc"]}
        if writer is not None:
            writer.record(self.model, self._extra(), self._state(), improved,
                          final=self.epoch == self.recipe.epochs)
        skipped = f"  {row['skipped']} images skipped" if row["skipped"] else ""
        self._say(f"epoch {self.epoch}/{self.recipe.epochs}  train loss {row['train_loss']:.4f} acc "
                  f"{row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  lr "
                  f"{row['lr']:.3g}  {_rate(row['img_per_s'])} img/s  {row['seconds']:.1f}s{skipped}")

    def _extra(self) -> dict[str, Any]:
        """The metadata of a checkpoint's ``model.safetensors``."""
        val_acc = self.history[-1]["val_acc"] if self.history else None
        return dict(recipe=self.recipe.name, epoch=self.epoch, val_acc=val_acc)

    def _state(self) -> dict[str, Any]:
        """What resuming from here needs (``state.pt`` of a checkpoint)."""
        cuda = self.device.type == "cuda"
        step = self.partial["step"] if self.partial else 0
        return dict(model=self.recipe.model, epoch=self.epoch, partial=self.partial,
                    optimizer=self.optimizer.state_dict(), rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if cuda else [],
                    loader=dict(seed=self.recipe.seed, epoch=self.epoch, step=step, workers=self.workers,
                                world_size=self.env.world_size),
                    history=self.history, best=self.best, wall_time=self.wall_time)

    def _stopped(self, exc: OutputError | DataError, fix: str) -> str:
        """The message of a run stopped by a failed write or unusable data: what failed, what is kept and
        how to go on (``fix``, then resume), never advice that would destroy a complete checkpoint."""
        kept = newest_checkpoint(self.folder)
        if kept is None:
            return f"{exc}; no checkpoint is complete yet: {fix}, then start again with --out {self.folder} --overwrite"
        state = read_state(kept)
        return (f"{exc}; {kept.name}/ ({_where(state['epoch'], state.get('partial'))}) is kept: {fix}, then "
                f"convzoo train --resume {self.folder}")

    def _writer(self) -> RunWriter | contextlib.nullcontext[None]:
        """Rank 0's writer of the run folder; None on the other ranks."""
        if not self.env.is_main:
            return contextlib.nullcontext()
        return RunWriter(self.folder, self.classes, rebuild_args(self.recipe, len(self.classes)),
                         f"{self.recipe.model} ({self.recipe.name})", self.epoch)

    def _say(self, message: str) -> None:
        if self.env.is_main:
            log.info(message)


class _EpochMeter:
    """The running account of one epoch of a :class:`Run`: where it starts (after a checkpoint inside it),
    the sums restored from that checkpoint (on rank 0, so that the sum over ranks counts them once), time
    spent waiting for the loader, progress lines and when the next checkpoint inside the epoch is due."""

    def __init__(self, run: Run, epoch: int) -> None:
        self.run, self.epoch = run, epoch
        partial = run.partial if run.partial and run.epoch == epoch else None
        self.start = partial["step"] if partial else 0
        restored = partial["totals"] if partial and run.env.is_main else {}
        self.base = torch.tensor([float(restored.get(k, 0.0)) for k in SUMS], dtype=torch.float64)
        self.before = partial["seconds"] if partial else 0.0
        self.totals = {k: float(v) for k, v in zip(SUMS, self.base)}
        self.started = self.last_line = self.last_checkpoint = time.perf_counter()
        self.waited, self.images_at_start, self.lr = 0.0, self.totals["images"], 0.0

    def timed(self, batches: Any) -> Any:
        """``batches``, adding the time spent waiting for each to :attr:`waited`."""
        iterator = iter(batches)
        while True:
            asked = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self.waited += time.perf_counter() - asked
            yield batch

    def read(self, sums: torch.Tensor, step: int, lr: float) -> dict[str, float]:
        """The epoch's sums over every rank up to ``step`` (counting the restored ones); a NaN or infinite
        loss raises :class:`DivergedError`."""
        skipped = len(self.run.train_loader.stats.skipped) if self.run.streaming else 0
        local = torch.cat([sums, sums.new_tensor([skipped])]) + self.base.to(sums.device)
        self.totals = dict(zip(SUMS, all_sum(local, self.run.env).tolist()))
        self.lr = lr
        if not (math.isfinite(self.totals["loss"]) and math.isfinite(self.totals["objective"])):
            raise DivergedError(_diverged_message(self.totals["loss"] + self.totals["objective"], self.epoch, step,
                                                  lr, self.run.folder))
        return self.totals

    def seconds(self) -> float:
        """Seconds spent in the epoch, counting those before a checkpoint it was resumed from."""
        return self.before + time.perf_counter() - self.started

    def images_per_s(self, totals: dict[str, float]) -> float:
        """Images per second in this session."""
        return (totals["images"] - self.images_at_start) / max(time.perf_counter() - self.started, 1e-9)

    def report(self, totals: dict[str, float], step: int) -> None:
        """A progress line every :data:`PROGRESS_EVERY_S` seconds: step, images/s, ETA, loader waits, skips."""
        now = time.perf_counter()
        if now - self.last_line < PROGRESS_EVERY_S:
            return
        self.last_line = now
        steps = len(self.run.train_loader)
        eta = (steps - step) * (now - self.started) / max(step - self.start, 1)
        skipped = f", {int(totals['skipped'])} images skipped" if totals["skipped"] else ""
        self.run._say(f"epoch {self.epoch + 1}/{self.run.recipe.epochs} step {step}/{steps}: "
                      f"{_rate(self.images_per_s(totals))} img/s, ETA {_duration(eta)}, waiting for data "
                      f"{100 * self.waited / max(now - self.started, 1e-9):.0f} %{skipped}")

    def checkpoint_due(self) -> bool:
        """Whether ``checkpoint_every_min`` minutes have passed since the epoch began or the last checkpoint."""
        every = self.run.recipe.checkpoint_every_min
        return every > 0 and time.perf_counter() - self.last_checkpoint >= 60 * every

    def checkpointed(self) -> None:
        self.last_checkpoint = time.perf_counter()

    def result(self, lr: float) -> dict[str, float]:
        """The epoch's training row: mean loss, accuracy, last learning rate, images/s, seconds, skipped."""
        t, seconds = self.totals, self.seconds()
        images = max(t["images"], 1.0)
        return dict(train_loss=t["loss"] / images, train_acc=t["hits"] / images, lr=lr,
                    img_per_s=t["images"] / max(seconds, 1e-9), seconds=seconds, skipped=int(t["skipped"]),
                    ended=time.perf_counter())


def _where(epoch: int, partial: dict[str, Any] | None) -> str:
    """Where a run stands, in words: 'epoch 3', or 'epoch 3 and 120 steps of epoch 4'."""
    steps = f"{partial['step']} step{'s' if partial['step'] != 1 else ''}" if partial else ""
    return f"epoch {epoch}" + (f" and {steps} of epoch {epoch + 1}" if partial else "")


def _rate(per_s: float) -> str:
    """Images per second with the digits that matter: 0.7, 12, 850."""
    return f"{per_s:.1f}" if per_s < 10 else f"{per_s:.0f}"


def _duration(seconds: float) -> str:
    """``seconds`` as 1h02m, 4m05s or 12s."""
    if not math.isfinite(seconds):
        return "unknown"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _agreed(env: DistEnv, claim: Any) -> RunLock | None:
    """Rank 0's ``claim()`` of the run folder (a :class:`RunLock`); its error, if any, raised on every rank."""
    lock, error = None, None
    if env.is_main:
        try:
            lock = claim()
        except (ConfigError, OutputError) as exc:
            error = exc
    error = broadcast(error, env)
    if error is not None:
        raise error
    return lock


def _device(opts: TrainOptions, env: DistEnv) -> torch.device:
    """This rank's device for ``opts.device`` ('auto', 'cpu' or 'cuda'); ConfigError for an unknown compile
    mode too."""
    use_cuda = resolve_device(opts.device).type == "cuda"
    if opts.compile is not None and opts.compile not in COMPILE_MODES:
        raise ConfigError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {opts.compile!r}")
    return torch.device(f"cuda:{env.local_rank}" if use_cuda else "cpu")


def _prepare(opts: TrainOptions, recipe: Recipe, spec: DataSpec, env: DistEnv,
             device: torch.device) -> tuple[DataSpec, RunSources, nn.Module]:
    """Set up the machine (CPU allocator, determinism; a one-line warning for bf16 where it does not pay), open
    the training and validation data of ``spec`` (choosing its pipeline) and build the recipe's model for
    their classes, initialised from ``recipe.seed``."""
    if device.type == "cpu":
        tune_cpu_allocator()
    if opts.bf16 and env.is_main:
        warn_if_bf16_slow(device)
    _set_determinism(opts.deterministic, device.type == "cuda")
    spec, sources = open_run_data(spec, env)
    check_batch_size(len(sources.train), recipe.batch_size)
    if recipe.batch_size % env.world_size:
        raise ConfigError(f"batch size {recipe.batch_size} does not split evenly over {env.world_size} processes")
    torch.manual_seed(recipe.seed)
    return spec, sources, build_model(recipe, len(sources.classes))


def _load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any], kind: str, source: Path) -> None:
    """Load a checkpoint's optimizer state (read from ``source``) into the run's ``optimizer`` (the recipe's
    ``kind``); :class:`CheckpointError` when it is another optimizer's, or of other parameters."""
    if not all(isinstance(g, dict) and OPTIMIZER_MARKS[kind] in g for g in saved["param_groups"]):
        raise CheckpointError(f"{source}: expected the state of the run's {kind} optimizer, found another "
                              f"optimizer's (was the recipe in {CONFIG_FILE} changed?)")
    try:
        optimizer.load_state_dict(saved)
    except (KeyError, TypeError, ValueError) as exc:
        log.debug("optimizer.load_state_dict(%s): %s", source, exc)
        raise CheckpointError(f"{source}: expected the optimizer state of the run's parameters, found one that "
                              f"does not fit them") from None


@torch.no_grad()
def _add_l2_gradient(weights: list[torch.Tensor], l2: float) -> None:
    """Add the gradient of Keras' kernel penalty ``l2 * sum(w ** 2)`` (2 * l2 * w) in one fused operation."""
    with_grad = [w for w in weights if w.grad is not None]
    torch._foreach_add_([w.grad for w in with_grad], with_grad, alpha=2 * l2)


def _diverged_message(loss: float, epoch: int, step: int, lr: float, run_dir: Path) -> str:
    what = "nan" if math.isnan(loss) else "infinite"
    kept = newest_checkpoint(run_dir)
    if kept is None:
        tail = "no checkpoint was written"
    else:
        state = read_state(kept)
        tail = f"the last good checkpoint is {kept} ({_where(state['epoch'], state.get('partial'))})"
    return f"loss became {what} at epoch {epoch + 1}, step {step} (lr {lr:.3g}); stopped, {tail}"


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
    """The folder of a new run (checked, not created): ``--out``, or ``runs/<model>-<time>``. Refused at
    once when it cannot be created, holds another run (without ``overwrite``), or another process is
    writing it."""
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
    _check_creatable(out)
    if _run_files(out):
        holder = lock_holder(out)
        if holder is not None:
            raise OutputError(f"{out} is in use by another convzoo train (pid {holder or 'unknown'}); "
                              f"choose another --out")
        if not opts.overwrite:
            raise ConfigError(f"{out} already exists: --resume {out} continues it, --overwrite replaces it")
        if not (out / CONFIG_FILE).is_file():
            raise ConfigError(f"{out} is not a convzoo run folder (no {CONFIG_FILE}); not overwriting it")
    return out


def _check_creatable(folder: Path) -> None:
    """:class:`OutputError` unless ``folder`` exists as a writable folder or can be created."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create folder {folder}: {existing} is not writable")


def _run_files(folder: Path) -> list[Path]:
    """What ``folder`` holds besides its lock file (nothing when it does not exist)."""
    return [p for p in folder.iterdir() if p.name != LOCK_FILE] if folder.is_dir() else []


def _claim_run_dir(folder: Path, overwrite: bool) -> RunLock:
    """Create ``folder`` and take its lock; with ``overwrite``, empty the run found there. Raises
    :class:`OutputError` when another process holds it, :class:`ConfigError` when a run appeared there
    since the start (and ``overwrite`` is not set)."""
    ensure_dir(folder)
    lock = RunLock.acquire(folder, "choose another --out")
    found = _run_files(folder)
    if found and not (overwrite and (folder / CONFIG_FILE).is_file()):
        lock.release()
        raise ConfigError(f"{folder} already exists: --resume {folder} continues it, --overwrite replaces it")
    try:
        for path in found:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except OSError as exc:
        lock.release()
        raise OutputError(f"cannot replace the run in {folder}: {exc.strerror}") from None
    return lock
