"""Spread the K independent ticket searches over torch.distributed ranks and gather the masks."""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

from ..masks.packed import PackedMasks, pack_masks

logger = logging.getLogger(__name__)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (gloo on CPU, nccl with CUDA); False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        logger.info("joined process group: rank %d of %d", dist.get_rank(), dist.get_world_size())
    return True


def owned_tickets(num_tickets: int) -> list[int]:
    """The tickets this rank searches (round-robin over ranks)."""
    rank, size = world()
    return [k for k in range(num_tickets) if k % size == rank]


def gather_masks(masks: dict[str, torch.Tensor], owned: list[int]) -> dict[str, torch.Tensor]:
    """Every rank's tickets in one dict: each rank fills its own rows, an all-reduce of the packed bits merges them."""
    _, size = world()
    if size == 1:
        return masks
    out = {}
    for name, m in masks.items():
        keep = torch.zeros(m.shape[0], dtype=torch.bool)
        keep[owned] = True
        local = m.clone()
        local[~keep] = False
        bits = pack_masks(local.cpu()).bits.clone()
        dist.all_reduce(bits, op=dist.ReduceOp.SUM)  # rows are disjoint across ranks, so the sum is the union
        out[name] = PackedMasks(bits, m.shape[1:]).unpack().to(m.device)
    return out


def barrier() -> None:
    if world()[1] > 1:
        dist.barrier()
