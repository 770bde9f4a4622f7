"""FDA, Model Merging with Functional Dual Anchors (Shi, Wen, Liu 2025), layer by layer over ``nn.Linear``.

Stage I builds, per layer and task, ``n`` anchors ``X`` whose induced descent direction on the
pre-trained layer aligns with the task vector: minimise ``Σ_p 1 − cos(∇_p −Dist(φ(θ_0, X), φ(θ_t, X)), τ_p)``
over the layer's tensors ``p`` (a second-order gradient, by autograd). Anchors start from rows of
the fine-tuned weight ("weight") or from ``σ·N(0, I)`` ("gaussian", σ = 0.01).
Stage II trains the layer on all tasks' anchors towards each expert's outputs, starting from the
pre-trained weights or a parameter-space merge; the mask-aware variant keeps TALL/EMR masks and
scales fixed and trains only the shared delta, each anchor routed to its task's ticket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .methods import MaskedMerge
from .vectors import State

logger = logging.getLogger(__name__)

DISTANCES = ("cosine", "l2", "l1")
INITS = ("weight", "gaussian")


def distance(a: torch.Tensor, b: torch.Tensor, kind: str) -> torch.Tensor:
    """Summed per-row distance between outputs ``a`` and ``b`` (cosine distance, ½ squared ℓ2 or ℓ1)."""
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(a, b, dim=-1, eps=1e-12)).sum()
    if kind == "l2":
        return 0.5 * ((a - b) ** 2).sum()
    return (a - b).abs().sum()


@dataclass(frozen=True)
class FDAOptions:
    """Hyperparameters (paper defaults where they transfer: 64 anchors, AdamW lr 1e-2, σ = 0.01, Adam, batch 128)."""

    anchors: int = 64
    anchor_init: str = "weight"  # "weight" (linear-weight sampling) or "gaussian" (scaled Gaussian)
    sigma: float = 0.01
    construct_steps: int = 300
    construct_lr: float = 1e-2
    adapt_epochs: int = 40
    adapt_lr: float = 1e-3
    batch_size: int = 128
    dist: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.anchor_init not in INITS:
            raise ValueError(f"anchor_init: expected one of {INITS}, got {self.anchor_init!r}")
        if self.dist not in DISTANCES:
            raise ValueError(f"dist: expected one of {DISTANCES}, got {self.dist!r}")
        for name in ("anchors", "construct_steps", "adapt_epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name in ("anchors", "batch_size") else 0):
                raise ValueError(f"{name}: expected a non-negative int (positive for anchors, batch_size), got {value!r}")
        for name in ("sigma", "construct_lr", "adapt_lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name}: expected a positive number, got {value!r}")


def linear_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` (FDA's layers; a CNN's ``nn.Conv2d`` layers keep the merge FDA starts from)."""
    return [name for name, m in model.named_modules() if type(m) is nn.Linear]


def _key(layer: str, leaf: str) -> str:
    return f"{layer}.{leaf}" if layer else leaf


