"""Pruning schedules (kept-weight counts per round) and rewind points ("init", "500it", "2ep")."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

SCHEDULES = ("geometric", "linear")


def check_sparsity(name: str, value: object) -> float:
    """A sparsity (fraction of weights removed) in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name}: expected a sparsity (fraction of weights removed) in [0, 1), got {value!r}")
    return float(value)


def round_sparsities(start: float, target: float, rounds: int, schedule: str = "geometric") -> list[float]:
    """Sparsity after each of ``rounds`` rounds going from ``start`` to ``target``.

    ``geometric`` removes the same fraction of the remaining weights every round (standard IMP);
    ``linear`` removes the same number of weights every round (the paper's fixed count per step).
    """
    check_sparsity("sparsity", target)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds: expected a positive int, got {rounds!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if target < start:
        raise ValueError(f"sparsity: masks only shrink, so the target {target} must be >= the current sparsity {start}")
    d0, d1 = 1.0 - start, 1.0 - target
    if schedule == "geometric":
        out = [1.0 - d0 * (d1 / d0) ** (r / rounds) for r in range(1, rounds + 1)]
    else:
        out = [start + (target - start) * r / rounds for r in range(1, rounds + 1)]
    out[-1] = target
    return out


def level_schedule(
    levels: Sequence[float], *, prune_fraction: float = 0.2, prune_count: int = 0, num_weights: int = 0
) -> tuple[list[float], list[int]]:
    """Round sparsities that pass exactly through every level, and the round index of each level.

    Between two levels the number of rounds is the smallest that removes at most ``prune_fraction``
    of the remaining weights per round (or at most ``prune_count`` weights, when it is positive).
    """
    if not levels:
        raise ValueError("levels: expected at least one target sparsity, got none")
    prev, out, at = 0.0, [], []
    for i, level in enumerate(levels):
        level = check_sparsity(f"levels[{i}]", level)
        if level <= prev and not (i == 0 and level == 0.0):
            raise ValueError(f"levels: expected strictly increasing sparsities, got {list(levels)}")
        if prune_count > 0:
            if num_weights <= 0:
                raise ValueError(f"num_weights: expected the number of prunable weights with prune_count, got {num_weights}")
            rounds = max(1, math.ceil((level - prev) * num_weights / prune_count - 1e-9))
            out += round_sparsities(prev, level, rounds, "linear")
        else:
            if not 0.0 < prune_fraction < 1.0:
                raise ValueError(f"prune_fraction: expected a fraction of remaining weights in (0, 1), got {prune_fraction!r}")
            rounds = max(1, math.ceil(math.log((1.0 - level) / (1.0 - prev)) / math.log(1.0 - prune_fraction) - 1e-9))
            out += round_sparsities(prev, level, rounds, "geometric")
        at.append(len(out) - 1)
        prev = level
    return out, at


@dataclass(frozen=True)
class Rewind:
    """Where kept weights go back to after each pruning round: ``init`` or a step count into round one."""

    iterations: int = 0
    epochs: int = 0

    @property
    def is_init(self) -> bool:
        return self.iterations == 0 and self.epochs == 0

    def steps(self, batches_per_epoch: int) -> int:
        return self.iterations + self.epochs * batches_per_epoch


def parse_rewind(value: str) -> Rewind:
    """``"init"`` (θ0, the paper), ``"<n>it"`` or ``"<n>ep"`` (late rewinding, OpenLTH style)."""
    if not isinstance(value, str):
        raise TypeError(f"rewind: expected a str like 'init', '500it' or '2ep', got {type(value).__name__}")
    if value in ("init", "0it", "0ep"):
        return Rewind()
    match = re.fullmatch(r"(\d+)(it|ep)", value.strip())
    if not match:
        raise ValueError(f"rewind: expected 'init', '<n>it' or '<n>ep' (e.g. '500it'), got {value!r}")
    n = int(match.group(1))
    return Rewind(iterations=n) if match.group(2) == "it" else Rewind(epochs=n)
