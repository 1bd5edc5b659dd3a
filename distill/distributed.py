"""Multi-process training with the engine PyTorch users already run: torchrun + DDP.

Under `torchrun --nproc_per_node=N -m distill run RECIPE` (or `distill run --nproc N`) every
process trains on its shard of each epoch (DistributedSampler) and DistributedDataParallel keeps
the student and connectors identical; rank 0 alone writes checkpoints, history and metrics.
Gloo on CPU, NCCL on GPUs. In a single process every function here is a no-op.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .errors import DistillError


# Rank 0 alone builds the teacher cache while the others wait at a barrier: at ImageNet size that
# takes far longer than the default 10 minutes after which NCCL's watchdog would kill the waiters.
TIMEOUT = datetime.timedelta(hours=6)


def init_from_env(device: torch.device | str = "cpu") -> None:
    """Join the process group torchrun describes in the environment (once): NCCL with one GPU per
    process when the run trains on CUDA, gloo when it trains on the CPU (whatever GPUs exist)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if torch.device(device).type == "cuda":
        if local_rank() >= torch.cuda.device_count():
            raise DistillError(f"process {local_rank()} has no GPU of its own: this machine has "
                               f"{torch.cuda.device_count()}; expected --nproc at most that, or --device cpu")
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", timeout=TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=TIMEOUT)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def launch_rank() -> int:
    """This process's rank as torchrun set it; readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def all_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """`tensor`, reduced in place over all ranks with op "min", "max" or "sum"; as is in one process."""
    if active():
        dist.all_reduce(tensor, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}[op])
    return tensor


def barrier() -> None:
    if active():
        dist.barrier()


def device_for_rank(device: torch.device) -> torch.device:
    """Each process on its own GPU."""
    if active() and device.type == "cuda":
        return torch.device("cuda", local_rank())
    return device


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank.

    DDP broadcasts buffers at the start of each forward, so after the last step each rank holds
    its own update; this makes the ranks' end-of-epoch states identical.
    """
    if active():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
