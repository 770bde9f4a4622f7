"""Routed BatchNorm in a whole model: swap ``nn.BatchNorm1d/2d`` for per-ticket statistics, grow or reset their K."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from ..nn.norm import RTLBatchNorm
from ..ops.checks import check_num_tickets
from .state import replace_modules

ROUTABLE_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def named_routed_norms(model: nn.Module) -> dict[str, RTLBatchNorm]:
    """``{module name: RTLBatchNorm}`` of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RTLBatchNorm)}


def convert_norms(model: nn.Module, num_tickets: int, *, ignore: Iterable[str] = ()) -> list[str]:
    """Replace every ``nn.BatchNorm1d/2d`` with running statistics whose name is not in ``ignore`` (names or
    ``re:`` patterns) by its :class:`RTLBatchNorm`, in place: same affine Parameters, each ticket starting
    from the module's running statistics. Returns the names converted.

    Use it on a model converted before (``rtl.convert(..., routed_norms=True)`` does both at once).
    BatchNorms without running statistics (``track_running_stats=False``) stay as they are.
    """
    from .convert import _NameMatcher

    return swap_norms(model, num_tickets, _NameMatcher(ignore))


def swap_norms(model: nn.Module, num_tickets: int, ignored: Callable[[str], bool]) -> list[str]:
    """:func:`convert_norms` with the ignore test already built (``convert`` shares its own)."""
    check_num_tickets(num_tickets)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    other = {m.num_tickets for m in named_routed_norms(model).values()} - {num_tickets}
    if other:
        raise ValueError(
            f"num_tickets: expected {sorted(other)[0]} (the K of the routed BatchNorms already in the model), got {num_tickets}"
        )
    swapped: dict[int, RTLBatchNorm] = {}
    names = []
    for name, m in model.named_modules():
        if type(m) in ROUTABLE_NORMS and m.track_running_stats and id(m) not in swapped and not ignored(name):
            swapped[id(m)] = RTLBatchNorm.from_dense(m, num_tickets)
            names.append(name)
    replace_modules(model, swapped)
    return names


def set_norm_tickets(model: nn.Module, num_tickets: int, *, keep: bool = True) -> None:
    """Give every routed BatchNorm ``num_tickets`` tickets (see :meth:`RTLBatchNorm.set_num_tickets`)."""
    for norm in named_routed_norms(model).values():
        norm.set_num_tickets(num_tickets, keep=keep)


def norm_map(model: nn.Module) -> dict[str, dict]:
    """What a save records of the routed BatchNorms: ``{name: {"type", "num_features", "num_tickets"}}``."""
    return {
        name: {"type": type(m).__name__, "num_features": m.num_features, "num_tickets": m.num_tickets}
        for name, m in named_routed_norms(model).items()
    }


def check_norm_map(saved: object, model: nn.Module) -> None:
    """The model's routed BatchNorms are the save's (saves from before routed BatchNorm record none: skipped)."""
    from .io import LoadError

    if saved is None:
        return
    if not isinstance(saved, dict):
        raise LoadError("path: 'norms' in rtl.json is not an object; the save is corrupt")
    have = named_routed_norms(model)
    missing, unexpected = sorted(set(saved) - set(have)), sorted(set(have) - set(saved))
    if missing or unexpected:
        raise LoadError(
            f"model: its routed BatchNorms (per-ticket statistics) do not match the save (in the save only: {missing}; in the model "
            f"only: {unexpected}); convert the model with rtl.convert(..., routed_norms=True) (or rtl.models.convert_norms) "
            "exactly when the save has them"
        )
