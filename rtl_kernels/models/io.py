"""Save and load a converted model: safetensors (weights, packed masks) + JSON; no pickle.

A save is a directory holding ``weights.safetensors`` (the state dict without masks, so its keys
match the original dense model), ``masks.safetensors`` (one bit tensor per RTL layer: since format 2
flat uint8 bytes without row padding, :mod:`rtl_kernels.masks.flat`; format 1 saves, int32 padded rows,
still load) and ``rtl.json`` (layer map, K, versions, user metadata). Files are written to temporary names and
renamed, so an interrupted save never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..atomic import atomic_write
from ..masks.flat import flat_bits, padded_bits, saved_tickets
from ..masks.packed import PackedMasks, matrix_shape
from .norms import check_norm_map, norm_map
from .routing import RoutedModel
from .state import named_rtl_layers

FORMAT = "rtl_kernels"
FORMAT_VERSION = 2  # 2: masks stored flat (no row padding)
WEIGHTS, MASKS, META = "weights.safetensors", "masks.safetensors", "rtl.json"
_MASK_SUFFIX = ".mask_bits"


class LoadError(ValueError):
    """A save directory that is missing, corrupt, or does not match the model."""


def _weights_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without mask buffers, with tied tensors stored once (``aliases``: name -> kept name)."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in model.state_dict(keep_vars=False).items():
        if name.endswith(_MASK_SUFFIX):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        tensors[name] = t.detach().to("cpu").contiguous()
    return tensors, aliases


def save(model: nn.Module, path: str | os.PathLike, *, metadata: dict | None = None) -> Path:
    """Write the converted ``model`` (weights, masks, layer map, ``metadata``) to directory ``path``.

    For a :class:`RoutedModel` the inner model is saved (keys as in the dense model) and its router
    next to it (``router.safetensors`` + ``router.json``, see :func:`rtl_kernels.routers.save_router`).
    """
    router = None
    if isinstance(model, RoutedModel):
        model, router = model.model, model.router
        if router is not None and not callable(getattr(router, "router_state", None)):
            raise TypeError(f"model: its router {type(router).__name__} has no router_state(), so it cannot be saved")
    layers = named_rtl_layers(model)
    if not layers:
        raise ValueError("model: expected a converted model with RTL layers (use rtl.convert first), found none")
    if metadata is not None:
        try:
            json.dumps(metadata)
        except TypeError as exc:
            raise TypeError(f"metadata: expected JSON-serialisable values, got {exc}") from None
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"path: expected a directory (or a new path), got an existing file {out}")
    out.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _weights_state(model)
    from ..init.seeded import seeded_entries  # seeded weights are stored as their seed, not their values

    seeded = seeded_entries(model, tensors, aliases)
    masks = {name: flat_bits(layer.mask_bits, matrix_shape(layer.weight.shape)[1]) for name, layer in layers.items()}
    flat_buffers = _flatten_mask_buffers(layers, tensors)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "torch_version": torch.__version__,
        "num_tickets": next(iter(layers.values())).num_tickets,
        "layers": {
            name: {"type": type(layer).__name__, "weight_shape": list(layer.weight.shape), "num_tickets": layer.num_tickets}
            for name, layer in layers.items()
        },
        "aliases": aliases,
        "flat_buffers": flat_buffers,
        "norms": norm_map(model),
        "seeded": seeded,
        "metadata": metadata or {},
    }
    atomic_write(out / WEIGHTS, lambda p: save_file(tensors, p, metadata={"format": FORMAT}))
    atomic_write(out / MASKS, lambda p: save_file(masks, p, metadata={"format": FORMAT}))
    atomic_write(out / META, lambda p: Path(p).write_text(json.dumps(meta, indent=2, sort_keys=True)))
    if router is not None:
        from ..routers.store import save_router

        save_router(router, out)
    return out


def _flatten_mask_buffers(layers: dict, tensors: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    """Store the layers' other packed-mask buffers (``extra_mask_shapes``, e.g. bias masks) flat in ``tensors``;
    returns the shape each one covers, by key."""
    covered = {}
    for name, layer in layers.items():
        for buf, shape in getattr(layer, "extra_mask_shapes", dict)().items():
            key = f"{name}.{buf}" if name else buf
            if key in tensors:
                tensors[key] = flat_bits(tensors[key], matrix_shape(shape)[1])
                covered[key] = list(shape)
    return covered


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``rtl.json`` of a save directory, checked for format."""
    meta_path = Path(path) / META
    if not meta_path.is_file():
        raise LoadError(f"path: expected an rtl_kernels save directory containing {META}, got {Path(path)}")
    return read_format_json(meta_path, FORMAT, "layers", FORMAT_VERSION)


