"""A directory-backed ticket store: every (round, ticket) mask is saved as soon as it is found (safetensors)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_write


def atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write a safetensors file under a temporary name and rename it, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp))


class DirStore:
    """:class:`~rtl_kernels.pipeline.imp.TicketStore` over ``root/round_RRR/ticket_KKK.safetensors``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _mask_path(self, round_index: int, ticket: int) -> Path:
        return self.root / f"round_{round_index:03d}" / f"ticket_{ticket:03d}.safetensors"

    def load_mask(self, round_index: int, ticket: int) -> dict[str, torch.Tensor] | None:
        path = self._mask_path(round_index, ticket)
        return {k: v.bool() for k, v in load_file(str(path)).items()} if path.is_file() else None

    def save_mask(self, round_index: int, ticket: int, masks: dict[str, torch.Tensor]) -> None:
        atomic_save({k: v.to(torch.uint8) for k, v in masks.items()}, self._mask_path(round_index, ticket))

    def load_rewind(self, ticket: int) -> dict[str, torch.Tensor] | None:
        path = self.root / f"rewind_{ticket:03d}.safetensors"
        return load_file(str(path)) if path.is_file() else None

    def save_rewind(self, ticket: int, state: dict[str, torch.Tensor]) -> None:
        atomic_save(state, self.root / f"rewind_{ticket:03d}.safetensors")
