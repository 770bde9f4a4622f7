"""Backend registry: every kernel family plugs in here with one ``register_backend`` call.

A backend implements any subset of the four entry points below on the tensors the custom ops
receive (already validated, rows 2-D for linear, routing plan built). ``"auto"`` picks, among
the backends that are available on the device and support the call, the one with the highest
priority for that device.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

logger = logging.getLogger(__name__)


class Call(NamedTuple):
    """What a backend is asked to do, for ``supports`` to decide on (a tuple: cheap to build and
    hash on every op call, where it keys the remembered backend choice)."""

    op: str  # "linear" or "conv2d"
    device: torch.device
    dtype: torch.dtype
    rows: int  # M for linear, B for conv2d
    weight_shape: tuple[int, ...]
    num_tickets: int


# Signatures of the entry points (all tensors on one device):
#   linear_forward(x[M,Kin], weight[N,Kin], masks, plan, bias[N]|None) -> y[M,N]
#   linear_backward(dy[M,N], x, weight, masks, plan, need_dx, need_dw) -> (dx|None, dw|None)
#   conv2d_forward(x[B,C,H,W], weight, masks, plan, bias|None, params) -> y
#   conv2d_backward(dy, x, weight, masks, plan, params, need_dx, need_dw) -> (dx|None, dw|None)


@dataclass
class Backend:
    name: str
    is_available: Callable[[torch.device], bool]
    priority: Callable[[torch.device], int]
    supports: Callable[[Call], bool] = lambda call: True
    linear_forward: Callable | None = None
    linear_backward: Callable | None = None
    conv2d_forward: Callable | None = None
    conv2d_backward: Callable | None = None

    def implements(self, op: str) -> bool:
        return getattr(self, f"{op}_forward") is not None and getattr(self, f"{op}_backward") is not None


_BACKENDS: dict[str, Backend] = {}
BACKEND_NAMES = ("auto", "triton", "cuda", "cpu", "reference")


# resolve_backend's answers: (name, call) -> backend; cleared whenever the set of backends changes.
# ``_GENERATION`` counts the clears, so an answer computed before a clear is never stored after it.
_RESOLVED: dict[tuple[str, Call], Backend] = {}
_RESOLVED_MAX = 4096
_GENERATION = [0]


def register_backend(backend: Backend) -> None:
    """Add or replace a backend (kernels register themselves when their module is imported)."""
    _BACKENDS[backend.name] = backend
    forget_resolved()


def forget_resolved() -> None:
    """Drop remembered backend choices (called when a backend or a compiled extension comes or goes)."""
    _GENERATION[0] += 1
    _RESOLVED.clear()


def get_backend(name: str) -> Backend:
    _load_builtin_backends()
    if name not in _BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKEND_NAMES)}, got {name!r} (not registered)")
    return _BACKENDS[name]


def _as_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    return torch.device(device)


def available_backends(device: torch.device | str | None = None) -> list[str]:
    """Names of the backends that work on ``device`` (default CPU), fastest first."""
    _load_builtin_backends()
    dev = _as_device(device)
    usable = [b for b in _BACKENDS.values() if _safe_available(b, dev)]
    usable.sort(key=lambda b: -b.priority(dev))
    return [b.name for b in usable]


def _safe_available(backend: Backend, device: torch.device) -> bool:
    try:
        return bool(backend.is_available(device))
    except Exception as exc:  # a broken optional backend must never take the library down
        logger.warning("backend %r failed its availability check: %s", backend.name, exc)
        return False


def check_backend_name(name: object) -> str:
    """``name`` if it is a backend name this library knows (availability is checked when the op runs)."""
    if not isinstance(name, str) or (name not in BACKEND_NAMES and name not in _BACKENDS):
        raise ValueError(f"backend: expected one of {list(BACKEND_NAMES)}, got {name!r}")
    return name


def resolve_backend(name: str, call: Call) -> Backend:
    """The backend that runs ``call``: the named one (checked), or the best one for ``"auto"``.

    Answers are remembered per (name, call), so the per-call cost on a serving path is one lookup.
    """
    cached = _RESOLVED.get((name, call))
    if cached is not None:
        return cached
    generation = _GENERATION[0]
    backend = _resolve(name, call)
    if len(_RESOLVED) >= _RESOLVED_MAX:
        _RESOLVED.clear()
    if generation == _GENERATION[0]:  # no backend or extension came or went meanwhile (another thread)
        _RESOLVED[(name, call)] = backend
    return backend


def _resolve(name: str, call: Call) -> Backend:
    check_backend_name(name)
    _load_builtin_backends()
    if name == "auto":
        for cand in available_backends(call.device):
            backend = _BACKENDS[cand]
            if backend.priority(call.device) >= 0 and backend.implements(call.op) and backend.supports(call):
                return backend
        return _BACKENDS["reference"]
    backend = _BACKENDS.get(name)
    if backend is None or not _safe_available(backend, call.device):
        raise ValueError(f"backend: {name!r} is not available on device {call.device} (available there: {available_backends(call.device)})")
    if not backend.implements(call.op) or not backend.supports(call):
        raise ValueError(
            f"backend: {name!r} does not support routed_{call.op} with dtype {call.dtype}, "
            f"weight shape {list(call.weight_shape)} on {call.device}"
        )
    return backend


_LOADED = False
_LOAD_LOCK = threading.Lock()
_IMPORTER: list[int | None] = [None]  # the thread importing the backends right now


def _load_builtin_backends() -> None:
    """Import the backend modules once; each registers itself (optional ones may be absent).

    Thread-safe: a thread that arrives while another is importing waits until every backend is
    registered (``_LOADED`` turns True only then); a backend module that calls back into the
    registry while it is imported (same thread) finds the import in progress and returns.
    """
    global _LOADED
    if _LOADED or _IMPORTER[0] == threading.get_ident():
        return
    with _LOAD_LOCK:
        if _LOADED:
            return
        _IMPORTER[0] = threading.get_ident()
        try:
            _import_builtin_backends()
        finally:
            _IMPORTER[0] = None
        _LOADED = True


def _import_builtin_backends() -> None:
    import importlib

    for module in ("reference", "triton_backend", "cuda_backend", "cpu_backend"):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.endswith(module):
                continue  # this backend is not part of this build
            logger.warning("backend module %s could not be imported: %s", module, exc)
        except Exception as exc:
            logger.warning("backend module %s could not be imported: %s", module, exc)
