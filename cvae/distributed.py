"""Multi-process training under `torchrun`: who this process is, its share of each batch, and sums across processes.

`torchrun --standalone --nproc-per-node N -m cvae train ...` starts N processes and sets RANK, WORLD_SIZE and
LOCAL_RANK; cvae never starts processes itself. The process group uses NCCL on CUDA and gloo on the CPU.

What makes N processes train like one with the same global batch (`data.batch_size`):
- every process walks the same epoch order (a pure function of seed and epoch) and takes every N-th example of
  each global batch, so the union of the shards is the single-process batch;
- each process weights its batch-mean loss by its share of the global batch (times N, which
  DistributedDataParallel's gradient averaging divides out): the gradient is that of the global batch's mean
  (with free bits, whose clamp acts on each shard's mean KL, only approximately), so the learning rate does
  not depend on N;
- the loss terms are all-reduced as sums over examples every step, so every process reports, checks and
  schedules beta from the same global figures;
- only rank 0 writes files; the checkpoint holds every rank's noise generator state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import CVAEError

__all__ = ["Context", "context", "shard_size", "loss_weight", "noise_seed"]


@dataclass(frozen=True)
class Context:
    """This process's place in a run: `rank` of `world_size` processes, `local_rank` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes metrics, checkpoints, pictures and the evaluation."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: an unnumbered CUDA device becomes cuda:LOCAL_RANK."""
        if self.distributed and device.type == "cuda" and device.index is None:
            device = torch.device("cuda", self.local_rank)
        if device.type == "cuda" and device.index is not None:  # set_device needs an index
            torch.cuda.set_device(device)
        return device

    def start(self, device: torch.device) -> None:
        """Join the process group (once per process): NCCL for CUDA, gloo for the CPU."""
        if not self.distributed or dist.is_initialized():
            return
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=self.rank, world_size=self.world_size,
                                    device_id=device if device.type == "cuda" else None)
        except (RuntimeError, ValueError) as exc:
            raise CVAEError(f"cannot join the {backend} process group as rank {self.rank} of {self.world_size}: "
                            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; start multi-process "
                            f"runs with torchrun (see the README)") from None

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce `tensor` in place as a sum over processes (a no-op in one process)."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj: object) -> list[object]:
        """Every process's `obj`, in rank order, on every process."""
        if not self.distributed:
            return [obj]
        out: list[object] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: object) -> object:
        """Rank 0's `obj` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def context() -> Context:
    """This process's context from torchrun's environment (one process when it is not set)."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CVAEError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them), got "
                        f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, "
                        f"{os.environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise CVAEError(f"RANK {rank} is not within WORLD_SIZE {world}")
    return Context(rank, world, local)


def shard_size(global_size: int, rank: int, world_size: int) -> int:
    """How many of a global batch's `global_size` examples rank `rank` takes (every `world_size`-th one)."""
    return len(range(rank, global_size, world_size))


def loss_weight(global_size: int, rank: int, world_size: int) -> float:
    """The factor on rank `rank`'s batch-mean loss that makes the average of the ranks' gradients (what
    DistributedDataParallel computes) the gradient of the global batch's mean: its share of the examples,
    times `world_size`. Zero for a rank whose share is empty."""
    return shard_size(global_size, rank, world_size) * world_size / global_size


def noise_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s noise generator, for ranks above 0 (the trainer leaves rank 0 on the run's
    own seed, so a single process draws what it always drew)."""
    return (seed * 1_000_003 + 7_919 * rank) % (2**63)
