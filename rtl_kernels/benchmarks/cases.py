"""Benchmark axes and presets, expanded into a list of :class:`Case` (one timed configuration each).

A preset fixes a *base* value per axis and the *sweeps* to run: each sweep varies a few axes
together (cross product) while every other axis stays at its base value. This keeps a preset
small (time vs rows, time vs density, … around one operating point) instead of the full grid,
which ``grid=True`` asks for explicitly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

AXES = ("op", "shape", "rows", "tickets", "density", "structure", "routing", "dtype")
STRUCTURES = ("unstructured", "tile")
ROUTINGS = ("uniform", "zipf", "one", "distinct")
DTYPES = ("float32", "float16", "bfloat16")
OPS = ("linear", "conv2d")


@dataclass(frozen=True)
class Case:
    """One benchmark configuration.

    ``shape`` is ``"NxKin"`` (out x in features) for linear and ``"CinxCoutxHWxk"`` (square
    images, square k x k kernel, stride 1, padding k // 2) for conv2d; ``rows`` is the number of
    rows (linear) or images (conv2d).
    """

    op: str
    shape: str
    rows: int
    tickets: int
    density: float
    structure: str
    routing: str
    dtype: str
    tile: tuple[int, int] = (32, 32)

    def key(self) -> str:
        return f"{self.op}/{self.shape}/M={self.rows}/K={self.tickets}/d={self.density:g}/{self.structure}/{self.routing}/{self.dtype}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LinearShape:
    out_features: int
    in_features: int


@dataclass(frozen=True)
class ConvShape:
    in_channels: int
    out_channels: int
    size: int
    kernel: int

    @property
    def padding(self) -> int:
        return self.kernel // 2


def parse_shape(op: str, shape: str) -> LinearShape | ConvShape:
    """``"1024x512"`` -> LinearShape(1024, 512); ``"64x64x16x3"`` -> ConvShape(64, 64, 16, 3)."""
    try:
        parts = [int(p) for p in shape.lower().split("x")]
    except ValueError:
        parts = []
    if op == "linear" and len(parts) == 2 and min(parts) > 0:
        return LinearShape(*parts)
    if op == "conv2d" and len(parts) == 4 and min(parts) > 0:
        return ConvShape(*parts)
    expected = "'NxKin' (e.g. 1024x1024)" if op == "linear" else "'CinxCoutxHWxk' (e.g. 64x64x16x3)"
    raise ValueError(f"shape: expected {expected} for op {op!r}, got {shape!r}")


@dataclass(frozen=True)
class Preset:
    """Axis values, the base point, and which axes each sweep varies together."""

    values: Mapping[str, tuple]
    base: Mapping[str, object]
    sweeps: tuple[tuple[str, ...], ...]
    tile: tuple[int, int] = (32, 32)
    conv_shape: str = "64x64x16x3"
    conv_rows: tuple[int, ...] = (1, 8, 32)


_COMMON_SWEEPS = (
    ("op", "rows"),
    ("rows", "tickets"),
    ("rows", "density", "structure"),
    ("rows", "routing"),
    ("dtype",),
)

# the base point of the CPU presets: every sweep varies one or two axes around it
_CPU_BASE = {
    "op": "linear",
    "shape": "1024x1024",
    "rows": 256,
    "tickets": 8,
    "density": 0.2,
    "structure": "unstructured",
    "routing": "uniform",
    "dtype": "float32",
}

PRESETS: dict[str, Preset] = {
    # CI-class CPU (2 cores): a few minutes.
    "quick": Preset(
        values={
            "op": ("linear", "conv2d"),
            "shape": ("1024x1024",),
            "rows": (1, 16, 256, 2048),
            "tickets": (2, 8, 64),
            "density": (0.5, 0.2, 0.05),
            "structure": ("unstructured", "tile"),
            "routing": ("uniform", "zipf", "one", "distinct"),
            "dtype": ("float32", "bfloat16"),
        },
        base=_CPU_BASE,
        sweeps=(("op", "rows"), ("tickets",), ("density", "structure"), ("routing",), ("dtype",)),
        tile=(32, 32),
        conv_shape="64x64x16x3",
        conv_rows=(1, 8, 32),
    ),
    "full": Preset(
        values={
            "op": ("linear", "conv2d"),
            "shape": ("1024x1024", "4096x4096"),
            "rows": (1, 4, 16, 64, 256, 1024, 4096, 16384),
            "tickets": (2, 4, 8, 16, 64),
            "density": (0.5, 0.2, 0.1, 0.05),
            "structure": ("unstructured", "tile"),
            "routing": ("uniform", "zipf", "one", "distinct"),
            "dtype": ("float32", "bfloat16"),
        },
        base=_CPU_BASE,
        sweeps=_COMMON_SWEEPS,
        tile=(32, 32),
        conv_shape="64x64x16x3",
        conv_rows=(1, 8, 32, 128),
    ),
    "gpu": Preset(
        values={
            "op": ("linear", "conv2d"),
            "shape": ("4096x4096", "11008x4096"),
            "rows": (1, 4, 16, 64, 256, 1024, 4096, 16384),
            "tickets": (2, 4, 8, 16, 64),
            "density": (0.5, 0.2, 0.1, 0.05),
            "structure": ("unstructured", "tile"),
            "routing": ("uniform", "zipf", "one", "distinct"),
            "dtype": ("bfloat16", "float16", "float32"),
        },
        base={
            "op": "linear",
            "shape": "4096x4096",
            "rows": 16,
            "tickets": 8,
            "density": 0.2,
            "structure": "unstructured",
            "routing": "uniform",
            "dtype": "bfloat16",
        },
        sweeps=(*_COMMON_SWEEPS, ("shape", "rows")),
        tile=(64, 64),
        conv_shape="256x256x8x3",
        conv_rows=(1, 16, 64, 256),
    ),
}


def _check_values(axis: str, values: Sequence) -> tuple:
    allowed = {"op": OPS, "structure": STRUCTURES, "routing": ROUTINGS, "dtype": DTYPES}.get(axis)
    values = tuple(values)
    if not values:
        raise ValueError(f"{axis}: expected at least one value, got none")
    for v in values:
        if allowed is not None and v not in allowed:
            raise ValueError(f"{axis}: expected values in {list(allowed)}, got {v!r}")
        if axis in ("rows", "tickets") and (not isinstance(v, int) or v < 1):
            raise ValueError(f"{axis}: expected positive integers, got {v!r}")
        if axis == "density" and not (isinstance(v, float) and 0.0 < v <= 1.0):
            raise ValueError(f"density: expected fractions in (0, 1], got {v!r}")
    return values


def build_cases(
    preset: str | Preset,
    overrides: Mapping[str, Sequence] | None = None,
    *,
    grid: bool = False,
    tile: tuple[int, int] | None = None,
    conv_shape: str | None = None,
) -> list[Case]:
    """Expand a preset (name or object) and per-axis overrides into the deduplicated case list.

    An overridden axis uses the given values everywhere: its base becomes its first value and it
    is swept wherever the preset sweeps it (or everywhere when it is overridden with several values
    and no sweep mentions it). ``grid=True`` gives the full cross product of every axis. Overridden
    rows also set the conv2d batch sizes; ``tile`` and ``conv_shape`` replace the preset's.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
        preset = PRESETS[preset]
    if tile is not None:
        if len(tile) != 2 or min(tile) < 1:
            raise ValueError(f"tile: expected two positive ints (rows, cols), got {tile!r}")
        preset = replace(preset, tile=(int(tile[0]), int(tile[1])))
    if conv_shape is not None:
        parse_shape("conv2d", conv_shape)
        preset = replace(preset, conv_shape=conv_shape)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = set(overrides) - set(AXES)
    if unknown:
        raise ValueError(f"overrides: expected axes among {list(AXES)}, got {sorted(unknown)}")
    values = {axis: _check_values(axis, overrides.get(axis, preset.values[axis])) for axis in AXES}
    base = {axis: (values[axis][0] if axis in overrides else preset.base[axis]) for axis in AXES}
    for axis in AXES:
        if base[axis] not in values[axis]:
            base[axis] = values[axis][0]
    if grid:
        sweeps: tuple[tuple[str, ...], ...] = (AXES,)
    else:
        swept = {a for s in preset.sweeps for a in s}
        extra = tuple(a for a in AXES if a in overrides and len(values[a]) > 1 and a not in swept)
        sweeps = tuple(tuple(dict.fromkeys((*s, *extra))) for s in preset.sweeps)
    if "rows" in overrides:
        preset = replace(preset, conv_rows=values["rows"])
    cases: dict[str, Case] = {}
    for sweep in sweeps:
        axes_values = [values[a] for a in sweep]
        for combo in itertools.product(*axes_values):
            point = dict(base, **dict(zip(sweep, combo)))
            for case in _materialise(point, preset, "rows" in sweep):
                cases.setdefault(case.key(), case)
    return list(cases.values())


def _materialise(point: dict, preset: Preset, rows_swept: bool) -> list[Case]:
    """Turn one axis point into cases; conv2d uses its own shape and batch sizes."""
    case = Case(
        op=point["op"],
        shape=point["shape"],
        rows=point["rows"],
        tickets=point["tickets"],
        density=point["density"],
        structure=point["structure"],
        routing=point["routing"],
        dtype=point["dtype"],
        tile=preset.tile,
    )
    if case.op == "conv2d":
        # conv's "rows" are images: map the linear row axis onto the preset's batch sizes
        rows = preset.conv_rows if rows_swept else (preset.conv_rows[len(preset.conv_rows) // 2],)
        shape = point["shape"] if _is_conv_shape(point["shape"]) else preset.conv_shape
        return [replace(case, shape=shape, rows=r) for r in rows]
    if not _is_linear_shape(case.shape):
        raise ValueError(f"shape: expected 'NxKin' for linear cases, got {case.shape!r}")
    return [case]


def _is_conv_shape(shape: str) -> bool:
    return len(shape.split("x")) == 4


def _is_linear_shape(shape: str) -> bool:
    return len(shape.split("x")) == 2
