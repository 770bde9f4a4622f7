"""A directory-backed ticket store: every (round, ticket) mask is saved as soon as it is found (safetensors)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic import atomic_write


def schedule_text(schedule: Sequence[float]) -> str:
    """A schedule (prefix) as stable text: what mask files record and what run keys hash."""
    return json.dumps([round(s, 12) for s in schedule])


class StageFileError(ValueError):
    """A file in a pipeline run directory that exists but cannot be read (truncated, edited, from another version)."""

    def __init__(self, path: Path, reason: object) -> None:
        super().__init__(f"{path}: this stage file of the run is corrupt ({reason}); delete it to recompute that stage")


def read_stage_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and metadata of stage file ``path`` (one open), None when it does not exist yet;
    :class:`StageFileError` when unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}, fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise StageFileError(path, exc) from None


def read_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    """The tensors of stage file ``path``, None when it does not exist yet; :class:`StageFileError` when unreadable."""
    read = read_stage_file(path)
    return None if read is None else read[0]


def read_json(path: Path) -> object | None:
    """The JSON value of stage file ``path``, None when it does not exist yet; :class:`StageFileError` when unreadable."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StageFileError(path, exc) from None


def atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file under a temporary name and rename it, so a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata))


class DirStore:
    """:class:`~rtl_kernels.pipeline.imp.TicketStore` over ``root/round_RRR/ticket_KKK.safetensors``."""

    def __init__(self, root: str | os.PathLike, schedule: Sequence[float] | None = None) -> None:
        self.root = Path(root)
        self.schedule = None if schedule is None else [float(s) for s in schedule]

    def _mask_path(self, round_index: int, ticket: int) -> Path:
        return self.root / f"round_{round_index:03d}" / f"ticket_{ticket:03d}.safetensors"

    def _prefix(self, round_index: int) -> str | None:
        # a round's mask depends on the sparsities of that round and every round before it
        return None if self.schedule is None else schedule_text(self.schedule[: round_index + 1])

    def load_mask(self, round_index: int, ticket: int) -> dict[str, torch.Tensor] | None:
        """The saved mask, or None when there is none or (with a schedule) it was found on another schedule."""
        read = read_stage_file(self._mask_path(round_index, ticket))
        if read is None:
            return None
        tensors, metadata = read
        prefix = self._prefix(round_index)
        if prefix is not None and metadata.get("schedule") != prefix:
            return None
        return {k: v.bool() for k, v in tensors.items()}

    def save_mask(self, round_index: int, ticket: int, masks: dict[str, torch.Tensor]) -> None:
        prefix = self._prefix(round_index)
        metadata = None if prefix is None else {"schedule": prefix}
        atomic_save({k: v.to(torch.uint8) for k, v in masks.items()}, self._mask_path(round_index, ticket), metadata)

    def load_rewind(self, ticket: int) -> dict[str, torch.Tensor] | None:
        return read_tensors(self.root / f"rewind_{ticket:03d}.safetensors")

    def save_rewind(self, ticket: int, state: dict[str, torch.Tensor]) -> None:
        atomic_save(state, self.root / f"rewind_{ticket:03d}.safetensors")
