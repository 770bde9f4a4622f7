"""The pipeline's router stage: fit routers on the training inputs only, keep the best, save it with the run.

The deployable figure of a run routes every test input with this router; the oracle figure
(routes from the labels' subsets) is reported next to it, never instead of it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..routers import CentroidRouter, LinearRouter, load_router, save_router
from .store import read_json

logger = logging.getLogger(__name__)
CANDIDATES = ("centroid", "linear", "mlp")
MLP_HIDDEN = 64
VALIDATION_FRACTION = 0.2
FIT_RECORD = "fit.json"  # next to router.json: the candidates' held-out accuracies and the test routing accuracy


def build_router(kind: str, num_tickets: int, in_features: int | None = None) -> torch.nn.Module:
    """An unfitted router of one kind: nearest centroid, linear gate, or a gate with one hidden layer."""
    if kind == "centroid":
        return CentroidRouter(num_tickets)
    if kind == "linear":
        return LinearRouter(in_features, num_tickets)
    if kind == "mlp":
        return LinearRouter(in_features, num_tickets, hidden=MLP_HIDDEN)
    raise ValueError(f"router: expected one of {CANDIDATES}, got {kind!r}")


def _fit(kind: str, x: torch.Tensor, ids: torch.Tensor, num_tickets: int, seed: int) -> torch.nn.Module:
    router = build_router(kind, num_tickets)
    if kind == "centroid":
        return router.fit(x, ids)
    return router.fit(x, ids, seed=seed)


def _accuracy(router: torch.nn.Module, x: torch.Tensor, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return float((router(x) == ids).float().mean())


def fit_router(kind: str, x: torch.Tensor, ids: torch.Tensor, num_tickets: int, seed: int = 0) -> tuple[torch.nn.Module, dict]:
    """Fit ``kind`` (or, for ``"best"``, each candidate on 80% and keep the best on the other 20%) on training inputs only.

    Returns the router refit on all of ``x`` and a record of the selection (validation accuracy per candidate).
    """
    x = x.reshape(len(x), -1).float()
    info: dict = {"kind": kind}
    if kind == "best":
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_val = max(1, int(VALIDATION_FRACTION * len(x)))
        val, fit = order[:n_val], order[n_val:]
        scores = {}
        for cand in CANDIDATES:
            try:
                scores[cand] = _accuracy(_fit(cand, x[fit], ids[fit], num_tickets, seed), x[val], ids[val])
            except ValueError as exc:  # e.g. a subset with no sample in the fitting part
                logger.warning("router %s could not be fit for selection: %s", cand, exc)
        if not scores:
            raise ValueError("router: no candidate router could be fit on the training inputs")
        kind = max(scores, key=scores.get)
        info.update(chosen=kind, validation_accuracy=scores)
    router = _fit(kind, x, ids, num_tickets, seed)
    info.update(chosen=kind, train_accuracy=_accuracy(router, x, ids))
    return router, info


def save_fitted(router: torch.nn.Module, info: dict, directory: Path) -> None:
    """The router via :func:`rtl_kernels.routers.save_router` plus ``fit.json`` (how it was chosen); no pickle."""
    save_router(router, directory)
    (directory / FIT_RECORD).write_text(json.dumps(info, indent=2))


def load_fitted(directory: Path) -> tuple[torch.nn.Module, dict] | None:
    """The router saved by :func:`save_fitted` in ``directory``, with its selection record; None when there is none."""
    info = read_json(directory / FIT_RECORD)
    router = load_router(directory) if info is not None else None
    return None if router is None else (router, info)
