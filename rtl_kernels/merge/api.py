"""``merge_experts``: K fine-tuned models into one routed model (ticket k ≈ expert k) or one plain model."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from torch import nn

from . import methods
from .build import dense_model, routed_model
from .fda import FDAOptions, adapt, adapt_masked, construct_anchors, linear_layers
from .methods import MaskedMerge
from .select import Metric, accuracy, best, check_validation, score
from .vectors import State, task_vectors

logger = logging.getLogger(__name__)

METHODS = ("task_arithmetic", "ties", "emr", "tall", "fda")
FDA_STARTS = ("ta", "ties", "pretrained")
FDA_MASKS = ("tall", "emr")
_FDA_FIELDS = tuple(f.name for f in dataclasses.fields(FDAOptions))
_OPTIONS = {
    "task_arithmetic": ("lam",),
    "ties": ("lam", "k"),
    "emr": (),
    "tall": ("lambdas", "mtl"),
    "fda": ("start", "masks", "lam", "k", "lambdas", "mtl", *_FDA_FIELDS),
}


def _check_options(method: str, options: dict) -> None:
    unknown = sorted(set(options) - set(_OPTIONS[method]))
    if unknown:
        raise TypeError(f"options: method {method!r} takes {list(_OPTIONS[method])}, got unexpected {unknown}")
    if method == "fda":  # before any work on the experts
        if options.get("start", "ta") not in FDA_STARTS:
            raise ValueError(f"start: expected one of {list(FDA_STARTS)}, got {options['start']!r}")
        if options.get("masks", "tall") not in FDA_MASKS:
            raise ValueError(f"masks: expected one of {list(FDA_MASKS)}, got {options['masks']!r}")


def merge_task_vectors(
    method: str,
    base_model: nn.Module,
    base: State,
    vectors: Sequence[State],
    *,
    validation=None,
    metric: Metric = accuracy,
    lam: float | None = None,
    k: float = methods.TIES_DEFAULT_K,
    lambdas: float | Sequence[float] | None = None,
    mtl: str = "sum",
) -> MaskedMerge:
    """One of the parameter-space methods, choosing its coefficients on ``validation`` when they are not given."""
    if method in ("task_arithmetic", "ties"):
        build = methods.task_arithmetic if method == "task_arithmetic" else (lambda b, v, lam: methods.ties(b, v, k=k, lam=lam))
        if method == "ties":
            methods.check_coefficient("k", k, high=100.0)
        if lam is not None:
            return build(base, vectors, methods.check_coefficient("lam", lam))
        if validation is None:
            return build(base, vectors, methods.TA_DEFAULT_LAMBDA if method == "task_arithmetic" else methods.TIES_DEFAULT_LAMBDA)

        def mean_score(candidate: MaskedMerge) -> float:
            state = candidate.ticket_state(0)
            return sum(score(base_model, state, ds, metric) for ds in validation) / len(validation)

        merged, _ = best([build(base, vectors, v) for v in methods.TA_LAMBDAS], mean_score)
        return merged
    if method == "emr":
        return methods.emr(base, vectors)
    # tall
    if mtl not in methods.TALL_MTL:
        raise ValueError(f"mtl: expected one of {list(methods.TALL_MTL)}, got {mtl!r}")
    if lambdas is not None:
        values = [lambdas] * len(vectors) if isinstance(lambdas, (int, float)) else list(lambdas)
        for i, v in enumerate(values):
            methods.check_coefficient(f"lambdas[{i}]", v)
        return methods.tall(base, vectors, values, mtl)
    if validation is None:
        return methods.tall(base, vectors, methods.TALL_DEFAULT_LAMBDA, mtl)
    vector = methods.multi_task_vector(base, vectors, mtl)
    chosen = []
    for t, ds in enumerate(validation):
        lam_t, _ = best(
            list(methods.TALL_LAMBDAS),
            lambda lam_t, t=t, ds=ds: score(base_model, _tall_ticket(base, vectors[t], vector, lam_t), ds, metric),
        )
        chosen.append(lam_t)
    return methods.tall(base, vectors, chosen, mtl)


def _tall_ticket(base: State, vector: State, mtl: State, lam: float) -> State:
    """TALL's ticket for one task at one λ (what validation scores): ``θ_0 + m ⊙ τ_MTL``."""
    return {key: b + mtl[key] * (vector[key].abs() > lam * (mtl[key] - vector[key]).abs()) for key, b in base.items()}


