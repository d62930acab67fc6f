"""Process group set-up and model wrapping with PyTorch's own distributed stack.

``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; without them protlm runs as a single process.
The backend is NCCL on GPUs and gloo on CPU. Several processes wrap the model in DDP, or with
``train.parallel: fsdp`` shard it with FSDP2 (``fully_shard`` on every transformer block, then
on the whole model), optionally with parameters, gradients and optimizer state offloaded to host
memory (the papers' "large model support").
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist

from protlm.io.processes import (DistEnv, all_reduce_sum, barrier, destroy, gather_objects,  # noqa: F401
                                  init_distributed)
from protlm.pretrain.config import TrainConfig


def block_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a ``transformers`` model (its ``_no_split_modules`` classes)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    # A parameter reachable under two names (input embedding tied to the output head) must stay
    # in the root group: a block that owns one is not sharded on its own.
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    tied = {pid for pid, n in seen.items() if n > 1}
    return [m for m in model.modules()
            if type(m).__name__ in names and not any(id(p) in tied for p in m.parameters())]


def wrap_model(model: torch.nn.Module, train: TrainConfig, env: DistEnv, precision_dtype):
    """Apply activation checkpointing and DDP/FSDP2; returns the module to call forward on."""
    if train.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not env.distributed:
        return model
    if train.parallel == "fsdp":
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        kwargs = {}
        if precision_dtype is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=precision_dtype, reduce_dtype=torch.float32)
        if train.cpu_offload:
            kwargs["offload_policy"] = CPUOffloadPolicy()
        blocks = block_modules(model)
        for block in blocks:
            fully_shard(block, **kwargs)
        fully_shard(model, **kwargs)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [env.device.index] if env.device.type == "cuda" else None
    return DDP(model, device_ids=ids)


def no_sync(wrapped: torch.nn.Module, active: bool):
    """Skip gradient all-reduce on all but the last micro-batch of an accumulation."""
    if active and hasattr(wrapped, "no_sync"):
        return wrapped.no_sync()
    if active and hasattr(wrapped, "set_requires_gradient_sync"):  # FSDP2
        wrapped.set_requires_gradient_sync(False)
        return _restore_sync(wrapped)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _restore_sync(wrapped):
    try:
        yield
    finally:
        wrapped.set_requires_gradient_sync(True)


