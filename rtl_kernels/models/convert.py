"""``convert``: swap RTL layers into an existing model in place, keeping its Parameter objects."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from ..nn.attention import RTLMultiheadAttention
from ..nn.base import RTLLayer
from ..nn.conv import RTLConv2d
from ..nn.hf_conv1d import RTLConv1DLinear, is_hf_conv1d, is_hf_conv1d_class
from ..nn.linear import RTLLinear
from ..nn.transformer import RTLTransformerDecoderLayer, RTLTransformerEncoderLayer
from ..ops.checks import check_num_tickets
from .state import replace_modules

logger = logging.getLogger(__name__)
# under this fraction of the parameters in RTL layers, convert and the pipeline warn (the pipeline's Run refuses unless allowed)
LOW_COVERAGE = 0.5

# dense type -> RTL type (transformers' Conv1D is matched by name in _converter_for, so transformers stays optional)
CONVERTERS: dict[type[nn.Module], Callable[[nn.Module, int], RTLLayer]] = {
    nn.Linear: RTLLinear.from_dense,
    nn.Conv2d: RTLConv2d.from_dense,
    nn.MultiheadAttention: RTLMultiheadAttention.from_dense,
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
    pruned: dict[str, str] = field(default_factory=dict)  # converted name -> what became of its torch prune mask
    norms: list[str] = field(default_factory=list)  # BatchNorms given per-ticket running statistics (routed_norms=True)

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
            "pruned": dict(self.pruned),
            "norms": list(self.norms),
        }

    def __str__(self) -> str:
        lines = [
            f"converted {len(self.converted)} layers covering {self.covered_params:,} of {self.total_params:,} parameters "
            f"({100.0 * self.coverage:.1f}%)"
        ]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        lines += [f"  tied {name}: {where}" for name, where in self.tied.items()]
        lines += [f"  pruned {name}: {what}" for name, what in self.pruned.items()]
        if self.norms:
            lines.append(f"  per-ticket BatchNorm statistics: {', '.join(self.norms)}")
        return "\n".join(lines)


# containers swapped for RTL versions that hold the same children and always compute through them;
# the children are then converted like any other layer
WRAPPERS: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {
    nn.TransformerEncoderLayer: RTLTransformerEncoderLayer.from_dense,
    nn.TransformerDecoderLayer: RTLTransformerDecoderLayer.from_dense,
}

# Parents that read their children's weights directly (not through the child's forward): converting
# those children would leave the masks unused. parent type -> why
OPAQUE_PARENTS: dict[type[nn.Module], str] = {
    nn.TransformerEncoderLayer: (
        "inside nn.TransformerEncoderLayer, whose inference fast path reads self_attn/linear1/linear2 weights directly, "
        "so masks would be ignored"
    ),
}
MHA_BLOCKED = (
    "inside an unconverted nn.MultiheadAttention, which uses out_proj.weight directly via F.multi_head_attention_forward, "
    "so masks there would be ignored"
)


class _NameMatcher:
    """``ignore`` entries (module names or ``re:`` patterns, full match), remembering which ever matched."""

    def __init__(self, ignore: Iterable[str]) -> None:
        if isinstance(ignore, str):
            ignore = (ignore,)
        self.entries: dict[str, re.Pattern | None] = {}
        for item in ignore:
            if not isinstance(item, str):
                raise TypeError(f"ignore: expected module names or 're:' patterns (str), got {type(item).__name__}")
            try:
                self.entries[item] = re.compile(item[3:]) if item.startswith("re:") else None
            except re.error as exc:
                raise ValueError(f"ignore: invalid regular expression {item!r}: {exc}") from None
        self.used: set[str] = set()

    def __call__(self, name: str) -> bool:
        hits = [item for item, pattern in self.entries.items() if (name == item if pattern is None else pattern.fullmatch(name))]
        self.used.update(hits)
        return bool(hits)

    def unused(self) -> list[str]:
        return [item for item in self.entries if item not in self.used]


def _converter_for(module: nn.Module) -> Callable[[nn.Module, int], RTLLayer] | None:
    for klass in type(module).__mro__:
        if klass in CONVERTERS:
            return CONVERTERS[klass]
    if is_hf_conv1d(module):
        return RTLConv1DLinear.from_dense
    return None


def _matches(module: nn.Module, targets: tuple[type[nn.Module], ...]) -> bool:
    """``isinstance`` on ``targets``, where transformers' Conv1D (weight stored ``[in, out]``) and
    nn.MultiheadAttention (linear projections) count as nn.Linear."""
    if isinstance(module, targets):
        return True
    linear_like = is_hf_conv1d(module) or isinstance(module, nn.MultiheadAttention)
    return linear_like and any(issubclass(nn.Linear, t) or is_hf_conv1d_class(t) for t in targets)


def _opaque_children(model: nn.Module) -> dict[str, str]:
    """Names of modules whose weights a parent uses directly, with the reason (see OPAQUE_PARENTS)."""
    opaque: dict[str, str] = {}
    for name, module in model.named_modules():
        for klass, why in OPAQUE_PARENTS.items():
            if isinstance(module, klass):
                prefix = f"{name}." if name else ""
                for sub_name, _ in module.named_modules():
                    if sub_name:
                        opaque.setdefault(prefix + sub_name, f"{why} ({type(module).__name__} {name or '<root>'!r})")
    return opaque


def _under(name: str, prefixes: Iterable[str]) -> str | None:
    """The first prefix that ``name`` lies strictly inside (module-name wise), if any."""
    return next((p for p in prefixes if p == "" or name.startswith(p + ".")), None)


def _weight_users(model: nn.Module) -> dict[int, list[tuple[int, str]]]:
    """Parameter id -> (module id, parameter name) of every module that owns it (tied weights have more than one)."""
    users: dict[int, list[tuple[int, str]]] = {}
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            users.setdefault(id(p), []).append((id(module), f"{name}.{pname}" if name else pname))
    return users


def _swap_wrappers(model: nn.Module, targets: tuple[type[nn.Module], ...], ignored: Callable[[str], bool]) -> nn.Module:
    """Swap every transformer layer (see WRAPPERS) not in ``ignore`` for its RTL version, in place; returns the root.

    Only when ``targets`` reach its linear children. An ``nn.TransformerEncoder`` above a swapped layer
    stops converting its input to a nested tensor (an inference fast path that only dense layers take).
    """
    if not any(issubclass(nn.Linear, t) for t in targets):
        return model
    swapped = {id(m): WRAPPERS[type(m)](m) for name, m in model.named_modules() if type(m) in WRAPPERS and not ignored(name)}
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in swapped:
                parent._modules[child_name] = swapped[id(child)]
        if isinstance(parent, nn.TransformerEncoder) and any(id(m) in swapped for m in parent.layers):
            parent.use_nested_tensor = False
    return swapped.get(id(model), model)


def _check_existing_tickets(model: nn.Module, num_tickets: int) -> None:
    """A model that already holds RTL layers can only be converted further with the same K."""
    other = {
        name or "<root>": m.num_tickets for name, m in model.named_modules() if isinstance(m, RTLLayer) and m.num_tickets != num_tickets
    }
    if other:
        first = next(iter(other))
        raise ValueError(
            f"num_tickets: expected {next(iter(other.values()))} (the K of the RTL layers already in the model, e.g. {first!r}), "
            f"got {num_tickets}; convert a fresh copy of the dense model for a different K"
        )


def _skip_reason(
    module: nn.Module, name: str, opaque: dict[str, str], ignored: Callable[[str], bool], filter_fn: Callable[[nn.Module, str], bool] | None
) -> str | None:
    """Why a matching module is not converted, or None when it is."""
    if name in opaque:
        return opaque[name]
    if ignored(name):
        return "in ignore"
    if filter_fn is not None and not filter_fn(module, name):
        return "filter_fn returned False"
    if _converter_for(module) is None:
        return f"no RTL layer for {type(module).__name__}"
    if pruned_tensors(module) - {"weight"}:
        return f"torch.nn.utils.prune reparametrizes {sorted(pruned_tensors(module) - {'weight'})}; RTL masks cover only the weight"
    if isinstance(module, nn.MultiheadAttention) and not module._qkv_same_embed_dim:
        return "nn.MultiheadAttention with kdim/vdim != embed_dim (separate q/k/v weights) has no RTL layer"
    return None


def pruned_tensors(module: nn.Module) -> set[str]:
    """Names of the tensors ``torch.nn.utils.prune`` reparametrizes on ``module`` (``weight`` -> ``weight_orig * weight_mask``)."""
    return {hook._tensor_name for hook in module._forward_pre_hooks.values() if isinstance(hook, prune.BasePruningMethod)}


def absorb_weight_pruning(module: nn.Module) -> torch.Tensor | None:
    """Undo ``torch.nn.utils.prune`` on ``module.weight`` without baking it in: ``weight_orig`` (the same
    Parameter) becomes ``weight`` again and the bool mask is returned (None when the weight is not pruned)."""
    if "weight" not in pruned_tensors(module):
        return None
    mask = module.weight_mask.detach().to(torch.bool)
    orig = module.weight_orig
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, prune.BasePruningMethod) and hook._tensor_name == "weight":
            del module._forward_pre_hooks[key]
    del module._parameters["weight_orig"], module._buffers["weight_mask"]
    delattr(module, "weight")  # the plain tensor the hook computed
    module.weight = orig
    return mask


def convert(
    model: nn.Module,
    num_tickets: int,
    *,
    targets: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    ignore: Iterable[str] = (),
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    routed_norms: bool = False,
) -> nn.Module:
    """Replace every matching submodule by its RTL layer (all-ones masks) and return the model.

    A module matches when it is an instance of ``targets``, its name is not in ``ignore`` (names
    or ``re:`` patterns, full match) and ``filter_fn(module, name)`` is true. With ``nn.Linear``
    in ``targets``, transformers' ``Conv1D`` (GPT-2) and ``nn.MultiheadAttention`` (projections
    included) match too. Layers whose parent reads their weights directly (inside
    ``nn.TransformerEncoderLayer``) are skipped with a warning. The new layers reuse the original
    Parameters, so optimizers built before stay valid. The :class:`ConversionSummary` (layers
    converted, parameters covered, layers skipped and why, tied weights) is logged and kept as
    ``model.rtl_conversion_summary``.

    With all-ones masks the converted model computes what the original did up to float rounding
    (kernels may sum in another order). A model that already holds RTL layers may be converted
    further only with the same K (``ValueError`` otherwise); an ``ignore`` entry that matches no
    module warns. ``routed_norms=True`` also swaps every ``nn.BatchNorm1d/2d`` not in ``ignore`` for
    :class:`~rtl_kernels.nn.RTLBatchNorm` (running statistics per ticket, affine shared; see
    ``summary.norms``); a weight pruned with ``torch.nn.utils.prune`` keeps its Parameter (``weight_orig``)
    and its prune mask becomes every ticket's mask (see ``summary.pruned``).
    """
    check_num_tickets(num_tickets)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(routed_norms, bool):
        raise TypeError(f"routed_norms: expected a bool, got {type(routed_norms).__name__}")
    targets = tuple(targets) if isinstance(targets, Iterable) else (targets,)
    if not all(isinstance(t, type) and issubclass(t, nn.Module) for t in targets):
        raise TypeError(f"targets: expected nn.Module classes, got {targets!r}")
    ignored = _NameMatcher(ignore)
    _check_existing_tickets(model, num_tickets)
    model = _swap_wrappers(model, targets, ignored)
    summary = ConversionSummary(total_params=sum(p.numel() for p in model.parameters()))
    opaque = _opaque_children(model)
    users = _weight_users(model)
    replaced: dict[int, RTLLayer] = {}
    covered: set[int] = set()
    blocked: dict[str, str] = {}  # unconverted nn.MultiheadAttention name -> why its children are skipped
    inside: list[str] = []  # converted modules whose children came along (nn.MultiheadAttention's out_proj)
    for name, module in model.named_modules():
        if isinstance(module, RTLLayer) or _under(name, inside) is not None:
            continue
        block = _under(name, blocked)
        if block is not None:
            if _matches(module, targets):
                summary.skipped[name] = blocked[block]
            continue
        if not _matches(module, targets):
            continue
        reason = _skip_reason(module, name, opaque, ignored, filter_fn)
        if reason is not None:
            summary.skipped[name] = reason
            if isinstance(module, nn.MultiheadAttention):
                blocked[name] = f"{MHA_BLOCKED} ({name or '<root>'!r}: {reason})"
            continue
        prune_mask = absorb_weight_pruning(module)
        layer = replaced[id(module)] = _converter_for(module)(module, num_tickets)
        if prune_mask is not None:
            layer.set_masks(prune_mask.expand(num_tickets, *prune_mask.shape))
            summary.pruned[name or "<root>"] = (
                f"torch.nn.utils.prune mask (density {float(prune_mask.float().mean()):.3f}) became every ticket's mask"
            )
        label = name or "<root>"
        for sub_name, sub in layer.named_modules():  # the layer and RTL children it made (out_proj)
            if not isinstance(sub, RTLLayer):
                continue
            sub_label = f"{name}.{sub_name}" if name and sub_name else (sub_name or label)
            summary.converted.append(sub_label)
            summary.layer_types[sub_label] = type(sub).__name__
            others = [u for owner, u in users.get(id(sub.weight), []) if owner not in (id(module), id(module.get_submodule(sub_name)))]
            if others:
                summary.tied[sub_label] = f"weight also used as {', '.join(others)} (one shared Parameter, converted once)"
            if id(sub.weight) not in covered:
                covered.add(id(sub.weight))
                summary.covered_params += sub.weight.numel()
        inside.append(name)
    skipped_opaque = {n: why for n, why in summary.skipped.items() if n in opaque or _under(n, blocked) is not None}
    if skipped_opaque:
        first = next(iter(skipped_opaque))
        warnings.warn(
            f"rtl.convert: skipped {len(skipped_opaque)} layers whose parent uses their weights directly "
            f"(e.g. {first!r}: {skipped_opaque[first]}); see model.rtl_conversion_summary",
            stacklevel=2,
        )
    root = replaced.get(id(model), model)
    replace_modules(model, replaced)  # a module shared by two parents is converted once, still shared
    if routed_norms:
        from .norms import swap_norms

        summary.norms = swap_norms(root, num_tickets, ignored)
    for item in ignored.unused():
        warnings.warn(f"rtl.convert: ignore entry {item!r} matched no module (check the name or pattern)", stacklevel=2)
    if not summary.converted:
        existing = sum(isinstance(m, RTLLayer) for m in root.modules())
        note = f"; {existing} RTL layers already in it" if existing else ""
        warnings.warn(
            f"rtl.convert: no module matched (targets={[t.__name__ for t in targets]}); the model is unchanged{note}",
            stacklevel=2,
        )
    elif summary.coverage < LOW_COVERAGE:
        warnings.warn(low_coverage_message(summary.coverage, "rtl.convert"), stacklevel=2)
    logger.info("%s", summary)
    root.rtl_conversion_summary = summary
    return root


def coverage_of(model: nn.Module) -> float:
    """Fraction of the model's (unique) parameters held by RTL layer weights: what the tickets can prune."""
    params = {id(p): p.numel() for p in model.parameters()}
    covered = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, RTLLayer)}
    return sum(covered.values()) / max(sum(params.values()), 1)


def low_coverage_message(coverage: float, where: str) -> str:
    return (
        f"{where}: the RTL layers hold only {coverage:.1%} of the model's parameters (under {LOW_COVERAGE:.0%}); "
        "most of the model is dense and shared by every ticket, so the tickets can differ little. "
        "Convert more layers (targets=, ignore=) if that is not intended"
    )
