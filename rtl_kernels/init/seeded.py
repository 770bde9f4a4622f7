"""Seeded frozen random weights: ``seeded_`` and what ``rtl.save``/``rtl.load`` store instead of them.

A seeded RTL layer carries a :class:`SeedSpec` (seed, layer id, distribution, per-chunk scales,
checksum). Its weight tensor stays a normal Parameter, frozen; kernels may regenerate it from the
spec instead of reading it (see :mod:`rtl_kernels.init.philox` for the exact layout). The spec only
speaks for the weight while the tensor is the one it was written into, unmodified.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..models.io import LoadError
from ..models.state import named_rtl_layers
from ..nn.base import RTLLayer
from .philox import DISTS, GENERATOR, GENERATOR_VERSION, VERSIONS, generate, kernel_rule

MAX_SEED = 2**32 - 1
_ATTR = "_rtl_seeded"


class SeededWeightError(LoadError):
    """A seeded save that does not regenerate to what was saved (generator, version or checksum)."""


@dataclass(frozen=True)
class SeedSpec:
    """How one layer's weight is regenerated: ``unit(seed, layer_id, i) * scales[chunk of i along axis]``."""

    seed: int
    layer_id: int
    dist: str
    scales: tuple[float, ...]
    axis: int = 0
    checksum: str = ""
    version: int = GENERATOR_VERSION  # the generator version whose rule made the weight (older saves: older)

    def weight(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
        """The weight this spec describes, float32 values cast to ``dtype``."""
        unit = generate(tuple(shape), self.dist, self.seed, self.layer_id, 1.0, device, self.version)
        return (unit * self.scale_tensor(shape, device)).to(dtype)

    def scale_tensor(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 scales broadcastable to ``shape``: one per chunk of ``shape[axis]``."""
        size = shape[self.axis]
        s = torch.tensor(self.scales, dtype=torch.float32, device=device).repeat_interleave(size // len(self.scales))
        view = [1] * len(shape)
        view[self.axis] = size
        return s.reshape(view)

    def axis_scales(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """float32 ``[shape[axis]]``: the scale of each slice along ``axis`` (output rows of a Linear, columns of a Conv1D)."""
        return self.scale_tensor(shape, device).reshape(shape[self.axis])

    def to_json(self) -> dict:
        return {
            "generator": GENERATOR,
            "generator_version": self.version,
            "seed": self.seed,
            "layer_id": self.layer_id,
            "dist": self.dist,
            "scales": list(self.scales),
            "axis": self.axis,
            "checksum": self.checksum,
        }


def layer_id(name: str) -> int:
    """A stable 31-bit id of a layer name (sha256), so the Triton seed ``(id << 32) | seed`` fits an int64."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "little") & 0x7FFFFFFF


def checksum(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (CPU, contiguous), with its dtype and shape."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{t.dtype}:{list(t.shape)}:".encode())
    h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def check_seed(seed: object) -> int:
    """``seed`` as an int in [0, 2**32 − 1]; ``TypeError``/``ValueError`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed: expected an int in [0, {MAX_SEED}], got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed: expected an int in [0, {MAX_SEED}], got {seed}")
    return seed


def default_scale(weight: torch.Tensor, dist: str, axis: int = 0) -> float:
    """±(Kaiming-normal std, fan-in, ReLU gain) for signed_constant (edge-popup); 1.0 for uniform/normal.

    ``axis`` is the output-feature axis: 1 for HF Conv1D ``[in, out]``, whose fan-in is ``shape[0]``.
    """
    if dist != "signed_constant":
        return 1.0
    if axis == 1:
        fan_in = weight.shape[0]
    else:
        fan_in = math.prod(weight.shape[1:]) if weight.dim() > 1 else weight.shape[0]
    return math.sqrt(2.0) / math.sqrt(max(fan_in, 1))


def spec_of(layer: nn.Module) -> SeedSpec | None:
    """The layer's :class:`SeedSpec` while its weight is still exactly the seeded tensor, else None."""
    entry = getattr(layer, _ATTR, None)
    if entry is None:
        return None
    spec, tensor, version = entry
    w = layer.weight
    if w is not tensor or w._version != version:
        return None
    return spec


def seeded_forward_args(layer: nn.Module, x: torch.Tensor) -> tuple[SeedSpec, torch.Tensor] | None:
    """``(spec, scales along spec.axis)`` when ``layer`` may run the seeded kernel on ``x``: float32, seeded
    weight unchanged, 2-D and not being trained, not under ``torch.compile``; else None (use the stored weight)."""
    if torch.compiler.is_compiling() or getattr(layer, _ATTR, None) is None or x.dtype != torch.float32:
        return None
    w = layer.weight
    if w.dtype != torch.float32 or (w.requires_grad and torch.is_grad_enabled()):
        return None
    spec = spec_of(layer)
    if spec is None or w.dim() != 2 or not kernel_rule(spec.dist, spec.version):
        return None
    cache = layer.__dict__.get("_rtl_row_scale")
    if cache is None or cache[0] is not spec or cache[1].device != x.device:
        cache = (spec, spec.axis_scales(tuple(w.shape), x.device))
        layer.__dict__["_rtl_row_scale"] = cache
    return spec, cache[1]


def recorded_spec(layer: nn.Module) -> SeedSpec | None:
    """The spec recorded at seeding, whether or not the weight changed since (``save`` checks the checksum)."""
    entry = getattr(layer, _ATTR, None)
    return None if entry is None else entry[0]


def weight_axis(layer: RTLLayer) -> int:
    """The axis of the weight that holds output features (q/k/v chunks): 1 for HF Conv1D ``[in, out]``."""
    from ..nn.hf_conv1d import RTLConv1DLinear

    return 1 if isinstance(layer, RTLConv1DLinear) else 0


@torch.no_grad()
def apply_spec(layer: RTLLayer, spec: SeedSpec) -> None:
    """Write the spec's weight into the layer (frozen), and record the spec with its checksum."""
    w = layer.weight
    value = spec.weight(tuple(w.shape), w.dtype, w.device)
    w.copy_(value)
    w.requires_grad_(False)
    spec = replace(spec, checksum=checksum(value))
    object.__setattr__(layer, _ATTR, (spec, w, w._version))


def _zero_biases(layer: RTLLayer) -> None:
    for name in ("bias", "in_proj_bias"):
        b = getattr(layer, name, None)
        if isinstance(b, torch.Tensor):
            with torch.no_grad():
                b.zero_()


def seeded_(model: nn.Module, seed: int, *, dist: str = "signed_constant", scale: float | None = None) -> nn.Module:
    """Give every RTL layer a frozen weight regenerated from ``(seed, layer name)``; biases become zero.

    ``dist``: ``"signed_constant"`` (±Kaiming-normal std, edge-popup's init), ``"uniform"``
    (U[−1, 1]) or ``"normal"`` (N(0, 1)), times ``scale`` (default: that std for signed_constant,
    1 otherwise). Returns the model.
    """
    check_seed(seed)
    if dist not in DISTS:
        raise ValueError(f"dist: expected one of {DISTS}, got {dist!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale: expected a positive finite float or None, got {scale!r}")
    layers = named_rtl_layers(model)
    if not layers:
        raise ValueError("model: expected a converted model with RTL layers (use rtl.convert first), found none")
    for name, layer in layers.items():
        axis = weight_axis(layer)
        s = float(scale) if scale is not None else default_scale(layer.weight, dist, axis)
        apply_spec(layer, SeedSpec(seed=seed, layer_id=layer_id(name), dist=dist, scales=(s,), axis=axis))
        _zero_biases(layer)
    return model


def is_seeded(model: nn.Module) -> bool:
    """True when every RTL layer of ``model`` still holds its seeded weight."""
    layers = named_rtl_layers(model)
    return bool(layers) and all(spec_of(layer) is not None for layer in layers.values())


# ------------------------------------------------------------------------- save / load


def _param_key(name: str, layer: RTLLayer) -> str:
    for pname, p in layer.named_parameters(recurse=False):
        if p is layer.weight:
            return f"{name}.{pname}" if name else pname
    raise ValueError(f"model: layer {name!r} has no weight parameter of its own")


def seeded_entries(model: nn.Module, tensors: dict[str, torch.Tensor], aliases: dict[str, str]) -> dict[str, dict]:
    """For ``rtl.save``: pop every seeded, unchanged weight from ``tensors``; return their specs by layer name.

    A weight whose bytes no longer match its seeding checksum stays in ``tensors`` (nothing is lost).
    """
    entries: dict[str, dict] = {}
    tied = set(aliases.values())
    for name, layer in named_rtl_layers(model).items():
        spec = recorded_spec(layer)
        if spec is None:
            continue
        key = _param_key(name, layer)
        if key not in tensors or key in tied or checksum(tensors[key]) != spec.checksum:
            continue
        del tensors[key]
        entries[name] = {**spec.to_json(), "param": key, "dtype": str(layer.weight.dtype).removeprefix("torch.")}
    return entries


def regenerate_entries(entries: dict, layers: dict[str, RTLLayer]) -> tuple[dict[str, torch.Tensor], dict[str, SeedSpec]]:
    """For ``rtl.load``: regenerate and verify every seeded weight (CPU) before anything is copied.

    Returns ``{state key: weight}`` and ``{layer name: spec}``; raises :class:`SeededWeightError`.
    """
    weights: dict[str, torch.Tensor] = {}
    specs: dict[str, SeedSpec] = {}
    if not isinstance(entries, dict):
        raise SeededWeightError(f"path: 'seeded' in the save's metadata: expected an object, got {type(entries).__name__}")
    for name, e in entries.items():
        where = f"seeded layer {name!r}"
        if name not in layers:
            raise SeededWeightError(f"path: {where} is not an RTL layer of the model")
        if not isinstance(e, dict):
            raise SeededWeightError(f"path: {where}: expected an object, got {type(e).__name__}")
        version = e.get("generator_version")
        if e.get("generator") != GENERATOR or isinstance(version, bool) or version not in VERSIONS:
            raise SeededWeightError(
                f"path: {where}: expected generator {GENERATOR!r} version {' or '.join(map(str, VERSIONS))}, "
                f"got {e.get('generator')!r} version {version!r}"
            )
        try:
            spec = SeedSpec(
                seed=check_seed(e["seed"]),
                layer_id=int(e["layer_id"]),
                dist=str(e["dist"]),
                scales=tuple(float(s) for s in e["scales"]),
                axis=int(e["axis"]),
                checksum=str(e["checksum"]),
                version=int(version),
            )
            dtype = getattr(torch, str(e["dtype"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SeededWeightError(f"path: {where}: malformed entry ({type(exc).__name__}: {exc})") from None
        layer = layers[name]
        shape = tuple(layer.weight.shape)
        if spec.dist not in DISTS or spec.axis not in range(len(shape)) or not spec.scales or shape[spec.axis] % len(spec.scales):
            raise SeededWeightError(
                f"path: {where}: dist {spec.dist!r}, axis {spec.axis}, {len(spec.scales)} scales do not fit weight {list(shape)}"
            )
        value = spec.weight(shape, dtype)
        got = checksum(value)
        if got != spec.checksum:
            raise SeededWeightError(
                f"path: {where}: the regenerated weight does not match the saved checksum "
                f"(expected {spec.checksum[:16]}…, got {got[:16]}…); the save was written by a different generator"
            )
        weights[str(e.get("param", _param_key(name, layer)))] = value
        specs[name] = spec
    return weights, specs


def mark_seeded(layers: dict[str, RTLLayer], specs: dict[str, SeedSpec]) -> None:
    """After ``rtl.load``: layers loaded from a seeded save are seeded again (frozen, spec recorded)."""
    for name, spec in specs.items():
        layer = layers[name]
        layer.weight.requires_grad_(False)
        object.__setattr__(layer, _ATTR, (spec, layer.weight, layer.weight._version))
