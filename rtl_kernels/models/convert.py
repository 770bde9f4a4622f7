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
from ..nn.hf_conv1d import RTLConv1DLinear, is_hf_conv1d, is_hf_conv1d_class
from ..nn.linear import RTLLinear

logger = logging.getLogger(__name__)

# dense type -> RTL type (transformers' Conv1D is matched by name in _converter_for, so transformers stays optional)
CONVERTERS: dict[type[nn.Module], Callable[[nn.Module, int], RTLLayer]] = {
    nn.Linear: RTLLinear.from_dense,
    nn.Conv2d: RTLConv2d.from_dense,
}


@dataclass
class ConversionSummary:
    """What :func:`convert` did: converted layers, parameters covered, skipped layers and why, tied weights."""

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    covered_params: int = 0
    total_params: int = 0
    layer_types: dict[str, str] = field(default_factory=dict)  # converted name -> RTL class name
    tied: dict[str, str] = field(default_factory=dict)  # converted name -> where its weight is also used

    @property
    def coverage(self) -> float:
        """Fraction of the model's (unique) parameters that the RTL masks cover."""
        return self.covered_params / max(self.total_params, 1)

    def to_dict(self) -> dict:
        """JSON-ready copy (for logs and save metadata)."""
        return {
            "converted": list(self.converted),
            "skipped": dict(self.skipped),
            "covered_params": self.covered_params,
            "total_params": self.total_params,
            "layer_types": dict(self.layer_types),
            "tied": dict(self.tied),
        }

    def __str__(self) -> str:
        lines = [
            f"converted {len(self.converted)} layers covering {self.covered_params:,} of {self.total_params:,} parameters "
            f"({100.0 * self.coverage:.1f}%)"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  tied {name}: {where}" for name, where in self.tied.items()]
        return "\n".join(lines)


# Parents that read their children's weights directly (not through the child's forward): converting
# those children would leave the masks unused. parent type -> (affected child names or None for all, why)
OPAQUE_PARENTS: dict[type[nn.Module], tuple[tuple[str, ...] | None, str]] = {
    nn.MultiheadAttention: (
        None,
        "inside nn.MultiheadAttention, which uses its projection weights (out_proj.weight included) directly "
        "via F.multi_head_attention_forward, so masks there would be ignored",
    ),
    nn.TransformerEncoderLayer: (
        ("linear1", "linear2"),
        "inside nn.TransformerEncoderLayer, whose inference fast path reads linear1/linear2 weights directly, so masks would be ignored",
    ),
}


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
    if is_hf_conv1d(module):
        return RTLConv1DLinear.from_dense
    return None


def _matches(module: nn.Module, targets: tuple[type[nn.Module], ...]) -> bool:
    """``isinstance`` on ``targets``; transformers' Conv1D (a linear layer, weight stored ``[in, out]``) counts as nn.Linear."""
    return isinstance(module, targets) or (is_hf_conv1d(module) and any(issubclass(nn.Linear, t) or is_hf_conv1d_class(t) for t in targets))


def _opaque_children(model: nn.Module) -> dict[str, str]:
    """Names of modules whose weights a parent uses directly, with the reason (see OPAQUE_PARENTS)."""
    opaque: dict[str, str] = {}
    for name, module in model.named_modules():
        for klass, (children, why) in OPAQUE_PARENTS.items():
            if not isinstance(module, klass):
                continue
            prefix = f"{name}." if name else ""
            for sub_name, _ in module.named_modules():
                if sub_name and (children is None or sub_name.split(".")[0] in children):
                    opaque.setdefault(prefix + sub_name, f"{why} ({type(module).__name__} {name or '<root>'!r})")
    return opaque


def _weight_users(model: nn.Module) -> dict[int, list[tuple[int, str]]]:
    """Parameter id -> (module id, parameter name) of every module that owns it (tied weights have more than one)."""
    users: dict[int, list[tuple[int, str]]] = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), []).append((id(module), f"{name}.{pname}" if name else pname))
    return users


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
    opaque = _opaque_children(model)
    users = _weight_users(model)
    replaced: dict[int, RTLLayer] = {}
    covered: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, RTLLayer) or not _matches(module, targets):
            continue
        if name in opaque:
            summary.skipped[name] = opaque[name]
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
        layer = replaced[id(module)] = converter(module, num_tickets)
        label = name or "<root>"
        summary.converted.append(label)
        summary.layer_types[label] = type(layer).__name__
        others = [u for owner, u in users.get(id(module.weight), []) if owner != id(module)]
        if others:
            summary.tied[label] = f"weight also used as {', '.join(others)} (one shared Parameter, converted once)"
        if id(module.weight) not in covered:
            covered.add(id(module.weight))
            summary.covered_params += module.weight.numel()
    skipped_opaque = [n for n in summary.skipped if n in opaque]
    if skipped_opaque:
        warnings.warn(
            f"rtl.convert: skipped {len(skipped_opaque)} layers whose parent uses their weights directly "
            f"(e.g. {skipped_opaque[0]!r}: {opaque[skipped_opaque[0]]}); see model.rtl_conversion_summary",
            stacklevel=2,
        )
    root = replaced.get(id(model), model)
    # replace every reference (a module shared by two parents is converted once, still shared)
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replaced:
                parent._modules[child_name] = replaced[id(child)]
    if not summary.converted:
        existing = sum(isinstance(m, RTLLayer) for m in root.modules())
        note = f"; {existing} RTL layers already in it" if existing else ""
        warnings.warn(
            f"rtl.convert: no module matched (targets={[t.__name__ for t in targets]}); the model is unchanged{note}",
            stacklevel=2,
        )
    logger.info("%s", summary)
    root.rtl_conversion_summary = summary
    return root
