"""Kernel launch configs as data: JSON tables keyed by GPU and shape bucket.

Curated tables ship in ``rtl_kernels/configs/``; tables from ``rtl-kernels tune`` live in the
user's config directory (:func:`user_config_dir`) and take precedence for their GPU.

A table file holds ``{"device": name, "dispatch": {...}, "configs": {kernel: {dtype: {bucket: cfg}}}}``;
``default.json`` serves any GPU without its own file, ``interpreter.json`` the CPU interpreter.
A bucket is ``M<m>_N<n>_K<k>`` with each size rounded up to a power of two; a missing bucket
falls back to the nearest one of the same kernel and dtype (log distance, rows weighted most),
then to the kernel's ``"default"`` entry.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
KERNELS = ("fwd", "dx", "dw", "decode")
INTERPRETER = "interpreter"
DEFAULT = "default"


def device_key(device: torch.device) -> str:
    """File stem for ``device``: the slugged GPU name, or ``interpreter`` on CPU."""
    if device.type != "cuda":
        return INTERPRETER
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name(device).lower()).strip("_")


def _pow2(v: int) -> int:
    return 1 if v <= 1 else 1 << (int(v) - 1).bit_length()


def shape_bucket(m: int, n: int, k: int) -> str:
    """Bucket name of a problem with ``m`` rows, ``n`` output features and reduction ``k``."""
    return f"M{_pow2(m)}_N{_pow2(n)}_K{_pow2(k)}"


def dtype_key(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.cache
def user_config_dir() -> Path:
    """Where ``rtl-kernels tune`` writes tables: ``$RTL_KERNELS_CONFIG_DIR``, else
    ``$XDG_CACHE_HOME/rtl_kernels/configs`` (default ``~/.cache``). Never the installed package."""
    env = os.environ.get("RTL_KERNELS_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rtl_kernels" / "configs"


@functools.cache
def load_table(stem: str) -> dict:
    """The parsed table ``<stem>.json``: the user's tuned one if present, else the shipped one (else empty)."""
    for directory in (user_config_dir(), CONFIG_DIR):
        path = directory / f"{stem}.json"
        if path.is_file():
            with path.open() as f:
                return json.load(f)
    return {}


def reload_tables() -> None:
    """Forget cached tables and the config directory (after ``rtl-kernels tune`` wrote a table)."""
    load_table.cache_clear()
    user_config_dir.cache_clear()


def _tables(device: torch.device) -> list[dict]:
    key = device_key(device)
    if key == INTERPRETER:
        return [load_table(INTERPRETER)]
    return [load_table(key), load_table(DEFAULT)]


def _bucket_sizes(bucket: str) -> tuple[float, float, float]:
    m, n, k = (int(v) for v in re.findall(r"\d+", bucket))
    return math.log2(m), math.log2(n), math.log2(k)


def _nearest(entries: dict, bucket: str) -> dict | None:
    if bucket in entries:
        return entries[bucket]
    target = _bucket_sizes(bucket)
    best, best_d = None, math.inf
    for name, cfg in entries.items():
        if name == DEFAULT:
            continue
        sizes = _bucket_sizes(name)
        d = 4 * abs(sizes[0] - target[0]) + abs(sizes[1] - target[1]) + abs(sizes[2] - target[2])
        if d < best_d:
            best, best_d = cfg, d
    return best if best is not None else entries.get(DEFAULT)


def get_config(kernel: str, device: torch.device, dtype: torch.dtype, m: int, n: int, k: int) -> dict:
    """Launch config (block sizes, ``num_warps``, ``num_stages``) of ``kernel`` for one problem."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {KERNELS}, got {kernel!r}")
    bucket = shape_bucket(m, n, k)
    for table in _tables(device):
        per_dtype = table.get("configs", {}).get(kernel, {})
        entries = per_dtype.get(dtype_key(dtype)) or per_dtype.get(DEFAULT)
        if entries:
            found = _nearest(entries, bucket)
            if found is not None:
                return dict(found)
    raise ValueError(f"kernel: no config for {kernel!r} on {device} (missing {CONFIG_DIR}/{DEFAULT}.json?)")


def dispatch_limits(device: torch.device) -> dict:
    """Thresholds that pick the decode (weight-stationary) path over the grouped path."""
    for table in _tables(device):
        if "dispatch" in table:
            return dict(table["dispatch"])
    return {"decode_max_rows": 64, "decode_max_work": 2048}


def write_table(stem: str, table: dict, directory: Path | None = None) -> Path:
    """Write ``<stem>.json`` into ``directory`` (default :func:`user_config_dir`) atomically."""
    directory = user_config_dir() if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    reload_tables()
    return path
