"""Plug-ins by import path: ``"package.module:factory"`` names a callable the CLI and recipes can use."""

from __future__ import annotations

import importlib


def load_object(spec: str, what: str) -> object:
    """The callable ``attr`` of module ``mod`` for ``spec = "mod:attr"``; errors name ``what`` and the spec."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ValueError(f"{what}: expected 'module:factory' (e.g. 'mypkg.models:build'), got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what}: cannot import module {module_name!r} of {spec!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r} (from {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{what}: expected {spec!r} to be callable, got {type(obj).__name__}")
    return obj
