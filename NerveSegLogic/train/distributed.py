"""Training on several processes: PyTorch's DistributedDataParallel, the processes started by ``torchrun``.

``torchrun --nproc-per-node N -m NerveSegLogic.train ARGS`` (or ``nerveseg train --distributed ARGS`` under torchrun)
runs the card's recipe as one process would, on N processes (one per GPU, or shares of the CPU cores), and on
several nodes with ``--nnodes``:

- The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
  ``MASTER_PORT``): backend ``nccl`` on CUDA (each process takes the GPU of its local rank), ``gloo`` on CPUs (each
  process takes ``cores / processes on the node`` threads unless ``--threads`` says otherwise).
- Data: every process reads the whole data set and derives the epoch's order from seed and epoch
  (:class:`.data.ShardedEpoch`, the trainer's own order); each global batch, the card's ``batch_size``, is cut in
  ``WORLD_SIZE`` slices of ``batch_size / WORLD_SIZE`` frames (a world size that does not divide the batch is an
  error with the numbers, :class:`BatchSplitError`). A frame keeps its single-process position, and with it its
  augmentation.
- One step is the single-process step on the same global batch. The semantic losses (batch Dice, Dice + CE,
  BCE + Dice + L2) are not means of per-frame terms (the Dice is taken over the whole batch), so averaging per-process
  losses would be another loss: each process gathers every process's logits and targets (:meth:`Group.gather_rows`)
  and computes the recipe's loss on the global batch, the gradient reaching only its own logits, scaled by the world
  size, which DistributedDataParallel's average of the gradients divides again. Instance models (Mask R-CNN) return
  their own loss terms: each process's loss is weighted by its share of the batch and DDP averages them (close to,
  not the same as, the single-process loss, whose terms are normalised per batch); a process whose share of a
  short last batch is empty runs a stand-in frame whose loss counts for nothing (it does enter synchronised
  batch-norm statistics).
- Batch norm: by default converted to synchronised batch norm (``--no-sync-batchnorm`` turns it off): statistics
  of the global batch, the running statistics updated as one process would, so the run matches one process.
  ``torch.nn.SyncBatchNorm`` on CUDA; on CPUs, which torch's SyncBatchNorm refuses, :class:`GlobalBatchNorm` (the
  same computation with gloo's all-reduce, statistics accumulated in float64 like torch's CPU batch norm).
  Without it each process normalises with its own slice's statistics (a smaller batch than the recipe's) and the
  running statistics kept are those of rank 0's slices (DDP broadcasts rank 0's buffers at every step).
  Frozen normalisation (``--freeze-norm``, the site recipe) is in eval mode and needs neither.
- Only rank 0 validates (the others wait for its result), writes checkpoints, the best weights, the learning curve
  and the card (which records the world size, backend and batch norm); a barrier before and after each
  checkpoint. Every rank resumes from the checkpoint in ``--out`` (on several nodes a folder every node sees) and
  the ranks check that they found the same one, read the same data and run the same setup.
- Decisions that depend on the clock (the time limit, a mid-epoch checkpoint) are rank 0's, sent to the others,
  so every process stops at the same step. Torch's random stream (dropout, Mask R-CNN's proposal sampling) is
  rank 0's single-process stream on rank 0 and a stream of its own on each other rank.

How equal to one process (Testing/test_train_distributed.py, 2 gloo processes on CPUs): to float32 rounding
(1e-7) in every weight with synchronised batch norm and a smooth activation and SGD. Two things make runs that
are equal in exact arithmetic differ by more, the same between two single-process runs with another thread count:
a ReLU unit within rounding of its kink can switch sides, and Adam turns a gradient that is zero in exact
arithmetic (the bias of a convolution followed by batch norm) into a step of +-lr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import socket
from datetime import timedelta
from functools import lru_cache
from typing import Any, Dict, List, Mapping, Optional, Sequence

#: Set by torchrun (and by any launcher using PyTorch's env:// rendezvous) in each process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

#: How long a process waits for the others in a collective (rank 0's validation included) before giving up.
TIMEOUT = timedelta(minutes=30)


class DistributedError(RuntimeError):
    """A launch that cannot train: not started by torchrun, more processes than GPUs, or ranks that disagree."""

    same_on_every_rank = False


class BatchSplitError(ValueError):
    """The world size does not divide the global batch."""

    same_on_every_rank = True  # a function of the arguments, which every rank shares: rank 0 alone reports it


def launched_by_torchrun(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process was started by torchrun (its rendezvous variables are all set)."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name) for name in TORCHRUN_VARIABLES)


def world_from_env(environ: Optional[Mapping[str, str]] = None) -> Dict[str, int]:
    environ = os.environ if environ is None else environ
    world = int(environ["WORLD_SIZE"])
    return {"rank": int(environ["RANK"]), "world_size": world, "local_rank": int(environ["LOCAL_RANK"]),
            "local_world_size": int(environ.get("LOCAL_WORLD_SIZE") or world)}


def torchrun_command(arguments: Sequence[str]) -> str:
    """The torchrun command line running ``nerveseg train ARGUMENTS`` on one node (``--distributed`` dropped)."""
    rest = [a for a in arguments if a != "--distributed"]
    return "torchrun --nproc-per-node N -m NerveSegLogic.train " + shlex.join(rest)


def not_launched_message(arguments: Sequence[str]) -> str:
    command = torchrun_command(arguments)
    return ("--distributed trains on several processes started by torchrun, and this process was not started by "
            "it (no RANK, WORLD_SIZE, MASTER_ADDR in the environment). On one node with N GPUs (or N shares of the "
            f"CPU cores) run:\n  {command}\non M nodes run on each node (same command, the node's number as "
            "NODE_RANK):\n  " + command.replace("--nproc-per-node N", "--nnodes M --nproc-per-node N "
                                                "--node-rank NODE_RANK --rdzv-backend c10d --rdzv-endpoint HOST:29400"))


def split_batch(global_batch: int, world_size: int, what: str = "the recipe's batch_size") -> int:
    """Frames per process of a global batch; :class:`BatchSplitError` with the numbers when it does not divide."""
    if world_size >= 1 and global_batch % world_size == 0:
        return global_batch // world_size
    lower = global_batch // world_size * world_size
    choices = " or ".join(str(v) for v in (lower, lower + world_size) if v > 0)
    divisors = [str(d) for d in range(1, global_batch + 1) if global_batch % d == 0]
    counts = ", ".join(divisors[:-1]) + (" or " if len(divisors) > 1 else "") + divisors[-1]
    raise BatchSplitError(
        f"the global batch of {global_batch} frames ({what}) does not divide among the {world_size} processes "
        f"torchrun started (WORLD_SIZE {world_size}): each would train on {global_batch / world_size:g} frames. "
        f"Keep the batch a multiple of the process count (--batch-size {choices}), or run a number of processes "
        f"that divides {global_batch} ({counts}; --nproc-per-node x --nnodes).")


def _fingerprint(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- batch norm
@lru_cache(maxsize=None)
def _autograd_functions():
    import torch
    import torch.distributed as dist

    class AllReduceSum(torch.autograd.Function):
        """Sum over processes; its gradient is the sum of the processes' gradients (each holds part of the loss)."""

        @staticmethod
        def forward(ctx, tensor):
            total = tensor.clone()
            dist.all_reduce(total)
            return total

        @staticmethod
        def backward(ctx, grad):
            total = grad.contiguous().clone()
            dist.all_reduce(total)
            return total

    class ScaleGrad(torch.autograd.Function):
        """Identity whose gradient is multiplied by ``factor``."""

        @staticmethod
        def forward(ctx, tensor, factor):
            ctx.factor = factor
            return tensor.view_as(tensor)

        @staticmethod
        def backward(ctx, grad):
            return grad * ctx.factor, None

    return AllReduceSum, ScaleGrad


