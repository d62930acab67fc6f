"""torchrun's processes: the process group and the few collectives every distributed job uses.

``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; without them a job runs as one process and every
call here is a no-op. The backend is NCCL on GPUs and gloo on CPU. Pretraining
(:mod:`protlm.pretrain.distributed`, which adds DDP/FSDP wrapping) and fine-tuning
(:mod:`protlm.tasks.train`) share these.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    group: bool = False  # a process group of one (torchrun --nproc_per_node 1 with FSDP)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.group


def launched_by_torchrun() -> bool:
    """torchrun (or another launcher that sets the rendezvous variables) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ)


def init_distributed(device: str = "auto", one_process_group: bool = False) -> DistEnv:
    """The process group of a torchrun job. ``one_process_group``: a group even for one
    process, when torchrun started it (FSDP shards — and offloads — on one device too)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    group = world == 1 and one_process_group and launched_by_torchrun()
    if (world > 1 or group) and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistEnv(rank=rank, world=world, local_rank=local_rank, device=dev, group=group)


def all_reduce_sum(values: list[float], env: DistEnv) -> list[float]:
    """Sum a few scalars across processes (float64 on CPU: gloo and exact for counts)."""
    t = torch.tensor(values, dtype=torch.float64)
    if env.distributed:
        if env.device.type == "cuda":
            t = t.to(env.device)
        dist.all_reduce(t)
    return t.cpu().tolist()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def gather_objects(obj, env: DistEnv) -> list:
    if not env.distributed:
        return [obj]
    out = [None] * env.world
    dist.all_gather_object(out, obj)
    return out


def destroy(env: DistEnv) -> None:
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
