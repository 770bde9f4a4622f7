"""Which kernel runs a masked-delta linear: the fused CPU (C++) or Triton kernel, or the reference."""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

NAMES = ("auto", "cpu", "triton", "reference")
_MODULES = {"reference": "masked_delta_reference", "cpu": "masked_delta_cpu", "triton": "masked_delta_triton"}


def check_name(name: object) -> str:
    if name not in NAMES:
        raise ValueError(f"backend: expected one of {list(NAMES)}, got {name!r}")
    return name


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"{__package__}.{_MODULES[name]}")
    except ImportError:
        return None


def _usable(name: str, x: torch.Tensor) -> ModuleType | None:
    module = _module(name)
    if module is None or (name != "reference" and not module.supports(x)):
        return None
    return module


_RESOLVED: dict[tuple[str, str, torch.dtype], ModuleType] = {}


def resolve(name: str, x: torch.Tensor) -> ModuleType:
    """The module (``forward``/``backward``) for backend ``name`` on ``x``'s device and dtype (remembered)."""
    key = (name, x.device.type, x.dtype)
    module = _RESOLVED.get(key)
    if module is None:
        module = _RESOLVED[key] = _resolve(name, x)
    return module


def _resolve(name: str, x: torch.Tensor) -> ModuleType:
    if name == "auto":
        order = ("triton", "reference") if x.device.type == "cuda" else ("cpu", "reference")
        for cand in order:
            module = _usable(cand, x)
            if module is not None:
                return module
    module = _usable(name, x)
    if module is None:
        raise ValueError(f"backend: {name!r} cannot run masked_delta_linear for dtype {x.dtype} on {x.device}")
    return module
