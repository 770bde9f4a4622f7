"""A resumable RTL run: tickets -> router -> joint retraining (+ baselines) -> evaluation -> report, in one directory.

Each stage has its own key (OpenLTH style), so changing a later stage's setting reuses every
earlier result. The directory (default ``runs/<dataset>-<ticket key>``) holds the ticket stage:
``tickets.json`` (the settings that decide the tickets), ``init.safetensors`` (θ0), ``tickets/``
and ``single_tickets/`` (every round's mask per ticket, saved as soon as found, each stored with
the schedule that led to it, so adding a sparsity level reuses the rounds it shares). Inside it:
``router-<router key>/`` (the router fit on the training inputs; keyed by ``router`` alone), ``retrain-<retrain key>/`` with
``dense/`` (the dense baseline) and one ``sN-<schedule>/`` folder per level (retrained models
via ``rtl.save``, ``eval-<eval key>.json``). The latest run's ``recipe.json``, ``report.json``,
``table.txt``, plots, ``model/`` (the RTL model at the highest sparsity and its router, one
``rtl.save`` of a :class:`RoutedModel`; runs before it kept the router in ``model/router/``) and
``metrics.jsonl`` sit at the top. A run killed at any point resumes
where it stopped and gives the same result.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convert import LOW_COVERAGE, convert, coverage_of, low_coverage_message
from ..models.io import LoadError, load, save
from ..models.norms import convert_norms, named_routed_norms
from ..models.routing import RoutedModel
from ..models.state import named_rtl_layers, set_masks
from ..routers import EntropyRouter
from ..zoo import build_model
from .baselines import dense_param_count, param_counts, with_num_tickets
from .distributed import world
from .imp import dense_state, extract_tickets
from .metrics import classification_report, one_vs_rest
from .partition import Partition, split, with_negatives
from .recalibrate import recalibrate_norms
from .recipe import Recipe
from .retrain import joint_retrain
from .router_stage import fit_router, load_fitted, save_fitted
from .schedule import level_schedule
from .similarity import CollapseController, collapse_point, similarity, to_json
from .store import DirStore, StageFileError, atomic_save, read_json, read_tensors, schedule_text
from .training import concat, predict

logger = logging.getLogger(__name__)
STAGES = ("tickets", "retrain", "eval", "report")
NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10}  # plug-in datasets: from their targets
METHOD_NAMES = {
    "rtl": "RTL (router)",
    "rtl_entropy": "RTL (entropy router)",
    "rtl_oracle": "RTL, oracle (routes from labels)",
    "single": "single-mask IMP",
    "multi": "multi-model IMP (router)",
    "multi_oracle": "multi-model IMP, oracle",
    "dense": "dense, all data",
    "strong": "strong tickets (frozen random weights; the model is a seed + masks)",
}


def default_run_dir(recipe: Recipe, root: str | Path = "runs", prefix: str | None = None) -> Path:
    """``root/<prefix or dataset>-<ticket key>``."""
    name = recipe.dataset if ":" not in recipe.dataset else recipe.dataset.replace(":", "_").replace(".", "_")
    return Path(root) / f"{prefix or name}-{recipe.digest()}"


def level_name(sparsity: float) -> str:
    return f"s{sparsity * 100:g}"


def schedule_key(schedule: list[float]) -> str:
    """Short hash of a schedule prefix: which rounds led to a level's masks."""
    return hashlib.sha256(schedule_text(schedule).encode()).hexdigest()[:8]


def load_datasets(recipe: Recipe) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
    """The recipe's (train, test) datasets: a registered name (``rtl_kernels.data.DATASETS``) or a plug-in
    ``module:factory``, called with ``seed=, data_dir=, max_train=``."""
    from ..data import DATASETS

    if recipe.dataset in DATASETS:
        factory = DATASETS[recipe.dataset]
    else:
        from ..plugins import load_object

        factory = load_object(recipe.dataset, "dataset")
    data = factory(seed=recipe.seed, data_dir=recipe.data_dir, max_train=recipe.max_train)
    if not (isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, torch.utils.data.TensorDataset) for d in data)):
        raise TypeError(
            f"dataset: expected {recipe.dataset!r} to return (train, test) TensorDatasets of (inputs, targets), got {type(data).__name__}"
        )
    return data


