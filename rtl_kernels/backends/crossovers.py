"""The cpu backend's measured path crossovers, kept as data (``cpu_crossovers.json``) rather than constants.

``bench/cpu_crossovers.py`` measures them on the machine it runs on and rewrites the JSON; the
backend reads the table once at import.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

PATH = Path(__file__).with_name("cpu_crossovers.json")
# a ``null`` limit: no crossover was found in the measured range, so the first path always runs
NO_LIMIT = 2**62


@cache
def table() -> dict:
    """The whole crossover table (read once)."""
    return json.loads(PATH.read_text())


def per_dtype(op: str, key: str) -> dict[torch.dtype, int]:
    """``{dtype: value}`` of an entry keyed by dtype name, e.g. ``per_dtype("linear", "direct_rows_per_ticket")``."""
    return {getattr(torch, name): NO_LIMIT if v is None else int(v) for name, v in table()[op][key].items()}


def value(op: str, key: str) -> int:
    return int(table()[op][key])