def _params(state: State, layer: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    return state[_key(layer, "weight")], state.get(_key(layer, "bias"))


def layer_anchors(
    w0: torch.Tensor,
    b0: torch.Tensor | None,
    wt: torch.Tensor,
    bt: torch.Tensor | None,
    options: FDAOptions,
    generator: torch.Generator,
) -> torch.Tensor:
    """Stage I for one linear layer and one task: anchors ``[n, in_features]`` by gradient matching.

    A zero task vector has nothing to align with: its anchors stay at their initialisation.
    """
    n = options.anchors
    if options.anchor_init == "weight":
        rows = torch.randint(0, wt.shape[0], (n,), generator=generator)
        x0 = wt[rows].detach().clone().float()
    else:
        x0 = options.sigma * torch.randn(n, wt.shape[1], generator=generator)
    x = x0.to(w0.dtype).requires_grad_(True)
    taus = [wt - w0] + ([] if b0 is None else [bt - b0])
    live = [i for i, t in enumerate(taus) if bool(t.any())]
    if not live or options.construct_steps == 0:
        return x.detach()
    params = [w0.detach().clone().requires_grad_(True)] + ([] if b0 is None else [b0.detach().clone().requires_grad_(True)])
    opt = torch.optim.AdamW([x], lr=options.construct_lr)
    for _ in range(options.construct_steps):
        target = F.linear(x, wt, bt)  # differentiable in x: the anchors move both outputs
        out = F.linear(x, params[0], params[1] if b0 is not None else None)
        grads = torch.autograd.grad(-distance(out, target, options.dist), params, create_graph=True)
        loss = sum(1.0 - F.cosine_similarity(grads[i].reshape(1, -1), taus[i].reshape(1, -1), eps=1e-12).squeeze() for i in live)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return x.detach()


def construct_anchors(
    base: State, experts: Sequence[State], layers: Sequence[str], options: FDAOptions, *, progress: bool = False
) -> dict[str, list[torch.Tensor]]:
    """Stage I for every layer and task: ``{layer: [anchors of task 0, …]}``."""
    generator = torch.Generator().manual_seed(options.seed)
    out: dict[str, list[torch.Tensor]] = {}
    for layer in tqdm(layers, desc="FDA anchors", disable=None if progress else True):
        w0, b0 = _params(base, layer)
        out[layer] = []
        for expert in experts:
            wt, bt = _params(expert, layer)
            out[layer].append(layer_anchors(w0, b0, wt, bt, options, generator))
    return out


def _batches(rows: int, batch_size: int, generator: torch.Generator):
    order = torch.randperm(rows, generator=generator)
    return [order[i : i + batch_size] for i in range(0, rows, batch_size)]


def _train(params: list[torch.Tensor], loss_of: Callable[[torch.Tensor], torch.Tensor], rows: int, options: FDAOptions) -> None:
    generator = torch.Generator().manual_seed(options.seed + 1)
    opt = torch.optim.Adam(params, lr=options.adapt_lr)
    for _ in range(options.adapt_epochs):
        for index in _batches(rows, options.batch_size, generator):
            opt.zero_grad(set_to_none=True)
            loss_of(index).backward()
            opt.step()


def _pooled(anchors: list[torch.Tensor], experts: Sequence[State], layer: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All tasks' anchors of ``layer`` stacked, each expert's output on its own anchors, and the task of each row."""
    xs, ys, tasks = [], [], []
    with torch.no_grad():
        for t, (x, expert) in enumerate(zip(anchors, experts)):
            wt, bt = _params(expert, layer)
            xs.append(x)
            ys.append(F.linear(x, wt, bt))
            tasks.append(torch.full((x.shape[0],), t, dtype=torch.int64))
    return torch.cat(xs), torch.cat(ys), torch.cat(tasks)


def adapt(
    start: State, experts: Sequence[State], anchors: dict[str, list[torch.Tensor]], options: FDAOptions, *, progress: bool = False
) -> State:
    """Stage II (Eq. 5/6): from ``start``, train each linear layer on the pooled anchors towards the experts' outputs."""
    out = dict(start)
    for layer in tqdm(list(anchors), desc="FDA adapt", disable=None if progress else True):
        x, y, _ = _pooled(anchors[layer], experts, layer)
        w, b = (p.detach().clone().requires_grad_(True) if p is not None else None for p in _params(start, layer))
        params = [w] + ([] if b is None else [b])
        _train(
            params, lambda idx, w=w, b=b, x=x, y=y: distance(F.linear(x[idx], w, b), y[idx], options.dist) / len(idx), x.shape[0], options
        )
        out[_key(layer, "weight")] = w.detach()
        if b is not None:
            out[_key(layer, "bias")] = b.detach()
    return out


def adapt_masked(
    merge: MaskedMerge,
    experts: Sequence[State],
    anchors: dict[str, list[torch.Tensor]],
    options: FDAOptions,
    *,
    progress: bool = False,
) -> MaskedMerge:
    """Mask-aware Stage II: masks and scales fixed; the shared delta of each linear layer trained on
    anchors routed per row to their task's ticket, through the routed masked-delta op."""
    from ..ops.masked_delta import masked_delta_linear

    delta = dict(merge.delta)
    k = merge.num_tickets
    for layer in tqdm(list(anchors), desc="FDA mask-aware", disable=None if progress else True):
        x, y, routes = _pooled(anchors[layer], experts, layer)
        wkey, bkey = _key(layer, "weight"), _key(layer, "bias")
        w0, b0 = _params(merge.base, layer)
        wmask = merge.masks.get(wkey, torch.ones((k, *w0.shape), dtype=torch.bool))
        dw = merge.delta[wkey].detach().clone().requires_grad_(True)
        scales = merge.scales.to(w0.dtype)
        params = [dw]
        db = bmask = None
        if b0 is not None:
            db = merge.delta[bkey].detach().clone().requires_grad_(True)
            bmask = merge.masks.get(bkey, torch.ones((k, *b0.shape), dtype=torch.bool))
            params.append(db)

        def loss_of(idx, dw=dw, db=db, scales=scales, w0=w0, b0=b0, wmask=wmask, bmask=bmask, x=x, y=y, routes=routes):
            bias = None if b0 is None else b0 + scales[:, None] * torch.where(bmask, db, torch.zeros((), dtype=db.dtype))
            out = masked_delta_linear(x[idx], w0, dw, wmask, scales, routes[idx], bias)
            return distance(out, y[idx], options.dist) / len(idx)

        _train(params, loss_of, x.shape[0], options)
        delta[wkey] = dw.detach()
        if db is not None:
            delta[bkey] = db.detach()
    info = dict(merge.info, fda="mask-aware")
    return MaskedMerge(merge.base, delta, merge.masks, merge.scales, info)
