"""Adaptive ticket extraction (the paper's Algorithm 1): per-subset iterative magnitude pruning with rewinding.

Every ticket trains its own copy of the network from the shared initial weights θ0 (no sharing
during extraction), so the K searches are independent: each (round, ticket) unit is seeded from
``(seed, round, ticket)`` and gives the same mask whatever order, process or rank it runs on.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn

from ..models.convert import LOW_COVERAGE, coverage_of, low_coverage_message
from ..models.state import converted_layers, set_masks
from .batching import Batching, check_batching
from .distributed import gather_masks, owned_tickets, world
from .progress import bar
from .pruning import SCOPES, keep_counts, prune_by_magnitude, sparsity_of
from .schedule import SCHEDULES, check_sparsity, parse_rewind, round_sparsities
from .similarity import CollapseController, similarity
from .training import (
    LossFn,
    OptimizerFactory,
    check_positive,
    check_subsets,
    derived_seed,
    epoch_batches,
    fetch,
    make_optimizer,
    train_steps,
)

logger = logging.getLogger(__name__)
MASK_SUFFIX = ".mask_bits"


class TicketStore(Protocol):
    """Persistence for a resumable search: one mask per (round, ticket) and one rewind state per ticket."""

    def load_mask(self, round_index: int, ticket: int) -> dict[str, torch.Tensor] | None: ...
    def save_mask(self, round_index: int, ticket: int, masks: dict[str, torch.Tensor]) -> None: ...
    def load_rewind(self, ticket: int) -> dict[str, torch.Tensor] | None: ...
    def save_rewind(self, ticket: int, state: dict[str, torch.Tensor]) -> None: ...


@dataclass
class TicketSearch:
    """What a search found: the sparsity and the masks (name -> bool ``[K, ...]``) after every round."""

    sparsities: list[float] = field(default_factory=list)
    masks: list[dict[str, torch.Tensor]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    collapse: dict | None = None

    @property
    def final(self) -> dict[str, torch.Tensor]:
        return self.masks[-1]


def dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the state dict without mask buffers (weights, biases, BatchNorm statistics)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.endswith(MASK_SUFFIX)}


def _check_model(model: nn.Module, num_subsets: int) -> dict[str, nn.Module]:
    layers, ks = converted_layers(model)
    coverage = coverage_of(model)
    if coverage < LOW_COVERAGE:
        warnings.warn(low_coverage_message(coverage, "find_tickets"), stacklevel=3)
    if ks != {num_subsets}:
        raise ValueError(f"subsets: expected one subset per ticket (the model has K = {sorted(ks)}), got {num_subsets} subsets")
    return layers


def check_tickets(tickets: object, num_tickets: int) -> list[int]:
    """``tickets`` as a sorted list of distinct ids in ``[0, K)``; None means all K."""
    if tickets is None:
        return list(range(num_tickets))
    if isinstance(tickets, (str, bytes)) or not isinstance(tickets, Sequence) or not tickets:
        raise TypeError(f"tickets: expected a non-empty list of ticket ids, got {tickets!r}")
    bad = [t for t in tickets if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < num_tickets]
    if bad:
        raise ValueError(f"tickets: expected ids in [0, {num_tickets}), got {bad}")
    if len(set(tickets)) != len(tickets):
        raise ValueError(f"tickets: expected distinct ids, got {list(tickets)}")
    return sorted(tickets)


def _check_layer_schedules(
    plans: Mapping[str, Sequence[float]] | None, layers: Mapping[str, nn.Module], rounds: int, scope: str
) -> dict[str, list[float]]:
    if not plans:
        return {}
    if not isinstance(plans, Mapping):
        raise TypeError(f"layer_sparsity: expected a dict of RTL layer name -> sparsity, got {type(plans).__name__}")
    if scope != "layer":
        raise ValueError(f"scope: per-layer sparsities need scope='layer', got {scope!r}")
    unknown = sorted(set(plans) - set(layers))
    if unknown:
        raise ValueError(f"layer_sparsity: {unknown} are not RTL layers of the model (its RTL layers: {sorted(layers)})")
    out = {}
    for name, plan in plans.items():
        values = [check_sparsity(f"layer_sparsity[{name!r}][{i}]", v) for i, v in enumerate(plan)]
        if len(values) != rounds or any(b < a for a, b in zip(values, values[1:])):
            raise ValueError(f"layer_sparsity[{name!r}]: expected {rounds} non-decreasing sparsities (one per round), got {list(plan)}")
        out[name] = values
    return out


def _train_ticket(
    work, subset, ticket, *, round_index, epochs, loss_fn, lr, batch_size, optimizer, seed, rewind_steps, epoch_bar, batching
) -> tuple[float, dict | None]:
    """Train ``work`` (masks set, ticket ``ticket``) on its subset; returns the last epoch's loss and the rewind snapshot."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(derived_seed(seed, 1))
    opt = make_optimizer(work, lr, optimizer)
    work.train()
    snapshot: dict | None = None
    done = 0
    loss = float("nan")

    def steps(batches):
        nonlocal snapshot, done
        for idx in batches:
            if rewind_steps and done == rewind_steps and snapshot is None:
                snapshot = {k: v.detach().clone() for k, v in work.state_dict().items() if not k.endswith(MASK_SUFFIX)}
            done += 1
            yield fetch(subset, idx, batching.collate_fn), ticket, None

    for epoch in range(epochs):
        where = f"find_tickets round {round_index}, epoch {epoch}"
        loss = train_steps(work, opt, steps(epoch_batches(len(subset), batch_size, gen)), loss_fn, where, batching)
        epoch_bar.update(1)
        epoch_bar.set_postfix(loss=f"{loss:.3f}")
    if rewind_steps and snapshot is None:
        logger.warning(
            "rewind point (%d steps) is past the end of round one (%d steps); rewinding to the trained weights", rewind_steps, done
        )
        snapshot = {k: v.detach().clone() for k, v in work.state_dict().items() if not k.endswith(MASK_SUFFIX)}
    return loss, snapshot