@lru_cache(maxsize=None)
def _global_batchnorm_class():
    import torch
    import torch.distributed as dist
    from torch.nn.modules.batchnorm import _BatchNorm

    class GlobalBatchNorm(_BatchNorm):
        """Batch norm over the global batch, on any device and backend (torch's SyncBatchNorm takes GPUs only).

        In training, with a process group of several processes: the per-channel mean, then the variance of the
        global batch (two passes, all-reduced with gradients that flow back to every process's inputs), the output
        normalised with them and the running statistics updated as ``BatchNorm`` does for the global batch (running
        variance unbiased). Otherwise it is ``BatchNorm``. Same parameters, buffers and state-dict keys."""

        def _check_input_dim(self, input):
            if input.dim() < 2:
                raise ValueError(f"expected an input of 2 or more dimensions, got {input.dim()}")

        def forward(self, input):
            if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
                return super().forward(input)
            self._check_input_dim(input)
            all_reduce_sum, _ = _autograd_functions()
            dims = [0] + list(range(2, input.dim()))
            shape = [1, -1] + [1] * (input.dim() - 2)
            # statistics accumulated in float64 on CPUs, as torch's own CPU batch norm does
            acc = torch.float64 if input.device.type == "cpu" else torch.float32
            count = torch.tensor([input.numel() // max(1, input.shape[1])], dtype=acc, device=input.device)
            sums = all_reduce_sum.apply(torch.cat([input.sum(dims, dtype=acc), count]))
            total = sums[-1].detach()
            if float(total) < 2:
                raise ValueError(f"batch norm needs more than one value per channel over the global batch, got "
                                 f"{int(total)}")
            mean = (sums[:-1] / total).to(input.dtype).view(shape)
            # The variance's derivative through the mean is 0 (the mean minimises the sum of squares), so it is
            # taken with the mean detached, as the analytic batch-norm backward does, rather than left to autograd
            # as a sum of rounding errors.
            deviation = input - mean.detach()
            var = all_reduce_sum.apply((deviation * deviation).sum(dims, dtype=acc)) / total
            scale = torch.rsqrt(var + self.eps).to(input.dtype)
            if self.affine:
                output = (input - mean) * (scale * self.weight).view(shape) + self.bias.view(shape)
            else:
                output = (input - mean) * scale.view(shape)
            if self.track_running_stats and self.running_mean is not None:
                with torch.no_grad():
                    self.num_batches_tracked.add_(1)
                    factor = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                              else float(self.momentum))
                    self.running_mean.mul_(1 - factor).add_(mean.detach().view(-1) * factor)
                    unbiased = var.detach() * (total / (total - 1))
                    self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype) * factor)
            return output

    return GlobalBatchNorm


