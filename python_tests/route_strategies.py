"""Route draws shared by the kernel property tests: uniform, all rows on one ticket, or every odd ticket empty."""

from __future__ import annotations

import torch
from hypothesis import strategies as st


def draw_routes(draw, k: int, rows: int, generator: torch.Generator) -> torch.Tensor:
    """Routes of ``rows`` rows over ``k`` tickets, of a drawn kind (K = 1 and empty batches included)."""
    kind = draw(st.sampled_from(["uniform", "one_ticket", "some_empty"]))
    if kind == "uniform":
        return torch.randint(0, k, (rows,), generator=generator)
    if kind == "one_ticket":
        return torch.full((rows,), draw(st.integers(0, k - 1)), dtype=torch.long)
    return 2 * torch.randint(0, (k + 1) // 2, (rows,), generator=generator)