def read_format_json(meta_path: Path, fmt: str, required: str, max_version: int) -> dict:
    """A JSON file of format ``fmt`` (a dict with ``format``, a dict under ``required``, a version we read)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"path: {meta_path} is not valid JSON ({exc}); the save is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt or not isinstance(meta.get(required), dict):
        raise LoadError(f"path: {meta_path} is not an {fmt} save (missing 'format' or '{required}')")
    if meta.get("format_version", 0) > max_version:
        raise LoadError(f"path: saved with format version {meta['format_version']}, this library reads up to {max_version}")
    return meta


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LoadError(f"path: expected {path.name} in the save directory, it is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise LoadError(f"path: {path} is not a readable safetensors file ({exc}); the save is corrupt") from None


def saved_masks(path: str | os.PathLike) -> dict[str, PackedMasks]:
    """The masks of a save directory by layer name, as :class:`PackedMasks` (whatever the save's format)."""
    meta = read_metadata(path)
    bits = load_tensors(Path(path) / MASKS)
    out = {}
    for name, info in meta["layers"].items():
        shape = info["weight_shape"]
        b = bits[name] if meta.get("format_version", 1) < 2 else padded_bits(bits[name], info["num_tickets"], *matrix_shape(shape))
        out[name] = PackedMasks(b, shape)
    return out


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a save into ``model`` (converted the same way, same K); returns the model.

    Two phases: :func:`_checked_state` reads and checks everything (files, layer map, K of every
    layer, every shape, mask padding bits) and builds the full state to copy; only then does
    :func:`_copy_state` write it. Any problem raises :class:`LoadError` and leaves the model untouched.
    A :class:`RoutedModel` also gets the saved router, when the save holds one (functions such as
    a ``feature_fn`` are taken from its current router of the same class).
    """
    if isinstance(model, RoutedModel):
        from ..routers.store import load_router, saved_router_class

        current, options = model.router, {}
        if current is not None and type(current).__name__ == saved_router_class(path):
            options = {name: getattr(current, name) for name in ("feature_fn", "key") if getattr(current, name, None) is not None}
        router = load_router(path, model.model, **options)  # built aside: nothing changes if the model does not load
        load(path, model.model)
        if router is not None:
            model.router = router
        return model
    from ..init.seeded import mark_seeded

    base = Path(path)
    state, seeded_specs = _checked_state(base, read_metadata(base), model)
    _copy_state(model, state)
    mark_seeded(named_rtl_layers(model), seeded_specs)
    return model


def _checked_state(base: Path, meta: dict, model: nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """Everything ``load`` will copy, by state-dict key, after every check passed (nothing is copied here),
    and the seeds of the layers whose weights were regenerated rather than stored."""
    from ..init.seeded import regenerate_entries

    layers = named_rtl_layers(model)
    _check_layer_map(meta["layers"], layers)
    check_norm_map(meta.get("norms"), model)
    weights = load_tensors(base / WEIGHTS)
    masks = load_tensors(base / MASKS)
    seeded, seeded_specs = regenerate_entries(meta.get("seeded", {}), layers)
    state = _checked_weights(meta, weights, seeded, model)
    state.update(_checked_masks(masks, layers, flat=meta.get("format_version", 1) >= 2))
    return state, seeded_specs


def _check_layer_map(saved_layers: dict, layers: dict) -> None:
    """The model's RTL layers are the saved ones, with the same K and weight shapes."""
    missing, unexpected = sorted(set(saved_layers) - set(layers)), sorted(set(layers) - set(saved_layers))
    if missing or unexpected:
        raise LoadError(
            f"model: its RTL layers do not match the save (in the save only: {missing}; in the model only: {unexpected}); "
            "convert the model the same way before loading"
        )
    for name, info in saved_layers.items():
        layer = layers[name]
        if not isinstance(info, dict):
            raise LoadError(f"path: {META} entry for layer {name!r} is not an object; the save is corrupt")
        if info.get("num_tickets") != layer.num_tickets:
            raise LoadError(f"model: layer {name!r} has {layer.num_tickets} tickets, the save has {info.get('num_tickets')}")
        if list(info.get("weight_shape", [])) != list(layer.weight.shape):
            raise LoadError(f"model: layer {name!r} has weight shape {list(layer.weight.shape)}, the save has {info.get('weight_shape')}")


def _checked_weights(
    meta: dict, weights: dict[str, torch.Tensor], seeded: dict[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """The saved weights (aliases resolved, seeded ones regenerated) by key, checked against the model's keys and shapes."""
    aliases = meta.get("aliases", {})
    if not isinstance(aliases, dict):
        raise LoadError(f"path: 'aliases' in {META} is not an object; the save is corrupt")
    for alias, target in aliases.items():
        if target not in weights:
            raise LoadError(f"path: alias {alias!r} points to {target!r}, which is not in {WEIGHTS}; the save is corrupt")
        weights[alias] = weights[target]
    weights.update(seeded)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith(_MASK_SUFFIX)}
    for key, shape in meta.get("flat_buffers", {}).items():
        if key in weights and key in state:
            try:
                weights[key] = padded_bits(weights[key], state[key].shape[0], *matrix_shape(shape))
            except ValueError as exc:
                raise LoadError(f"model: {key!r} does not match the save's flat mask bits: {exc}") from None
    if set(weights) != set(state):
        raise LoadError(
            f"model: state dict keys do not match the save (in the save only: {sorted(set(weights) - set(state))[:8]}; "
            f"in the model only: {sorted(set(state) - set(weights))[:8]})"
        )
    for key, value in weights.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise LoadError(f"model: {key!r} has shape {list(state[key].shape)}, the save has {list(value.shape)}")
        if state[key].is_floating_point() != value.is_floating_point():
            raise LoadError(f"model: {key!r} has dtype {state[key].dtype}, the save has {value.dtype}")
    return weights


def _checked_masks(masks: dict[str, torch.Tensor], layers: dict, *, flat: bool) -> dict[str, torch.Tensor]:
    """The saved mask bits by buffer key (``flat``: re-padded to whole words per row), checked: one entry
    per layer, the layer's K, shape and zero padding bits."""
    unknown = sorted(set(masks) - set(layers))
    if unknown:
        raise LoadError(f"path: {MASKS} holds masks for {unknown[:8]}, which are not RTL layers of the save; the save is corrupt")
    out: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if name not in masks:
            raise LoadError(f"path: {MASKS} has no masks for layer {name!r}; the save is corrupt")
        bits = masks[name]
        saved = (saved_tickets(bits, *matrix_shape(layer.weight.shape)) if flat else bits.shape[0]) if bits.dim() >= 1 else None
        if saved is not None and saved != layer.num_tickets:
            raise LoadError(
                f"path: {MASKS} holds {saved} tickets for layer {name!r}, the model and {META} have "
                f"{layer.num_tickets}; the save is corrupt (masks from another save?)"
            )
        try:
            if flat:
                bits = padded_bits(bits, layer.num_tickets, *matrix_shape(layer.weight.shape))
            PackedMasks(bits, layer.weight.shape)
        except (TypeError, ValueError) as exc:
            raise LoadError(f"path: masks for layer {name!r} in {MASKS} are malformed: {exc}") from None
        out[f"{name}{_MASK_SUFFIX}" if name else _MASK_SUFFIX[1:]] = bits
    return out


def _copy_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a fully checked ``state`` into the model (in place, so Parameter objects stay the same)."""
    model.load_state_dict(state, strict=True)


def _library_version() -> str:
    from .. import __version__

    return __version__
