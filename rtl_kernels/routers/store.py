"""Routers saved next to a model: ``router.safetensors`` (tensors) + ``router.json`` (class, config); no pickle.

Every router class implements ``router_state() -> (tensors, config)`` and the classmethod
``from_router_state(tensors, config, model=None, **options)``. Functions (a ``feature_fn``, an
Oracle ``key``) cannot be saved as data: the config records that there was one, and loading asks
for it again (``load_router(path, feature_fn=...)``) rather than silently routing on other features.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..atomic import atomic_write
from ..models.io import LoadError, load_tensors, read_format_json

ROUTER_TENSORS, ROUTER_META = "router.safetensors", "router.json"
ROUTER_FORMAT, ROUTER_FORMAT_VERSION = "rtl_kernels.router", 1

_CLASSES: dict[str, type] = {}


def register_router_class(cls: type) -> type:
    """Make ``cls`` (which implements ``router_state`` / ``from_router_state``) loadable by name."""
    _CLASSES[cls.__name__] = cls
    return cls


def save_router(router: object, directory: str | os.PathLike) -> Path:
    """Write ``router`` into ``directory`` (created if needed) as ``router.safetensors`` + ``router.json``."""
    state = getattr(router, "router_state", None)
    if not callable(state):
        raise TypeError(f"router: expected a router with router_state() ({', '.join(sorted(_CLASSES))}), got {type(router).__name__}")
    tensors, config = state()
    meta = {"format": ROUTER_FORMAT, "format_version": ROUTER_FORMAT_VERSION, "class": type(router).__name__, "config": config}
    text = json.dumps(meta, indent=2, sort_keys=True)  # fails before anything is written when config is not JSON
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(out / ROUTER_TENSORS, lambda p: save_file(tensors, p, metadata={"format": ROUTER_FORMAT}))
    atomic_write(out / ROUTER_META, lambda p: Path(p).write_text(text))  # last: its presence marks a complete save
    return out


def has_router(directory: str | os.PathLike) -> bool:
    return (Path(directory) / ROUTER_META).is_file()


def _read_meta(base: Path) -> dict:
    return read_format_json(base / ROUTER_META, ROUTER_FORMAT, "config", ROUTER_FORMAT_VERSION)


def saved_router_class(directory: str | os.PathLike) -> str | None:
    """The class name of the router saved in ``directory`` (None when it holds none)."""
    return _read_meta(Path(directory)).get("class") if has_router(directory) else None


def load_router(directory: str | os.PathLike, model: torch.nn.Module | None = None, **options: Any) -> Any:
    """The router saved in ``directory``, or None when it holds none.

    ``model`` goes to routers that route with the model itself; ``options`` (e.g. ``feature_fn=``)
    to the class's ``from_router_state``.
    """
    base = Path(directory)
    if not has_router(base):
        return None
    meta = _read_meta(base)
    meta_path = base / ROUTER_META
    cls = _CLASSES.get(meta.get("class"))
    if cls is None:
        raise LoadError(f"path: {meta_path} holds a router of class {meta.get('class')!r}; known classes: {sorted(_CLASSES)}")
    tensors = load_tensors(base / ROUTER_TENSORS)
    try:
        return cls.from_router_state(tensors, meta["config"], model=model, **options)
    except KeyError as exc:
        raise LoadError(f"path: the saved {cls.__name__} lacks {exc}; the router save is corrupt") from None
