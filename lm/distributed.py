"""Several processes for one run (``torchrun --nproc_per_node=N -m lm.cli train CONFIG``).

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`process_group`
reads them, starts the process group (gloo on the CPU, NCCL on CUDA, one GPU per process) and ends it.
Without torchrun (``WORLD_SIZE`` unset or 1) nothing is started and every helper here is the identity,
so a one-process run takes exactly the code path it always took.

How the trainer uses it: the ``B`` columns of a batch are split into ``N`` equal blocks, one per process
(``B % N == 0``); DistributedDataParallel averages the gradients, so every process holds the same
weights after every step. Process 0 alone writes metrics, checkpoints and the result; for a checkpoint
the carried hidden states of all processes are gathered into one ``(.., B, ..)`` state and every
process's generator states are stored, so every process resumes from the same file exactly.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from lm.errors import UserError


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one run."""

    rank: int = 0  # this process (0 writes the files)
    size: int = 1  # number of processes
    local_rank: int = 0  # this process on its machine (its GPU index)

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_environment() -> World:
    """The world that torchrun describes in the environment (a single process without it)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise UserError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (they are set by torchrun).") from None
    return World(rank=rank, size=max(size, 1), local_rank=local_rank)


def device_for(world: World, device: torch.device) -> torch.device:
    """One GPU per process: ``cuda:LOCAL_RANK`` when training on CUDA with several processes."""
    if world.enabled and device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"process {world.rank} wants GPU {world.local_rank} but only {torch.cuda.device_count()} are visible.")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return device


@contextlib.contextmanager
def process_group(world: World, device: torch.device) -> Iterator[None]:
    """Start the process group for the block (if there are several processes) and end it after."""
    if not world.enabled or dist.is_initialized():
        yield
        return
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        # Every process arrives before any tears the group down: process 0 returns from its last broadcast
        # as soon as it has sent, and gloo closing its connections then can leave a receiver hanging.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.enabled:
        dist.barrier()


def broadcast_object(world: World, value: Any) -> Any:
    """Process 0's ``value`` on every process."""
    if not world.enabled:
        return value
    box = [value if world.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(world: World, value: Any) -> list[Any]:
    """Every process's ``value``, in rank order, on every process."""
    if not world.enabled:
        return [value]
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return values


def mean_over_processes(world: World, tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the processes (a detached copy; the tensor itself without several)."""
    if not world.enabled:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world.size


def batch_dims(init_state) -> Any:
    """The batch dimension of every tensor of a body's state: compare the states for batch sizes 1 and 2."""
    one, two = init_state(1), init_state(2)
    return _map2(lambda a, b: next(i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y), one, two)


def gather_state(world: World, state, dims):
    """The full ``B``-column state from every process's ``B / N`` columns (concatenated in rank order)."""
    if not world.enabled:
        return state
    return _map2(lambda tensor, dim: _all_gather_cat(world, tensor, dim), state, dims)


def split_state(world: World, state, dims):
    """This process's block of columns of a full ``B``-column state."""
    if not world.enabled:
        return state
    return _map2(lambda tensor, dim: tensor.chunk(world.size, dim)[world.rank].clone(), state, dims)


def _all_gather_cat(world: World, tensor: torch.Tensor, dim: int) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim)


def _map2(function, a, b):
    """``function`` on the tensors of two structures of the same shape (lists, tuples, dicts of tensors)."""
    if isinstance(a, torch.Tensor):
        return function(a, b)
    if isinstance(a, (list, tuple)):
        return type(a)(_map2(function, x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return {key: _map2(function, a[key], b[key]) for key in a}
    return a
