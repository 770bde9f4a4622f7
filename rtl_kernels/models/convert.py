"""``convert``: swap RTL layers into an existing model in place, keeping its Parameter objects."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from ..nn.base import RTLLayer, check_num_tickets
from ..nn.conv import RTLConv2d
from ..nn.linear import RTLLinear

logger = logging.getLogger(__name__)

# dense type -> RTL type; later converters (e.g. transformers' Conv1D) register here
CONVERTERS: dict[type[nn.Module], Callable[[nn.Module, int], RTLLayer]] = {
    nn.Linear: RTLLinear.from_dense,
    nn.Conv2d: RTLConv2d.from_dense,
}


@dataclass
class ConversionSummary:
    """What :func:`convert` did: converted layer names, parameters covered, skipped layers and why."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    covered_params: int = 0
    total_params: int = 0

    def __str__(self) -> str:
        pct = 100.0 * self.covered_params / max(self.total_params, 1)
        lines = [
            f"converted {len(self.converted)} layers covering {self.covered_params:,} of {self.total_params:,} parameters ({pct:.1f}%)"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(lines)


def _name_matcher(ignore: Iterable[str]) -> Callable[[str], bool]:
    if isinstance(ignore, str):
        ignore = (ignore,)
    exact, patterns = set(), []
    for item in ignore:
        if not isinstance(item, str):
            raise TypeError(f"ignore: expected module names or 're:' patterns (str), got {type(item).__name__}")
        if item.startswith("re:"):
            try:
                patterns.append(re.compile(item[3:]))
            except re.error as exc:
                raise ValueError(f"ignore: invalid regular expression {item!r}: {exc}") from None
        else:
            exact.add(item)
    return lambda name: name in exact or any(p.fullmatch(name) for p in patterns)


def _converter_for(module: nn.Module) -> Callable[[nn.Module, int], RTLLayer] | None:
    for klass in type(module).__mro__:
        if klass in CONVERTERS:
            return CONVERTERS[klass]
    return None


def convert(
    model: nn.Module,
    num_tickets: int,
    *,
    targets: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    ignore: Iterable[str] = (),
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> nn.Module:
    """Replace every matching submodule by its RTL layer (all-ones masks) and return the model.

    A module matches when it is an instance of ``targets``, its name is not in ``ignore`` (names
    or ``re:`` patterns, full match) and ``filter_fn(module, name)`` is true. The new layers reuse
    the original Parameters, so optimizers built before stay valid. The summary is logged and kept
    as ``model.rtl_conversion_summary``.
    """
    check_num_tickets(num_tickets)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    targets = tuple(targets) if isinstance(targets, Iterable) else (targets,)
    if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in targets):
        raise TypeError(f"targets: expected nn.Module classes, got {targets!r}")
    ignored = _name_matcher(ignore)
    summary = ConversionSummary(total_params=sum(p.numel() for p in model.parameters()))
    replaced: dict[int, RTLLayer] = {}
    for name, module in model.named_modules():
        if isinstance(module, RTLLayer) or not isinstance(module, targets):
            continue
        if ignored(name):
            summary.skipped[name] = "in ignore"
            continue
        if filter_fn is not None and not filter_fn(module, name):
            summary.skipped[name] = "filter_fn returned False"
            continue
        converter = _converter_for(module)
        if converter is None:
            summary.skipped[name] = f"no RTL layer for {type(module).__name__}"
            continue
        replaced[id(module)] = converter(module, num_tickets)
        summary.converted.append(name or "<root>")
        summary.covered_params += module.weight.numel()
    root = replaced.get(id(model), model)
    # replace every reference (a module shared by two parents is converted once, still shared)
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replaced:
                parent._modules[child_name] = replaced[id(child)]
    if not summary.converted:
        warnings.warn(
            f"rtl.convert: no module matched (targets={[t.__name__ for t in targets]}); the model is unchanged",
            stacklevel=2,
        )
    logger.info("%s", summary)
    root.rtl_conversion_summary = summary
    return root
