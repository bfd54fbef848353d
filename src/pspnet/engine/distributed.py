"""Multi-process helpers: process-group set-up from torchrun's environment, deterministic data
sharding, small collectives, and a BatchNorm that synchronises statistics on CPU too.

* :func:`init_distributed` reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by ``torchrun``)
  and initialises the default process group itself: ``nccl`` on CUDA, ``gloo`` on CPU, always
  with a timeout, so a rank that dies makes the others fail after ``timeout_s`` instead of
  waiting forever (torchrun also tears the job down when one worker exits with an error);
  groups created later (the CPU SyncBatchNorm group) get the same timeout.
* :class:`TrainBatchSampler` turns ``(seed, epoch)`` into a permutation with an explicit
  ``torch.Generator`` (never the global RNG) and hands each process and accumulation step its
  own disjoint slice of every global batch, starting at any step inside the epoch (resume).
* :func:`shard_indices` splits an evaluation set by stride, without the padding duplicates of
  ``DistributedSampler`` (no sample is counted twice).
* :class:`SyncBatchNorm2d` reduces batch statistics across processes with ``all_reduce``
  (autograd-aware), for CPU/gloo jobs where ``torch.nn.SyncBatchNorm`` refuses CPU tensors;
  :func:`convert_sync_batchnorm` picks torch's own on CUDA.

This module imports only torch and the standard library.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "env_world",
    "init_distributed",
    "default_group_timeout",
    "cleanup",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "barrier",
    "broadcast_object",
    "all_gather_object",
    "epoch_permutation",
    "shard_indices",
    "TrainBatchSampler",
    "SyncBatchNorm2d",
    "convert_sync_batchnorm",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False
    """Whether :func:`init_distributed` created the process group (and should destroy it)."""

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (``(0, 1, 0)`` if unset)."""

    def read(name: str, default: int) -> int:
        raw = os.environ.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None

    world = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local = read("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return rank, world, local


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when CUDA is available, else CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"device {device!r} is not a device name; use auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} was requested but CUDA is not available on this machine; use "
            "cpu (train.device=cpu, --device cpu)"
        )
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Set up this process from torchrun's environment.

    With ``WORLD_SIZE`` > 1 the default process group is initialised (unless the caller already
    did) with backend ``nccl`` on CUDA or ``gloo`` on CPU and a ``timeout_s`` timeout.

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``cuda`` means ``cuda:LOCAL_RANK``).
        timeout_s: How long collectives wait for a missing process before failing.

    Returns:
        The rank, world size, local rank, backend and device of this process.
    """
    rank, world, local = env_world()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        dev = resolve_device(device, local)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, world, local, dist.get_backend(), dev, initialized_here=False)
    dev = resolve_device(device, local)
    if world == 1:
        return DistInfo(0, 1, local, None, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        # Make NCCL errors and timeouts abort the process instead of hanging.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        kwargs["device_id"] = dev
    dist.init_process_group(
        backend=backend,
        timeout=datetime.timedelta(seconds=float(timeout_s)),
        rank=rank,
        world_size=world,
        **kwargs,
    )
    return DistInfo(rank, world, local, backend, dev, initialized_here=True)


def default_group_timeout() -> datetime.timedelta | None:
    """The timeout of the default process group, for the extra groups created later.

    ``dist.new_group`` does not inherit it (it falls back to torch's 30-minute default), so a
    group created without it would let a frozen rank stall its collectives for 30 minutes
    whatever ``timeout_s`` was given to :func:`init_distributed`. Read from the group itself
    (so a group initialised by the caller counts too); None (torch's default) when it cannot be
    read. Callers that know the timeout pass it explicitly instead.
    """
    if dist.is_available() and dist.is_initialized():
        try:  # private API (torch >= 2.2); guarded, the fallback below covers its absence
            pg = dist.distributed_c10d._get_default_group()
            timeout = pg._get_backend(torch.device("cpu")).options._timeout
            if isinstance(timeout, datetime.timedelta):
                return timeout
        except Exception:  # noqa: BLE001 - no CPU backend (nccl only) or a changed API
            pass
    return None


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.initialized_here and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (returned unchanged in a single process)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------------------------
# Data order


def _mix(seed: int, epoch: int) -> int:
    """A 63-bit seed from (seed, epoch); distinct pairs give unrelated streams."""
    x = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & ((1 << 63) - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The data order of one epoch: ``randperm(n)`` from a generator seeded by (seed, epoch)."""
    g = torch.Generator()
    g.manual_seed(_mix(seed, epoch))
    return torch.randperm(n, generator=g)


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Indices ``rank, rank + world, ...`` of ``n`` items: disjoint, complete, no padding."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid rank {rank} for world size {world_size}")
    return range(rank, n, world_size)


class TrainBatchSampler:
    """Deterministic training micro-batches of ``(epoch, index)`` pairs for one process.

    An epoch is ``n // batch_size`` optimizer steps (the incomplete last batch is dropped, as
    in the authors' code). Step ``s`` of epoch ``e`` uses positions ``s*B .. (s+1)*B`` of
    :func:`epoch_permutation` ``(n, seed, e)``; accumulation step ``m`` of rank ``r`` takes the
    ``b = B / (world * accum)`` positions starting at ``s*B + (m*world + r)*b``. The batches
    depend on nothing but (seed, epoch, step), so a resumed run replays them exactly.

    The dataset receives ``(epoch, index)`` so it can seed each sample's augmentation.

    Args:
        n: Dataset size.
        batch_size: Images per optimizer step over all processes and accumulation steps.
        accum_steps: Micro-batches per optimizer step and process.
        rank: This process.
        world_size: Number of processes.
        seed: The run's seed.

    Raises:
        ValueError: The batch does not split evenly, or the data set is smaller than a batch.
    """

    def __init__(self, n: int, batch_size: int, *, accum_steps: int = 1, rank: int = 0,
                 world_size: int = 1, seed: int = 0) -> None:
        parts = world_size * accum_steps
        if batch_size % parts:
            raise ValueError(
                f"batch size {batch_size} does not split over {world_size} processes x "
                f"{accum_steps} accumulation steps; choose a multiple of {parts}"
            )
        if n < batch_size:
            raise ValueError(
                f"the training set has {n} images, fewer than one batch of {batch_size}; "
                "lower the batch size (--batch-size) or add data"
            )
        self.n, self.batch_size, self.accum_steps = n, batch_size, accum_steps
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.micro_batch = batch_size // parts
        self.steps_per_epoch = n // batch_size
        self.epoch = 0
        self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch ``epoch`` from optimizer step ``start_step`` on."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside 0..{self.steps_per_epoch}")
        self.epoch = int(epoch)
        self.start_step = int(start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        perm = epoch_permutation(self.n, self.seed, self.epoch).tolist()
        b = self.micro_batch
        for step in range(self.start_step, self.steps_per_epoch):
            base = step * self.batch_size
            for m in range(self.accum_steps):
                off = base + (m * self.world_size + self.rank) * b
                yield [(self.epoch, perm[i]) for i in range(off, off + b)]

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accum_steps


# --------------------------------------------------------------------------------------------
# Synchronised BatchNorm


class _SumOverRanks(torch.autograd.Function):
    """``all_reduce(SUM)`` whose backward sums the gradients the same way."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        y = x.clone()
        dist.all_reduce(y, op=dist.ReduceOp.SUM, group=group)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the whole global batch, on any device.

    In training mode within a process group of size > 1, the per-channel sums, sums of squares
    and counts are added over the processes (an autograd-aware all-reduce, so gradients flow
    through the shared statistics as in ``torch.nn.SyncBatchNorm``). Otherwise it is a plain
    BatchNorm2d; the state dict is the same, so weights load into either.

    Args:
        process_group: Group to synchronise over (default: the world).
    """

    def __init__(self, *args: Any, process_group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        group = self.process_group
        if not (
            self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size(group) > 1
        ):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        xf = x.float()
        dims = [0] + list(range(2, x.dim()))
        local_count = torch.full((1,), float(x.numel() // max(c, 1)), device=x.device)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), local_count])  # (2C + 1,)
        stats = _SumOverRanks.apply(stats, group)
        total = stats[2 * c].detach()
        mean = stats[:c] / total
        var = (stats[c : 2 * c] / total - mean * mean).clamp_min(0.0)  # biased
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                m = (
                    1.0 / float(self.num_batches_tracked)
                    if self.momentum is None
                    else float(self.momentum)
                )
                unbiased = var.detach() * (total / (total - 1).clamp_min(1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)  # type: ignore[union-attr]
        scale = torch.rsqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight
            shift = self.bias - mean * scale
        else:
            shift = -mean * scale
        shape = [1, c] + [1] * (x.dim() - 2)
        out = xf * scale.view(shape) + shift.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(
    model: nn.Module, device_type: str, process_group: Any = None, timeout_s: float | None = None
) -> nn.Module:
    """Replace every BatchNorm by its synchronised version (torch's on CUDA, ours elsewhere).

    Call on every rank, in the same order (a dedicated gloo group may be created here so the
    statistics traffic never interleaves with DDP's gradient buckets).

    Args:
        model: The network (modified in place where possible; use the return value).
        device_type: ``cuda`` or anything else (CPU).
        process_group: Group for the statistics; None: a new gloo group on CPU.
        timeout_s: Timeout of that new group (``train.dist_timeout``); None: the default
            group's (:func:`default_group_timeout`).
    """
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    if process_group is None and dist.is_available() and dist.is_initialized():
        # Same timeout as the default group: torch gives new groups its own default (30 min),
        # so a frozen peer would otherwise stall the statistics all_reduce far beyond
        # train.dist_timeout.
        timeout = (
            datetime.timedelta(seconds=float(timeout_s)) if timeout_s is not None
            else default_group_timeout()
        )  # fmt: skip
        process_group = dist.new_group(backend="gloo", timeout=timeout)
    return _convert_cpu(model, process_group)


def _convert_cpu(module: nn.Module, group: Any) -> nn.Module:
    out = module
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        out = SyncBatchNorm2d(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group=group,
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child, group))
    return out