def convert_batchnorm(module, device: str):
    """``module`` with every batch-norm layer synchronised across processes: torch's SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere; the same parameter objects and buffers (an optimiser made before still
    holds them). Returns (module, layers converted)."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    if str(device).startswith("cuda"):
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return converted, sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules())
    global_bn = _global_batchnorm_class()
    count = [0]

    def convert(layer):
        if isinstance(layer, _BatchNorm) and not isinstance(layer, (torch.nn.SyncBatchNorm, global_bn)):
            new = global_bn(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
            if layer.affine:
                with torch.no_grad():
                    new.weight = layer.weight
                    new.bias = layer.bias
            new.running_mean = layer.running_mean
            new.running_var = layer.running_var
            new.num_batches_tracked = layer.num_batches_tracked
            new.train(layer.training)
            count[0] += 1
            layer = new
        for name, child in list(layer.named_children()):
            layer.add_module(name, convert(child))
        return layer

    return convert(module), count[0]


def is_global_batchnorm(layer) -> bool:
    return type(layer).__name__ == "GlobalBatchNorm"


# ---------------------------------------------------------------------------------------------------- contexts
class Single:
    """One process (no torchrun): every collective is the identity. The trainer's default."""

    distributed = False
    rank = 0
    world_size = 1
    local_rank = 0
    local_world_size = 1
    backend = None
    writer = True

    def split_batch(self, global_batch: int, what: str = "the recipe's batch_size") -> int:
        return global_batch

    def start(self, device: str) -> str:
        return device

    def threads(self, requested: Optional[int]) -> int:
        return int(requested or os.cpu_count() or 1)

    def barrier(self) -> None:
        pass

    def from_writer(self, compute):
        """Rank 0's ``compute()``, on every rank (here: ``compute()``)."""
        return compute()

    def decide(self, *flags: bool) -> List[bool]:
        """Rank 0's flags, on every rank."""
        return [bool(f) for f in flags]

    def check_agree(self, what: Mapping[str, Any]) -> None:
        pass

    def gather_rows(self, tensor, sizes: Sequence[int], own_gradient: bool = True):
        return tensor

    def weighted_mean(self, value: float, weight: float) -> float:
        return value

    def wrap(self, model):
        return model

    def record(self, per_rank_batch: int, sync: Optional[str]) -> Dict[str, Any]:
        return {"world_size": 1}

    def close(self) -> None:
        pass


