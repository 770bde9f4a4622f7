"""Nested progress bars (rounds × tickets × epochs); silent with progress=False or when stderr is not a terminal."""

from __future__ import annotations

from tqdm.auto import tqdm


def bar(total: int, desc: str, position: int, enabled: bool, leave: bool | None = None) -> tqdm:
    """A tqdm bar at nesting level ``position``; ``disable=None`` lets tqdm go quiet on non-TTY output."""
    return tqdm(
        total=total,
        desc=desc,
        position=position,
        leave=position == 0 if leave is None else leave,
        disable=None if enabled else True,
        dynamic_ncols=True,
    )