_FDA_START_NAMES = {"ta": "the task-arithmetic merge", "ties": "the TIES merge", "pretrained": "the pre-trained weights"}


def _log_unadapted(base: nn.Module, kept: str) -> None:
    """Say which layers FDA leaves as they start (it adapts ``nn.Linear`` layers only)."""
    convs = [name for name, m in base.named_modules() if type(m) is nn.Conv2d]
    if convs:
        logger.warning("fda: adapts the nn.Linear layers only; %d nn.Conv2d layers keep %s (first ones: %s)", len(convs), kept, convs[:6])


def merge_experts(
    base: nn.Module,
    experts: Sequence[nn.Module],
    *,
    method: str = "tall",
    routed: bool = True,
    validation: Sequence | None = None,
    metric: Metric = accuracy,
    progress: bool = False,
    **options: object,
) -> nn.Module:
    """Merge K experts fine-tuned from ``base`` (see the contract, "Merging fine-tuned models").

    ``routed=True``: an RTL model whose ticket k approximates expert k (one ``RTLDeltaLinear`` per
    ``nn.Linear`` and one ``RTLDeltaConv2d`` per ``nn.Conv2d``: shared base and delta, K bit masks, K
    scales; route with ``rtl.routing``; other tensors, e.g. norms, hold the mean of the K tickets).
    ``routed=False``: one model of ``base``'s class (for ``"emr"``/``"tall"``, the mean of the K tickets).
    Options: ``lam`` (task arithmetic / TIES scale; default 0.3 / 1.0 or chosen on ``validation``),
    ``k`` (TIES' kept percent, 20), ``lambdas`` (TALL's λ_t; default 0.4 or chosen per task on
    ``validation``), ``mtl`` (TALL's multi-task vector: ``"sum"``, default, or ``"ties"``); ``"fda"`` takes ``start`` (``"ta"``, ``"ties"``, ``"pretrained"``; default ``"ta"``),
    ``masks`` (``"tall"``/``"emr"``, the routed variant's masks) and the :class:`FDAOptions` fields;
    FDA adapts the ``nn.Linear`` layers, convolutions keep the parameter-space merge it starts from (logged).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if not isinstance(routed, bool):
        raise TypeError(f"routed: expected a bool, got {type(routed).__name__}")
    _check_options(method, options)
    base_state, vectors = task_vectors(base, experts)
    validation = check_validation(validation, len(vectors))
    kw = {"validation": validation, "metric": metric}
    if method != "fda":
        merge = merge_task_vectors(method, base, base_state, vectors, **kw, **options)
        if routed:
            return routed_model(base, merge)
        return dense_model(base, merge.ticket_state(0) if method in ("task_arithmetic", "ties") else merge.mean_state())
    fda_kw = {k: options.pop(k) for k in list(options) if k in _FDA_FIELDS}
    fda_options = FDAOptions(**fda_kw)
    start = options.pop("start", "ta")
    mask_method = options.pop("masks", "tall")
    layers = linear_layers(base)
    if not layers:
        raise ValueError(f"base: FDA adapts nn.Linear layers, found none in {type(base).__name__}")
    _log_unadapted(base, f"the {mask_method.upper()} masks and delta" if routed else _FDA_START_NAMES[start])
    expert_states = [{key: base_state[key] + v[key] for key in base_state} for v in vectors]
    anchors = construct_anchors(base_state, expert_states, layers, fda_options, progress=progress)
    if routed:
        merge = merge_task_vectors(mask_method, base, base_state, vectors, **kw, **options)
        return routed_model(base, adapt_masked(merge, expert_states, anchors, fda_options, progress=progress))
    if start == "pretrained":
        initial = base_state
    else:
        initial = merge_task_vectors(
            "task_arithmetic" if start == "ta" else "ties", base, base_state, vectors, **kw, **options
        ).ticket_state(0)
    return dense_model(base, adapt(initial, expert_states, anchors, fda_options, progress=progress))