class Group(Single):
    """This process's place in a torchrun launch (read from its environment); :meth:`start` joins the group."""

    distributed = True

    def __init__(self, environ: Optional[Mapping[str, str]] = None):
        environ = os.environ if environ is None else environ
        if not launched_by_torchrun(environ):
            missing = [name for name in TORCHRUN_VARIABLES if not environ.get(name)]
            raise DistributedError(f"not started by torchrun ({', '.join(missing)} not set): start it with "
                                   "torchrun --nproc-per-node N -m NerveSegLogic.train ...")
        world = world_from_env(environ)
        self.rank, self.world_size = world["rank"], world["world_size"]
        self.local_rank, self.local_world_size = world["local_rank"], world["local_world_size"]
        self.writer = self.rank == 0
        self.backend = None
        self.device = "cpu"
        self.started = False

    def split_batch(self, global_batch: int, what: str = "the recipe's batch_size") -> int:
        return split_batch(int(global_batch), self.world_size, what)

    def start(self, device: str) -> str:
        """Join the process group: nccl for CUDA (this process's GPU: its local rank), gloo for CPUs. Returns the
        device to train on."""
        import torch
        import torch.distributed as dist

        if str(device).startswith("cuda"):
            if device not in ("cuda", f"cuda:{self.local_rank}"):
                raise DistributedError(f"--device {device}: under torchrun each process takes the GPU of its local "
                                       "rank; give --device cuda (or auto)")
            gpus = torch.cuda.device_count()
            if self.local_world_size > gpus:
                raise DistributedError(f"torchrun started {self.local_world_size} processes on {socket.gethostname()}"
                                       f" but torch sees {gpus} GPU(s) there: use --nproc-per-node {gpus} (one "
                                       "process per GPU)")
            torch.cuda.set_device(self.local_rank)
            self.backend, device = "nccl", "cuda"
        else:
            self.backend = "gloo"
        self.device = device
        if not dist.is_initialized():
            dist.init_process_group(backend=self.backend, init_method="env://", rank=self.rank,
                                    world_size=self.world_size, timeout=TIMEOUT)
        self.started = True
        return device

    def threads(self, requested: Optional[int]) -> int:
        return int(requested or max(1, (os.cpu_count() or 1) // max(1, self.local_world_size)))

    def _collective_device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()

    def from_writer(self, compute):
        import torch.distributed as dist

        box = [compute() if self.writer else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def decide(self, *flags: bool) -> List[bool]:
        import torch
        import torch.distributed as dist

        values = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int64, device=self._collective_device())
        dist.broadcast(values, src=0)
        return [bool(v) for v in values.tolist()]

    def check_agree(self, what: Mapping[str, Any]) -> None:
        """Every rank must hold the same ``what`` (checkpoint found, data fingerprint, setup); DistributedError
        naming the first rank that differs from rank 0, and how, otherwise (raised on every rank)."""
        import torch.distributed as dist

        mine = {key: _fingerprint(value) for key, value in what.items()}
        shown = {key: value for key, value in what.items() if key == "checkpoint"}
        everyone: List[Any] = [None] * self.world_size
        dist.all_gather_object(everyone, {"host": socket.gethostname(), "fingerprints": mine, "shown": shown})
        first = everyone[0]
        for rank, theirs in enumerate(everyone[1:], start=1):
            differing = [key for key in mine if theirs["fingerprints"][key] != first["fingerprints"][key]]
            if not differing:
                continue
            key = differing[0]
            detail = {"checkpoint": f"rank 0 found {first['shown'].get('checkpoint')}, rank {rank} found "
                                    f"{theirs['shown'].get('checkpoint')}: on several nodes --out must be a folder "
                                    "every node sees (a shared file system)",
                      "data": "every node must read the same --data (the same frames and masks)",
                      "setup": "every process must be started with the same arguments"}.get(key, key)
            error = DistributedError(f"rank {rank} ({theirs['host']}) differs from rank 0 ({first['host']}) in "
                                     f"{', '.join(differing)}: {detail}")
            error.same_on_every_rank = True
            raise error

    def gather_rows(self, tensor, sizes: Sequence[int], own_gradient: bool = True):
        """The global batch of a per-process tensor (first dimension: this process's frames, ``sizes[rank]``):
        every process's rows in rank order. Only this process's rows carry a gradient, multiplied by the world
        size (``own_gradient``): every process computes the same global loss, and DDP averages what each one's
        rows contribute."""
        import torch
        import torch.distributed as dist

        _, scale_grad = _autograd_functions()
        rows = max(sizes)
        local = tensor.detach()
        if local.shape[0] < rows:
            local = torch.cat([local, local.new_zeros((rows - local.shape[0],) + tuple(local.shape[1:]))])
        parts = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(parts, local.contiguous())
        pieces = []
        for rank, count in enumerate(sizes):
            if rank == self.rank:
                own = tensor if tensor.shape[0] == count else tensor[:count]
                if own_gradient and own.requires_grad:
                    own = scale_grad.apply(own, float(self.world_size))
                pieces.append(own)
            else:
                pieces.append(parts[rank][:count])
        return torch.cat(pieces)

    def weighted_mean(self, value: float, weight: float) -> float:
        """Sum over processes of ``value * weight`` (weights summing to 1: a mean over the global batch)."""
        import torch
        import torch.distributed as dist

        total = torch.tensor([value * weight], dtype=torch.float64, device=self._collective_device())
        dist.all_reduce(total)
        return float(total.item())

    def wrap(self, model):
        from torch.nn.parallel import DistributedDataParallel

        if self.backend == "nccl":
            return DistributedDataParallel(model, device_ids=[self.local_rank], output_device=self.local_rank)
        return DistributedDataParallel(model)

    def record(self, per_rank_batch: int, sync: Optional[str]) -> Dict[str, Any]:
        nodes = self.world_size // self.local_world_size if self.world_size % self.local_world_size == 0 else None
        return {"world_size": self.world_size, "backend": self.backend, "launcher": "torchrun", "nodes": nodes,
                "processes_per_node": self.local_world_size, "per_process_batch": per_rank_batch,
                "global_batch": per_rank_batch * self.world_size, "batch_norm": sync}

    def close(self) -> None:
        import torch.distributed as dist

        if self.started and dist.is_initialized():
            dist.destroy_process_group()
        self.started = False


def context(distributed: bool, environ: Optional[Mapping[str, str]] = None) -> Single:
    """:class:`Group` from torchrun's environment when ``distributed``, else :class:`Single`."""
    return Group(environ) if distributed else Single()