def extract_tickets(
    model: nn.Module,
    subsets: Sequence[torch.utils.data.Dataset],
    *,
    schedule: Sequence[float],
    epochs_per_round: int,
    loss_fn: LossFn,
    lr: float,
    batch_size: int,
    rewind: str = "init",
    scope: str = "global",
    seed: int = 0,
    progress: bool = True,
    optimizer: OptimizerFactory | None = None,
    start_masks: Mapping[str, torch.Tensor] | None = None,
    store: TicketStore | None = None,
    controller: CollapseController | None = None,
    log: Callable[[dict], None] | None = None,
    tickets: Sequence[int] | None = None,
    layer_schedules: Mapping[str, Sequence[float]] | None = None,
    batching: Batching | None = None,
) -> TicketSearch:
    """Algorithm 1 with an explicit schedule (sparsity after each round); the model's weights are θ0 and stay untouched.

    Each round, every ticket: rewind a private copy to θ0 (or the late-rewind point), train it with
    its current mask on its subset, drop its lowest-|w| kept weights down to the round's count.
    Under torch.distributed the tickets are spread over the ranks and gathered every round.
    ``tickets`` searches only those (from all-ones masks) and keeps every other ticket's current
    mask; ``layer_schedules`` (``scope="layer"`` only) gives some layers their own sparsity per round.
    ``batching`` (:class:`Batching`) reads dict samples, custom collation and forward keywords.
    """
    batching = check_batching(batching)
    if not isinstance(subsets, Sequence) or isinstance(subsets, (str, bytes)):
        raise TypeError(f"subsets: expected a sequence of K torch Datasets, got {type(subsets).__name__}")
    k_total = len(subsets)
    searched = check_tickets(tickets, k_total)
    subsets = check_subsets(subsets, only=searched)
    layers = _check_model(model, k_total)
    check_positive("epochs_per_round", epochs_per_round)
    check_positive("batch_size", batch_size)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    rw = parse_rewind(rewind)
    sparsities = [check_sparsity(f"schedule[{i}]", s) for i, s in enumerate(schedule)]
    if not sparsities or any(b < a for a, b in zip(sparsities, sparsities[1:])):
        raise ValueError(f"schedule: expected a non-empty non-decreasing list of sparsities, got {list(schedule)}")
    per_layer = _check_layer_schedules(layer_schedules, layers, len(sparsities), scope)
    numels = {name: layer.weight.numel() for name, layer in layers.items()}
    if start_masks is not None:
        current = {name: start_masks[name].detach().to("cpu", torch.bool).clone() for name in layers}
    elif tickets is None:
        current = {name: torch.ones(k_total, *layer.weight.shape, dtype=torch.bool) for name, layer in layers.items()}
    else:  # keep the other tickets' masks; the searched ones start dense
        current = {name: layer.get_masks().cpu().clone() for name, layer in layers.items()}
        for m in current.values():
            m[searched] = True
    theta0 = dense_state(model)
    work = copy.deepcopy(model)
    owned = [k for i, k in enumerate(searched) if i in owned_tickets(len(searched))]
    # rows a rank contributes when masks are gathered: its searched tickets, and rank 0 the kept ones
    fixed = [k for k in range(k_total) if k not in searched] if world()[0] == 0 else []
    rewinds: dict[int, dict] = {}
    result = TicketSearch()
    rounds_bar = bar(len(sparsities), "rounds", 0, progress)
    for r, sparsity in enumerate(sparsities):
        target = keep_counts(numels, sparsity, scope)
        for name, plan in per_layer.items():
            target[name] = round((1.0 - plan[r]) * numels[name])
        new = {name: m.clone() for name, m in current.items()}
        losses: dict[int, float] = {}
        tickets_bar = bar(len(owned), f"tickets (sparsity {sparsity:.1%})", 1, progress, leave=False)
        for k in owned:
            cached = store.load_mask(r, k) if store is not None else None
            if cached is None:
                start = theta0
                if not rw.is_init and r > 0:
                    start = rewinds.get(k) or (store.load_rewind(k) if store is not None else None)
                    if start is None:
                        raise ValueError(f"rewind: no saved rewind point for ticket {k}; resume the search from its first round")
                work.load_state_dict(start, strict=False)
                set_masks(work, current)
                epoch_bar = bar(epochs_per_round, f"ticket {k}", 2, progress, leave=False)
                steps_per_epoch = -(-len(subsets[k]) // batch_size)
                rewind_steps = rw.steps(steps_per_epoch) if (not rw.is_init and r == 0) else 0
                loss, snap = _train_ticket(
                    work, subsets[k], k, round_index=r, epochs=epochs_per_round, loss_fn=loss_fn, lr=lr, batch_size=batch_size,
                    optimizer=optimizer, seed=derived_seed(seed, r, k), rewind_steps=rewind_steps, epoch_bar=epoch_bar, batching=batching,
                )  # fmt: skip
                epoch_bar.close()
                if snap is not None:
                    rewinds[k] = snap
                    if store is not None:
                        store.save_rewind(k, snap)
                weights = {name: work.get_submodule(name).weight for name in layers}
                cached = prune_by_magnitude(weights, {name: current[name][k] for name in layers}, target)
                losses[k] = loss
                if store is not None:
                    store.save_mask(r, k, cached)
                if log is not None:
                    log({"stage": "tickets", "round": r, "ticket": k, "sparsity": sparsity_of(cached), "train_loss": loss})
            for name in layers:
                new[name][k] = cached[name].to("cpu", torch.bool)
            tickets_bar.update(1)
        tickets_bar.close()
        current = gather_masks(new, sorted(owned + fixed))
        sim = similarity(current)
        record = {"stage": "tickets", "round": r, "sparsity": sparsity, "mean_score": sim["mean_score"], "score": sim["score"].tolist()}
        result.sparsities.append(sparsity)
        result.masks.append(current)
        result.history.append(record)
        if log is not None:
            log(record)
        rounds_bar.update(1)
        rounds_bar.set_postfix(score=f"{sim['mean_score']:.3f}")
        if controller is not None and controller.observe(r, sparsity, sim["mean_score"]):
            result.collapse = dict(controller.triggered or {})
            if controller.action == "revert":
                result.sparsities.pop()
                result.masks.pop()
            logger.info("collapse controller stopped pruning at round %d: %s", r, result.collapse)
            break
    rounds_bar.close()
    return result


def find_tickets(
    model: nn.Module,
    subsets: Sequence[torch.utils.data.Dataset],
    *,
    sparsity: float,
    rounds: int,
    epochs_per_round: int,
    loss_fn: LossFn,
    lr: float,
    batch_size: int,
    rewind: str = "init",
    scope: str = "global",
    seed: int = 0,
    progress: bool = True,
    optimizer: OptimizerFactory | None = None,
    schedule: str = "geometric",
    controller: CollapseController | None = None,
    store: TicketStore | None = None,
    log: Callable[[dict], None] | None = None,
    tickets: Sequence[int] | None = None,
    layer_sparsity: Mapping[str, float] | None = None,
    batching: Batching | None = None,
) -> dict[str, torch.Tensor]:
    """Find one ticket per subset by IMP with rewinding from the model's current weights θ0; sets and returns the masks.

    Every ticket ends at ``sparsity`` (exactly, up to rounding to one weight overall for
    ``scope="global"`` or per tensor for ``"layer"``) after ``rounds`` rounds; ``schedule`` is
    ``"geometric"`` (same fraction of the remaining weights per round) or ``"linear"`` (same count
    per round, as in the paper). The shared weights are left at θ0. Returns ``name -> bool [K, ...]``.

    ``tickets=[k, ...]`` searches only those tickets (``subsets`` still has K entries; the others
    are not read and may be None) and keeps every other ticket's mask as it is in the model.
    ``layer_sparsity`` (with ``scope="layer"``) gives named layers their own final sparsity, reached
    on the same schedule: Frankle & Carbin prune the output layer at half the hidden layers' rate.
    A non-finite loss raises :class:`NonFiniteLossError` naming the ticket, round and epoch; the
    model is then untouched.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    plan = round_sparsities(0.0, check_sparsity("sparsity", sparsity), rounds, schedule)
    if layer_sparsity is not None and not isinstance(layer_sparsity, Mapping):
        raise TypeError(f"layer_sparsity: expected a dict of RTL layer name -> sparsity, got {type(layer_sparsity).__name__}")
    layer_plans = {
        name: round_sparsities(0.0, check_sparsity(f"layer_sparsity[{name!r}]", value), rounds, schedule)
        for name, value in (layer_sparsity or {}).items()
    }
    search = extract_tickets(
        model, subsets, schedule=plan, epochs_per_round=epochs_per_round, loss_fn=loss_fn, lr=lr, batch_size=batch_size,
        rewind=rewind, scope=scope, seed=seed, progress=progress, optimizer=optimizer, store=store, controller=controller, log=log,
        tickets=tickets, layer_schedules=layer_plans, batching=batching,
    )  # fmt: skip
    set_masks(model, search.final)
    return search.final
