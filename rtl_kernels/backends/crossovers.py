"""The cpu backend's measured path crossovers, kept as data (``cpu_crossovers.json``) rather than constants.

The file holds one measured set per machine class, keyed by CPU model and ISA level (from
``/proc/cpuinfo``, so no extension build is needed to read it). This machine uses its own set when
one was measured here, else the set of another CPU with the same ISA level, else the default set.
``bench/cpu_crossovers.py`` measures a set on the machine it runs on and stores it under its key,
leaving the other machines' sets as they are. The backend reads the table once at import.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from .. import cpuinfo

PATH = Path(__file__).with_name("cpu_crossovers.json")
# a ``null`` limit: no crossover was found in the measured range, so the first path always runs
NO_LIMIT = 2**62


def machine_key(model: str | None = None, isa: str | None = None) -> str:
    """The key of a machine's set: ``"<CPU model> / <ISA level>"`` (this machine's by default)."""
    return f"{cpuinfo.cpu_model() if model is None else model} / {cpuinfo.isa_level() if isa is None else isa}"


@cache
def table() -> dict:
    """The whole crossover file (read once)."""
    return json.loads(PATH.read_text())


def select(doc: dict, key: str) -> dict:
    """The set for machine ``key``: its own, else the first with the same ISA level, else the default."""
    machines = doc["machines"]
    if key in machines:
        return machines[key]
    isa = key.rsplit(" / ", 1)[-1]
    same_isa = [k for k in machines if k.rsplit(" / ", 1)[-1] == isa]
    return machines[same_isa[0] if same_isa else doc["default"]]


@cache
def current() -> dict:
    """This machine's set (see :func:`select`)."""
    return select(table(), machine_key())


def per_dtype(op: str, key: str) -> dict[torch.dtype, int]:
    """``{dtype: value}`` of an entry keyed by dtype name, e.g. ``per_dtype("linear", "direct_rows_per_ticket")``."""
    return {getattr(torch, name): NO_LIMIT if v is None else int(v) for name, v in current()[op][key].items()}


def value(op: str, key: str) -> int:
    """A single limit (``null``: no limit)."""
    v = current()[op][key]
    return NO_LIMIT if v is None else int(v)
