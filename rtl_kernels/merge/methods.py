"""Parameter-space merges of K task vectors: task arithmetic, TIES, EMR and TALL masks.

Every method returns a :class:`MaskedMerge`, the one form all of them share: ticket ``t`` has
parameters ``θ_0 + scales[t] · (masks[t] ⊙ delta)``. Task arithmetic and TIES have all-ones masks
and unit scales (one merged model); EMR has sign-agreement masks and per-task rescalers; TALL has
its localisation masks over the multi-task vector. Exact rules: ``shared/notes`` §2 of the anchors
note (TIES as coded in ``nik-dim/tall_masks``, EMR as in the paper's formulas).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .vectors import State, flatten, unflatten

TALL_LAMBDAS = (0.2, 0.3, 0.4, 0.5, 0.6)
TALL_DEFAULT_LAMBDA = 0.4
TA_DEFAULT_LAMBDA = 0.3  # Ilharco et al.'s usual value without validation data
TA_LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))  # tall_masks: linspace(0, 1, 11)[1:]
TIES_DEFAULT_K = 20.0  # percent kept per task
TIES_DEFAULT_LAMBDA = 1.0


@dataclass
class MaskedMerge:
    """K merged tickets over one base: ``θ_t = base + scales[t] · (masks[t] ⊙ delta)``.

    ``masks`` maps a key to a bool tensor ``[K, *shape]``; a key that is absent has all-ones masks.
    ``info`` records the method and the coefficients it used (JSON-ready).
    """

    base: State
    delta: State
    masks: dict[str, torch.Tensor]
    scales: torch.Tensor  # float64 [K]
    info: dict = field(default_factory=dict)

    @property
    def num_tickets(self) -> int:
        return int(self.scales.shape[0])

    def mask(self, key: str, ticket: int) -> torch.Tensor | None:
        m = self.masks.get(key)
        return None if m is None else m[ticket]

    def ticket_state(self, ticket: int) -> State:
        """Ticket ``ticket``'s full parameters (select, not multiply: delta outside the mask is never read)."""
        scale = float(self.scales[ticket])
        out = {}
        for key, b in self.base.items():
            d = self.delta[key]
            m = self.mask(key, ticket)
            step = scale * d if m is None else torch.where(m, scale * d, torch.zeros((), dtype=d.dtype, device=d.device))
            out[key] = b + step
        return out

    def mean_state(self) -> State:
        """The average of the K tickets' parameters: the single model a routed merge collapses to."""
        states = [self.ticket_state(t) for t in range(self.num_tickets)]
        return {k: torch.stack([s[k] for s in states]).mean(0) for k in self.base}


def _stack(vectors: Sequence[State]) -> torch.Tensor:
    return torch.stack([flatten(v) for v in vectors])


def _unit_scales(k: int) -> torch.Tensor:
    return torch.ones(k, dtype=torch.float64)


