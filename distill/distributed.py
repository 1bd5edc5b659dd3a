"""Multi-process training with the engine PyTorch users already run: torchrun + DDP.

Under `torchrun --nproc_per_node=N -m distill run RECIPE` (or `distill run --nproc N`) every
process trains on its shard of each epoch (DistributedSampler) and DistributedDataParallel keeps
the student and connectors identical; rank 0 alone writes checkpoints, history and metrics.
Gloo on CPU, NCCL on GPUs. In a single process every function here is a no-op.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_from_env() -> None:
    """Join the process group torchrun describes in the environment (once)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend)


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
    """`tensor`, reduced in place over all ranks with op "min" or "max"; as is in one process."""
    if active():
        dist.all_reduce(tensor, op={"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}[op])
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