@dataclass
class Level:
    """One sparsity level: the requested target, the round that reached it, and that round's masks."""

    target: float
    achieved: float
    round_index: int
    masks: dict[str, torch.Tensor]
    single_masks: dict[str, torch.Tensor] | None = None
    relaxed: bool = False
    key: str = ""

    @property
    def name(self) -> str:
        return f"{level_name(self.target)}-{self.key}"


@dataclass
class Run:
    """Executes a :class:`Recipe` in ``directory``; :meth:`execute` runs the stages up to ``until``."""

    recipe: Recipe
    directory: Path
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        saved = self.directory / "tickets.json"
        settings = self._ticket_settings()
        previous = read_json(saved)
        if previous is not None:
            if previous != settings:
                changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
                raise ValueError(
                    f"out: {self.directory} holds tickets of a different recipe (changed ticket settings: {changed}); pick another directory"
                )
        if world()[0] == 0:
            saved.write_text(json.dumps(settings, indent=2, sort_keys=True))
            (self.directory / "recipe.json").write_text(self.recipe.to_json())
        self.retrain_dir = self.directory / f"retrain-{self.recipe.stage_digest('retrain')}"
        self.eval_key = self.recipe.stage_digest("eval")
        self._setup()

    def _ticket_settings(self) -> dict:
        """The settings that decide the tickets (those that differ from the defaults, as in the directory name's hash)."""
        return self.recipe.stage_fields("tickets")

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        r = self.recipe
        self.train, self.test = load_datasets(r)
        if r.max_train and len(self.train) > r.max_train:  # a seeded random subset (files may be sorted by class)
            keep = torch.randperm(len(self.train), generator=torch.Generator().manual_seed(r.seed))[: r.max_train].sort().values
            self.train = torch.utils.data.TensorDataset(*(t[keep] for t in self.train.tensors))
        x_train, y_train = self.train.tensors
        x_test, y_test = self.test.tensors
        self.num_classes = NUM_CLASSES.get(r.dataset) or int(max(int(y_train.max()), int(y_test.max()))) + 1
        self.partition = Partition(r.partition, r.num_tickets, seed=r.seed).fit(x_train, y_train)
        self.train_ids = self.partition.assign(x_train, y_train)
        self.subsets = split(self.train, self.train_ids, r.num_tickets)
        # what each ticket trains on (RTL and multi-model IMP); single-mask IMP trains on the whole training set
        self.ticket_data = with_negatives(self.subsets, r.seed) if r.negatives else self.subsets
        self.test_ids = self.partition.assign(x_test, y_test)
        self.ticket_classes = self.partition.classes_of(self.train_ids, y_train)
        self.loss_fn = F.cross_entropy
        self.optimizer = None if r.optimizer == "adam" else functools.partial(torch.optim.SGD, lr=r.lr, momentum=0.9)
        torch.manual_seed(r.seed)
        dense = build_model(r.model, in_features=x_train[0].numel(), num_classes=self.num_classes, hidden=r.hidden)
        self.model = convert(dense, r.num_tickets, ignore=r.ignore).to(r.device)
        coverage = coverage_of(self.model)
        if coverage < LOW_COVERAGE and not r.allow_low_coverage:
            raise ValueError(f"{low_coverage_message(coverage, 'recipe.ignore')}; set allow_low_coverage = true to run anyway")
        init = self.directory / "init.safetensors"
        theta0 = read_tensors(init)
        if theta0 is not None:
            self.model.load_state_dict(theta0, strict=False)
        elif world()[0] == 0:
            atomic_save(dense_state(self.model), init)
        self.theta0 = dense_state(self.model)

    def fresh(self, num_tickets: int | None = None) -> nn.Module:
        """A copy of the converted model at θ0 with all-ones masks (``num_tickets`` defaults to K)."""
        return with_num_tickets(self.model, num_tickets or self.recipe.num_tickets)

    def rtl_model(self) -> nn.Module:
        """:meth:`fresh` with K tickets, its BatchNorms routed (per-ticket statistics) when the recipe asks for it."""
        model = self.fresh()
        if self.recipe.routed_bn:
            convert_norms(model, self.recipe.num_tickets)
        return model

    def recalibrated(self, model: nn.Module) -> nn.Module:
        """A copy of a retrained RTL model whose tickets each have BatchNorm statistics from their own training subset."""
        out = copy.deepcopy(model)
        if not named_routed_norms(out) and not convert_norms(out, self.recipe.num_tickets):
            logger.info("recalibrate_bn: the model has no BatchNorm with running statistics; nothing to recalibrate")
            return model
        recalibrate_norms(out, self.subsets, batch_size=max(self.recipe.batch_size, 256))
        return out

    def load_deployed(self) -> RoutedModel:
        """``model/`` (the report's RTL model and its router, one ``rtl.save``) as an eval-mode :class:`RoutedModel`:
        :func:`~rtl_kernels.serve.loading.load_served_model` of that save with :meth:`fresh` as the architecture.

        Run directories from before one-call saves keep the router in ``model/router/``; it is read from there.
        """
        from ..serve.loading import load_served_model

        return load_served_model(self.directory / "model", self.fresh)

    def log(self, record: dict) -> None:
        """Append one metrics record to ``metrics.jsonl``."""
        with open(self.directory / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    # ---------------------------------------------------------------- stages
    def execute(self, until: str = "report") -> dict | None:
        """Run the stages up to and including ``until``; returns the report (rank 0; for ``"eval"`` its rows and levels) or None."""
        if until not in STAGES:
            raise ValueError(f"until: expected one of {STAGES}, got {until!r}")
        start = time.perf_counter()
        levels = self.find()
        self.timings["tickets"] = time.perf_counter() - start
        if world()[0] != 0 or until == "tickets":
            return None
        stop = STAGES.index(until)
        t = time.perf_counter()
        models = [self.retrain_level(level) for level in levels]
        dense = self.dense_baseline() if self.recipe.baselines else None
        self.timings["retrain"] = time.perf_counter() - t
        if stop < STAGES.index("eval"):
            return None
        t = time.perf_counter()
        if self.recipe.recalibrate_bn:
            models = [{**m, "rtl": self.recalibrated(m["rtl"])} for m in models]
        self.router, self.router_info = self.fit_router()
        evals = [self.evaluate_level(level, m, dense) for level, m in zip(levels, models)]
        self.timings["eval"] = time.perf_counter() - t
        if stop < STAGES.index("report"):
            return {"rows": table_rows(evals), "levels": evals, "router": self.router_info}
        return self.report(levels, models, evals)

    def find(self) -> list[Level]:
        """Ticket extraction for RTL (and multi-model IMP) and for single-mask IMP; all rounds saved as found."""
        r = self.recipe
        num_weights = sum(layer.weight.numel() for layer in named_rtl_layers(self.model).values())
        schedule, at = level_schedule(r.sparsities, prune_fraction=r.prune_fraction, prune_count=r.prune_count, num_weights=num_weights)
        common = dict(
            epochs_per_round=r.epochs_per_round, loss_fn=self.loss_fn, lr=r.lr, batch_size=r.batch_size, rewind=r.rewind,
            scope=r.scope, seed=r.seed, progress=self.progress, optimizer=self.optimizer,
        )  # fmt: skip
        controller = CollapseController(r.collapse_threshold, r.collapse_action) if r.collapse_threshold > 0 else None
        search = extract_tickets(
            self.model,
            self.ticket_data,
            schedule=schedule,
            store=DirStore(self.directory / "tickets", schedule=schedule),
            controller=controller,
            log=self._tagged(method="rtl"),
            **common,
        )
        self.search = search
        single = None
        if r.baselines:
            single = extract_tickets(
                self.fresh(1), [concat(self.subsets)], schedule=search.sparsities,
                store=DirStore(self.directory / "single_tickets", schedule=search.sparsities), log=self._tagged(method="single"), **common,
            )  # fmt: skip
        levels, used = [], set()
        for target, idx in zip(r.sparsities, at):
            ridx = min(idx, len(search.masks) - 1)
            if ridx in used:
                continue
            used.add(ridx)
            levels.append(
                Level(
                    target, search.sparsities[ridx], ridx, search.masks[ridx], single.masks[ridx] if single else None,
                    relaxed=ridx != idx, key=schedule_key(search.sparsities[: ridx + 1]),
                )
            )  # fmt: skip
        if world()[0] == 0:
            summary = {"schedule": schedule, "level_rounds": at, "history": search.history, "collapse": search.collapse}
            (self.directory / "tickets" / "summary.json").write_text(json.dumps(summary, indent=2))
        return levels

    def _tagged(self, **tags: object):
        return lambda record: self.log({**tags, **record})

    def _retrained(self, path: Path, model: nn.Module, masks: dict[str, torch.Tensor], subsets: list, meta: dict) -> nn.Module:
        """Load a finished retraining from ``path`` or do it (from θ0 with ``masks``) and save it."""
        if (path / "rtl.json").is_file():
            try:
                return load(path, model)
            except LoadError as exc:
                raise StageFileError(path, exc) from None
        r = self.recipe
        set_masks(model, masks)
        joint_retrain(
            model, subsets, epochs=r.retrain_epochs, loss_fn=self.loss_fn, lr=r.lr, batch_size=r.batch_size, mode=r.mode,
            progress=self.progress, optimizer=self.optimizer, seed=r.seed, log=self._tagged(**meta),
        )  # fmt: skip
        save(model, path, metadata={**meta, "recipe": r.to_dict()})
        return model

    def retrain_level(self, level: Level) -> dict:
        """Joint retraining of RTL at one level, and the two baselines; each saved when done."""
        base = self.retrain_dir / level.name
        tags = {"level": level.target, "sparsity": level.achieved}
        out = {"rtl": self._retrained(base / "rtl", self.rtl_model(), level.masks, self.ticket_data, {"method": "rtl", **tags})}
        if level.single_masks is not None:
            out["single"] = self._retrained(
                base / "single", self.fresh(1), level.single_masks, [concat(self.subsets)], {"method": "single", **tags}
            )
            out["multi"] = [
                self._retrained(
                    base / "multi" / f"ticket_{k:03d}",
                    self.fresh(1),
                    {n: m[k : k + 1] for n, m in level.masks.items()},
                    [s],
                    {"method": "multi", "ticket": k, **tags},
                )
                for k, s in enumerate(self.ticket_data)
            ]
        if self.recipe.strong:
            out["strong"] = self._strong(base / "strong", level.target, {"method": "strong", **tags})
        return out

    def _strong(self, path: Path, sparsity: float, meta: dict) -> nn.Module:
        """Strong tickets at ``sparsity``: seeded frozen weights, edge-popup masks; loaded from ``path`` when done."""
        from ..init import seeded_
        from .strong import find_strong_tickets

        model = self.fresh()
        if (path / "rtl.json").is_file():
            return load(path, model)
        r = self.recipe
        seeded_(model, r.seed)
        find_strong_tickets(
            model, self.ticket_data, sparsity=sparsity, epochs=r.strong_epochs, loss_fn=self.loss_fn, lr=r.strong_lr,
            batch_size=r.batch_size, seed=r.seed, progress=self.progress, log=self._tagged(**meta),
        )  # fmt: skip
        save(model, path, metadata={**meta, "recipe": r.to_dict()})
        return model

    def dense_baseline(self) -> nn.Module:
        """The dense model (all weights, no router) trained on all the training data with RTL's retraining budget."""
        ones = {n: torch.ones(1, *layer.weight.shape, dtype=torch.bool) for n, layer in named_rtl_layers(self.model).items()}
        return self._retrained(
            self.retrain_dir / "dense", self.fresh(1), ones, [concat(self.subsets)], {"method": "dense", "sparsity": 0.0}
        )

    def fit_router(self) -> tuple[nn.Module, dict]:
        """The router of the deployable figure, fit on the training inputs only (``router-<router key>/``, reused on re-run)."""
        path = self.directory / f"router-{self.recipe.stage_digest('router')}"
        loaded = load_fitted(path)
        if loaded is not None:
            return loaded
        router, info = fit_router(self.recipe.router, self.train.tensors[0], self.train_ids, self.recipe.num_tickets, self.recipe.seed)
        with torch.no_grad():
            info["test_accuracy"] = float(
                (router(self.test.tensors[0].reshape(len(self.test), -1).float()) == self.test_ids).float().mean()
            )
        save_fitted(router, info, path)
        self.log({"stage": "router", **info})
        return router, info

    @functools.cached_property
    def test_routes(self) -> torch.Tensor:
        """The fitted router's routes for the test inputs: one router serves every level, so routed once."""
        with torch.no_grad():
            return self.router(self.test.tensors[0].reshape(len(self.test), -1).float())

    def evaluate_level(self, level: Level, models: dict, dense: nn.Module | None = None) -> dict:
        """Balanced accuracy with the router's routes and with oracle routes, baselines, parameters, similarity."""
        path = self.retrain_dir / level.name / f"eval-{self.eval_key}.json"
        done = read_json(path)
        if done is not None:
            return done
        y = self.test.tensors[1]
        k_total = self.recipe.num_tickets
        counts = param_counts(level.masks)
        shared = dense_param_count(models["rtl"])
        routes = self.test_routes
        result = {
            "target": level.target, "sparsity": level.achieved, "round": level.round_index, "relaxed": level.relaxed,
            "router": {**self.router_info, "test_accuracy": float((routes == self.test_ids).float().mean())}, "methods": {},
        }  # fmt: skip
        rtl_params = {"params": counts["rtl_union"], "dense_params": shared}
        result["methods"]["rtl"] = {
            **classification_report(predict(models["rtl"], self.test, routes).argmax(1), y, self.num_classes),
            **rtl_params,
        }
        entropy_routes = _entropy_routes(models["rtl"], self.test.tensors[0])
        result["methods"]["rtl_entropy"] = {
            **classification_report(predict(models["rtl"], self.test, entropy_routes).argmax(1), y, self.num_classes),
            **rtl_params,
            "router_accuracy": float((entropy_routes == self.test_ids).float().mean()),
        }
        rtl_pred = predict(models["rtl"], self.test, self.test_ids).argmax(1)
        result["methods"]["rtl_oracle"] = {**classification_report(rtl_pred, y, self.num_classes), **rtl_params}
        if self.recipe.one_vs_rest:
            per = [predict(models["rtl"], self.test, k).argmax(1) for k in range(k_total)]
            result["methods"]["rtl_oracle"]["one_vs_rest"] = one_vs_rest(per, self.test_ids, self.ticket_classes)
        if "single" in models:
            single_pred = predict(models["single"], self.test, 0).argmax(1)
            single_params = param_counts(level.single_masks)["rtl_union"]
            result["methods"]["single"] = {
                **classification_report(single_pred, y, self.num_classes),
                "params": single_params,
                "dense_params": shared,
            }
            per_multi = torch.stack([predict(m, self.test, 0).argmax(1) for m in models["multi"]])
            multi_params = {"params": counts["multi_model"], "dense_params": shared * k_total}
            rows = torch.arange(len(y))
            result["methods"]["multi"] = {**classification_report(per_multi[routes, rows], y, self.num_classes), **multi_params}
            result["methods"]["multi_oracle"] = {
                **classification_report(per_multi[self.test_ids, rows], y, self.num_classes),
                **multi_params,
            }
            if self.recipe.one_vs_rest:
                result["methods"]["single"]["one_vs_rest"] = one_vs_rest([single_pred] * k_total, self.test_ids, self.ticket_classes)
                result["methods"]["multi_oracle"]["one_vs_rest"] = one_vs_rest(list(per_multi), self.test_ids, self.ticket_classes)
        if "strong" in models:  # oracle routes, as the SupSup setting gives task ids
            saved = self.retrain_dir / level.name / "strong"
            result["methods"]["strong"] = {
                **classification_report(predict(models["strong"], self.test, self.test_ids).argmax(1), y, self.num_classes),
                "params": 0,  # no weight is stored: it is regenerated from the seed
                "dense_params": shared,
                "bytes": sum(p.stat().st_size for p in saved.iterdir() if p.is_file()),
                "dense_fp32_bytes": 4 * sum(p.numel() for p in models["strong"].parameters()),
            }
        if dense is not None:
            dense_pred = predict(dense, self.test, 0).argmax(1)
            result["methods"]["dense"] = {
                **classification_report(dense_pred, y, self.num_classes),
                "params": counts["dense"],
                "dense_params": shared,
            }
        result["params"] = counts
        result["similarity"] = to_json(similarity(level.masks))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        for method, values in result["methods"].items():
            self.log(
                {
                    "stage": "eval",
                    "method": method,
                    "level": level.target,
                    "balanced_accuracy": values["balanced_accuracy"],
                    "params": values["params"],
                }
            )
        return result

    def report(self, levels: list[Level], models: list[dict], evals: list[dict]) -> dict:
        """``report.json``, ``table.txt``, plots (with matplotlib) and ``model/`` (RTL at the highest sparsity, with its router)."""
        history = self.search.history
        sparsities = [0.0] + [h["sparsity"] for h in history]  # the dense start: every ticket is all ones, score 1
        scores = [1.0] + [h["mean_score"] for h in history]
        cp = collapse_point(sparsities, scores)
        report = {
            "recipe": self.recipe.to_dict(),
            "directory": str(self.directory),
            "stage_dirs": {"retrain": self.retrain_dir.name, "eval": f"eval-{self.eval_key}.json"},
            "router": evals[-1]["router"],
            "rows": table_rows(evals),
            "levels": evals,
            "similarity_history": history,
            "collapse_point": None if cp is None else {"round": cp - 1, "sparsity": sparsities[cp], "score": scores[cp]},
            "collapse_controller": self.search.collapse,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }
        (self.directory / "report.json").write_text(json.dumps(report, indent=2))
        (self.directory / "table.txt").write_text(format_table(report["rows"], evals[0]["params"]["dense"], report["router"]) + "\n")
        final = self.directory / "model"
        shutil.rmtree(final / "router", ignore_errors=True)  # where runs before one-call saves kept the router
        meta = {"method": "rtl", "level": levels[-1].target, "sparsity": levels[-1].achieved, "recipe": self.recipe.to_dict()}
        save(RoutedModel(models[-1]["rtl"], self.router), final, metadata=meta)
        try:
            from .plots import plot_run

            report["plots"] = [str(p) for p in plot_run(report, levels[-1].masks, self.directory)]
        except ImportError:
            logger.info("matplotlib is not installed; skipping plots (pip install 'rtl-kernels[plot]')")
        return report


@torch.no_grad()
def _entropy_routes(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """SupSup's entropy routing (no fitting): each test input to the ticket whose output is most confident."""
    was_training = model.training
    model.eval()
    router = EntropyRouter(model)
    routes = torch.cat([router(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return routes.cpu()


def table_rows(evals: list[dict]) -> list[dict]:
    """One row per (level, method), in table order; the dense baseline once, first."""
    rows = []
    for i, ev in enumerate(evals):
        for method, values in ev["methods"].items():
            if method == "dense" and i > 0:
                continue
            row = {
                "sparsity": 0.0 if method == "dense" else ev["sparsity"],
                "method": method,
                "balanced_accuracy": values["balanced_accuracy"],
                "accuracy": values.get("accuracy"),
                "params": values["params"],
            }
            if "bytes" in values:
                row["bytes"], row["dense_fp32_bytes"] = values["bytes"], values["dense_fp32_bytes"]
            if "one_vs_rest" in values:
                row["ovr_balanced_accuracy"] = values["one_vs_rest"]["mean_balanced_accuracy"]
                row["ovr_precision"] = values["one_vs_rest"]["mean_precision"]
                row["ovr_recall"] = values["one_vs_rest"]["mean_recall"]
            rows.append(row)
    rows.sort(key=lambda r: r["method"] != "dense")
    return rows


def format_table(rows: list[dict], dense_params: int, router: dict | None = None) -> str:
    """The comparison table: sparsity, method, balanced accuracy, prunable parameters (and one-vs-rest scores)."""
    ovr = any("ovr_balanced_accuracy" in r for r in rows)
    names = [METHOD_NAMES.get(r["method"], r["method"]) for r in rows]
    width = max([33, *map(len, names)])
    head = f"{'sparsity':>8}  {'method':<{width}} {'bal. acc':>8}  {'params':>9}  {'of dense':>8}"
    if ovr:
        head += f"  {'1-vs-rest bal.acc / prec / rec':>30}"
    lines = [head, "-" * len(head)]
    for r, name in zip(rows, names):
        line = (
            f"{r['sparsity']:>8.1%}  {name:<{width}} {r['balanced_accuracy']:>8.4f}  {r['params']:>9,}  {r['params'] / dense_params:>8.2f}"
        )
        if "ovr_balanced_accuracy" in r:
            line += f"  {r['ovr_balanced_accuracy']:>12.3f} / {r['ovr_precision']:.3f} / {r['ovr_recall']:.3f}"
        lines.append(line)
    if router:
        val = router.get("validation_accuracy")
        picked = f", picked by held-out training accuracy from {', '.join(f'{k} {v:.3f}' for k, v in val.items())}" if val else ""
        lines.append(
            f"router: {router['chosen']} on the inputs, fit on training inputs only{picked}; routing accuracy on test {router['test_accuracy']:.4f}"
        )
    lines.append(
        "RTL (router) is what a deployment gets; the oracle row routes each test sample by its label's subset, which a deployment cannot."
    )
    lines.append(
        f"params: prunable weights stored (dense model: {dense_params:,}); RTL counts the union of its K masks, multi-model the sum of K models."
    )
    for r in rows:
        if "bytes" in r:
            lines.append(
                f"strong tickets at {r['sparsity']:.0%} (oracle routes): {r['bytes']:,} bytes saved (seed + K bit-packed masks + biases + "
                f"metadata) vs {r['dense_fp32_bytes']:,} bytes of one dense fp32 model"
            )
    return "\n".join(lines)