def check_coefficient(name: str, value: object, *, low: float = 0.0, high: float = math.inf) -> float:
    """A finite real in ``(low, high]`` (checked at the public boundary)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low < value <= high:
        raise ValueError(f"{name}: expected a number in ({low}, {high}], got {value!r}")
    return float(value)


def task_arithmetic(base: State, vectors: Sequence[State], lam: float = TA_DEFAULT_LAMBDA) -> MaskedMerge:
    """Task arithmetic (Ilharco et al. 2023): ``θ = θ_0 + λ Σ_t τ_t``, one model for every ticket."""
    delta = {k: lam * torch.stack([v[k] for v in vectors]).sum(0) for k in base}
    return MaskedMerge(base, delta, {}, _unit_scales(len(vectors)), {"method": "task_arithmetic", "lambda": lam})


def trim_top_k(vectors: Sequence[State], k: float) -> torch.Tensor:
    """Each task vector flattened, keeping its ``int(d·k/100)`` largest-magnitude entries over the whole model.

    (tall_masks keeps ``|τ| >= `` the ``(d − keep)``-th smallest value, one more entry than asked; here
    the kept count is exact up to ties.)
    """
    stacked = _stack(vectors)
    d = stacked.shape[1]
    keep = int(d * k / 100.0)
    if keep >= d:
        return stacked
    if keep <= 0:
        return torch.zeros_like(stacked)
    kth = stacked.abs().kthvalue(d - keep, dim=1, keepdim=True).values
    return torch.where(stacked.abs() > kth, stacked, torch.zeros((), dtype=stacked.dtype))


def _elect(trimmed: torch.Tensor) -> torch.Tensor:
    """TIES' elect step on stacked trimmed vectors ``[K, d]``: the sign of the total mass per entry (zeros
    take the majority sign); entries disagreeing with it are zeroed."""
    sign = torch.sign(trimmed.sum(0))
    majority = 1.0 if float(sign.sum()) >= 0 else -1.0
    sign = torch.where(sign == 0, torch.full_like(sign, majority), sign)
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    return torch.where(agree, trimmed, torch.zeros((), dtype=trimmed.dtype))


def ties(base: State, vectors: Sequence[State], k: float = TIES_DEFAULT_K, lam: float = TIES_DEFAULT_LAMBDA) -> MaskedMerge:
    """TIES (Yadav et al. 2023): trim to the top ``k`` %, elect signs by total mass, disjoint mean; ``θ_0 + λ·merged``."""
    selected = _elect(trim_top_k(vectors, k))
    counts = (selected != 0).sum(0).clamp_min(1)
    merged = unflatten(lam * selected.sum(0) / counts, base)
    return MaskedMerge(base, merged, {}, _unit_scales(len(vectors)), {"method": "ties", "k": k, "lambda": lam})


def emr(base: State, vectors: Sequence[State]) -> MaskedMerge:
    """EMR-Merging (Huang et al. 2024): elect ``τ_uni``, sign-agreement masks, per-task rescalers; tuning-free.

    ``γ = sgn(Σ_t τ_t)`` (zeros count as negative, as in the official code), ``τ_uni = γ · max_t |τ_t|``
    over agreeing entries, ``M_t = 1{τ_t ⊙ τ_uni > 0}``, ``λ_t = Σ|τ_t| / Σ|M_t ⊙ τ_uni|`` over the whole
    model. A task whose mask is empty (zero task vector) gets ``λ_t = 1``: its ticket is the base.
    """
    stacked = _stack(vectors)
    sign = torch.where(stacked.sum(0) > 0, 1.0, -1.0).to(stacked.dtype)
    agree = stacked * sign > 0
    magnitude = torch.where(agree, stacked.abs(), torch.zeros((), dtype=stacked.dtype)).amax(0)
    unified = sign * magnitude
    masks = stacked * unified > 0
    num = stacked.abs().sum(1, dtype=torch.float64)
    den = torch.where(masks, unified.abs(), torch.zeros((), dtype=stacked.dtype)).sum(1, dtype=torch.float64)
    scales = torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(num))
    per_task = [unflatten(m, base) for m in masks]
    mask_state = {key: torch.stack([p[key] for p in per_task]) for key in base}
    return MaskedMerge(base, unflatten(unified, base), mask_state, scales, {"method": "emr", "scales": scales.tolist()})


TALL_MTL = ("sum", "ties")


def multi_task_vector(base: State, vectors: Sequence[State], kind: str = "sum") -> State:
    """TALL's ``τ_MTL``: the sum of the task vectors (task arithmetic at λ = 1), or TIES' trimmed (top 20 %),
    sign-elected disjoint *sum* (both as in ``nik-dim/tall_masks``)."""
    if kind == "sum":
        return {k: torch.stack([v[k] for v in vectors]).sum(0) for k in base}
    trimmed = trim_top_k(vectors, TIES_DEFAULT_K)
    return unflatten(_elect(trimmed).sum(0), base)


def tall_masks(vectors: Sequence[State], lambdas: Sequence[float], mtl: State | None = None) -> tuple[State, dict[str, torch.Tensor]]:
    """``τ_MTL`` (default ``Σ_t τ_t``) and TALL's masks ``m_t = 1{|τ_t| > λ_t·|τ_MTL − τ_t|}`` (strict), per key ``[K, *shape]``."""
    keys = list(vectors[0])
    if mtl is None:
        mtl = {k: torch.stack([v[k] for v in vectors]).sum(0) for k in keys}
    masks = {}
    for key in keys:
        per_task = [v[key].abs() > lam * (mtl[key] - v[key]).abs() for v, lam in zip(vectors, lambdas)]
        masks[key] = torch.stack(per_task)
    return mtl, masks


def tall(base: State, vectors: Sequence[State], lambdas: float | Sequence[float] = TALL_DEFAULT_LAMBDA, mtl: str = "sum") -> MaskedMerge:
    """TALL masks (Wang et al. 2024) over the multi-task vector: ticket ``t`` is ``θ_0 + m_t ⊙ τ_MTL``
    (``mtl``: see :func:`multi_task_vector`).

    A zero task vector gets an empty mask (``0 > λ·|…|`` never holds): its ticket is the base, i.e. that expert.
    """
    lams = [float(lambdas)] * len(vectors) if isinstance(lambdas, (int, float)) else [float(v) for v in lambdas]
    if len(lams) != len(vectors):
        raise ValueError(f"lambdas: expected one value per expert ({len(vectors)}), got {len(lams)}")
    if mtl not in TALL_MTL:
        raise ValueError(f"mtl: expected one of {list(TALL_MTL)}, got {mtl!r}")
    vector, masks = tall_masks(vectors, lams, multi_task_vector(base, vectors, mtl))
    return MaskedMerge(base, vector, masks, _unit_scales(len(vectors)), {"method": "tall", "lambdas": lams, "mtl": mtl})
