"""What ``rtl-kernels serve PATH`` serves: a run directory of ``rtl-kernels run``, or an ``rtl.save``
directory plus a ``module:factory`` that builds its architecture."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from ..models.convert import convert
from ..models.io import LoadError, load, read_metadata
from ..models.norms import swap_norms
from ..models.routing import RoutedModel
from ..models.state import named_rtl_layers
from ..plugins import load_object
from ..routers.store import load_router


def _converted(model: object, save_dir: Path) -> nn.Module:
    """``model`` converted like the save (only the layers the save names) unless it already is, and in
    either case with the BatchNorms the save keeps per ticket routed."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: the factory must return an nn.Module, got {type(model).__name__}")
    meta = read_metadata(save_dir)
    if not named_rtl_layers(model):
        saved = set(meta["layers"])
        model = convert(model, int(meta["num_tickets"]), filter_fn=lambda module, name: name in saved)
    return _routed_norms_like(model, meta)


def _routed_norms_like(model: nn.Module, meta: dict) -> nn.Module:
    """The BatchNorms the save keeps per ticket (``rtl.json`` ``norms``) made routed in ``model``."""
    routed = set(meta.get("norms") or {})
    if routed:
        swap_norms(model, int(meta["num_tickets"]), lambda name: name not in routed)
    return model


def _zoo_model(run_dir: Path, save_dir: Path) -> nn.Module:
    """The architecture of a run directory, rebuilt from its ``recipe.json`` (zoo model, same conversion)."""
    from ..pipeline.recipe import Recipe
    from ..pipeline.run import NUM_CLASSES
    from ..zoo import build_model

    recipe = Recipe.from_json((run_dir / "recipe.json").read_text())
    meta = read_metadata(save_dir)
    layers = meta["layers"]

    def build(in_features: int) -> nn.Module:
        dense = build_model(recipe.model, in_features=in_features, num_classes=NUM_CLASSES.get(recipe.dataset, 10), hidden=recipe.hidden)
        return _routed_norms_like(convert(dense, recipe.num_tickets, ignore=recipe.ignore), meta)

    # the input size is not in the recipe: take it from the saved first layer (a flat-input MLP's)
    first = next(iter(named_rtl_layers(build(1))))
    shape = layers.get(first, {}).get("weight_shape", [0, 1])
    return build(int(shape[1]) if len(shape) == 2 else 1)


def load_served_model(path: str | os.PathLike, model: str | Callable[[], nn.Module] | None = None) -> RoutedModel:
    """The model at ``path`` as an eval-mode :class:`RoutedModel`, with its saved router when there is one.

    ``path`` is a run directory (``recipe.json`` + ``model/``) or an ``rtl.save`` directory; ``model``
    (a ``module:factory`` string or a callable) builds the architecture, and is needed for the latter.
    """
    base = Path(path)
    if (base / "rtl.json").is_file():
        save_dir, run_dir = base, None
    elif (base / "recipe.json").is_file() and (base / "model" / "rtl.json").is_file():
        save_dir, run_dir = base / "model", base
    else:
        raise LoadError(f"path: expected a run directory (recipe.json + model/) or an rtl.save directory (rtl.json), got {base}")
    if model is not None:
        factory = load_object(model, "model") if isinstance(model, str) else model
        net = _converted(factory(), save_dir)
    elif run_dir is not None:
        net = _zoo_model(run_dir, save_dir)
    else:
        raise ValueError(f"model: {base} is an rtl.save directory; pass --model module:factory to build its architecture")
    router = None
    # the router next to the weights, in a router/ folder beside them, or at the top of the run directory
    for where in (save_dir, save_dir / "router", *((run_dir, run_dir / "router") if run_dir is not None else ())):
        router = load_router(where, net)
        if router is not None:
            break
    load(save_dir, net)
    return RoutedModel(net.eval(), router).eval()
