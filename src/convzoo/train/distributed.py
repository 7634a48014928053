"""Data-parallel training under ``torchrun``: the process group, each rank's shard of a global batch, and
BatchNorm over the global batch.

Every rank builds the same global batch from the same seeded order and augmentation, then trains on its
contiguous shard; DistributedDataParallel averages the gradients. The loss of each shard is scaled so that
the average equals the mean over the global batch, so N ranks take the same steps as one process with
the same global batch (up to float rounding) when BatchNorm statistics are synchronised too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError


# A gloo process group beside nccl's, for small host-side sums (see host_sum); None when gloo is the default.
_host_group: Any = None


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: rank 0 of 1 when not distributed."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process trains."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process logs and writes checkpoints."""
        return self.rank == 0


def init_distributed(use_cuda: bool) -> DistEnv:
    """Join the process group ``torchrun`` describes in the environment (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistEnv()
    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run without torchrun")
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    global _host_group
    _host_group = dist.new_group(backend="gloo") if use_cuda else None
    return env


def shutdown(env: DistEnv) -> None:
    """Leave the process group."""
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(x: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """This rank's contiguous part of a global batch."""
    return x.tensor_split(env.world_size)[env.rank] if env.enabled else x


def all_sum(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """``t`` summed over the ranks (in place; returned for chaining)."""
    if env.enabled:
        dist.all_reduce(t)
    return t


def host_sum(values: list[int], env: DistEnv) -> list[int]:
    """Integers summed over the ranks on the host (over gloo, so a GPU run does not wait for its queue)."""
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.int64)
    dist.all_reduce(t, group=_host_group)
    return t.tolist()


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    """Wait for every rank."""
    if env.enabled:
        dist.barrier()


class _AllReduceSum(torch.autograd.Function):
    """Sum over the ranks whose gradient is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics are taken over the batches of every rank.

    torch's ``SyncBatchNorm`` only runs on GPUs; this runs wherever ``all_reduce`` does (gloo on CPU). The
    mean and the (biased) variance are all-reduced in two passes by a differentiable sum, so gradients
    flow across ranks as they would through one large batch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dtype, x = x.dtype, x.float()
        c = x.shape[1]
        stats = torch.cat([x.sum((0, 2, 3)), x.new_tensor([x.numel() // c])])
        stats = _AllReduceSum.apply(stats)
        n = stats[c]
        mean = stats[:c] / n
        centred = x - mean.view(1, c, 1, 1)
        var = _AllReduceSum.apply(centred.pow(2).sum((0, 2, 3))) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), factor)
                self.running_var.lerp_(var.detach() * n / (n - 1), factor)
        y = centred * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.weight is not None:
            y = y * self.weight.view(1, c, 1, 1)
        if self.bias is not None:
            y = y + self.bias.view(1, c, 1, 1)
        return y.to(dtype)


def sync_batchnorm(model: nn.Module, use_cuda: bool) -> nn.Module:
    """Every BatchNorm2d of ``model`` computing its statistics over the global batch (same parameters,
    buffers and state-dict keys)."""
    if use_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            bn = GlobalBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            bn.weight, bn.bias = child.weight, child.bias
            bn.running_mean, bn.running_var = child.running_mean, child.running_var
            bn.num_batches_tracked = child.num_batches_tracked
            bn.train(child.training)
            setattr(model, name, bn)
        else:
            sync_batchnorm(child, use_cuda)
    return model
