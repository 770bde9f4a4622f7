"""A resumable RTL run: tickets -> joint retraining (+ baselines) -> evaluation -> report, in one directory.

The directory (default ``runs/<dataset>-<hash of the non-default recipe fields>``) holds
``recipe.json``, ``init.safetensors`` (θ0), ``tickets/`` and ``single_tickets/`` (every round's
mask per ticket, saved as soon as found), one ``sN/`` folder per sparsity level (retrained models
via ``rtl.save``, ``eval.json``), ``report.json``, ``table.txt``, plots, ``model/`` (the RTL model at
the highest sparsity) and ``metrics.jsonl``. Every finished artifact is reused on re-run, so a
run killed at any point resumes where it stopped and gives the same result.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convert import convert
from ..models.io import LoadError, load, save
from ..models.state import named_rtl_layers, set_masks
from ..zoo import build_model
from .baselines import dense_param_count, param_counts, with_num_tickets
from .distributed import world
from .imp import dense_state, extract_tickets
from .metrics import classification_report, one_vs_rest
from .partition import Partition, split, with_negatives
from .recipe import Recipe
from .retrain import joint_retrain
from .schedule import level_schedule
from .similarity import CollapseController, collapse_point, similarity, to_json
from .store import DirStore, StageFileError, atomic_save, read_json, read_tensors
from .training import concat, predict

logger = logging.getLogger(__name__)
STAGES = ("tickets", "retrain", "eval", "report")
NUM_CLASSES = {"digits": 10, "cifar10": 10}


def default_run_dir(recipe: Recipe, root: str | Path = "runs", prefix: str | None = None) -> Path:
    """``root/<prefix or dataset>-<recipe digest>``."""
    return Path(root) / f"{prefix or recipe.dataset}-{recipe.digest()}"


def level_name(sparsity: float) -> str:
    return f"s{sparsity * 100:g}"


@dataclass
class Level:
    """One sparsity level: the requested target, the round that reached it, and that round's masks."""

    target: float
    achieved: float
    round_index: int
    masks: dict[str, torch.Tensor]
    single_masks: dict[str, torch.Tensor] | None = None
    relaxed: bool = False


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
        saved = self.directory / "recipe.json"
        if saved.is_file():
            previous = Recipe.from_json(saved.read_text())
            if previous != self.recipe:
                raise ValueError(
                    f"out: {self.directory} holds a run of a different recipe (changed: {_diff(previous, self.recipe)}); pick another directory"
                )
        elif world()[0] == 0:
            saved.write_text(self.recipe.to_json())
        self._setup()

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        r = self.recipe
        if r.dataset == "digits":
            from ..data import load_digits

            self.train, self.test = load_digits(seed=r.seed)
        else:
            from ..data import load_cifar10

            self.train, self.test = load_cifar10(r.data_dir, max_train=r.max_train)
        if r.max_train and len(self.train) > r.max_train:
            self.train = torch.utils.data.TensorDataset(*(t[: r.max_train] for t in self.train.tensors))
        x_train, y_train = self.train.tensors
        x_test, y_test = self.test.tensors
        self.num_classes = NUM_CLASSES[r.dataset]
        self.partition = Partition(r.partition, r.num_tickets, seed=r.seed).fit(x_train, y_train)
        train_ids = self.partition.assign(x_train, y_train)
        self.subsets = split(self.train, train_ids, r.num_tickets)
        # what each ticket trains on (RTL and multi-model IMP); single-mask IMP trains on the whole training set
        self.ticket_data = with_negatives(self.subsets, r.seed) if r.negatives else self.subsets
        self.test_ids = self.partition.assign(x_test, y_test)
        self.ticket_classes = self.partition.classes_of(train_ids, y_train)
        self.loss_fn = F.cross_entropy
        self.optimizer = None if r.optimizer == "adam" else functools.partial(torch.optim.SGD, lr=r.lr, momentum=0.9)
        torch.manual_seed(r.seed)
        dense = build_model(r.model, in_features=x_train[0].numel(), num_classes=self.num_classes, hidden=r.hidden)
        self.model = convert(dense, r.num_tickets, ignore=r.ignore).to(r.device)
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

    def log(self, record: dict) -> None:
        """Append one metrics record to ``metrics.jsonl``."""
        with open(self.directory / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")

    # ---------------------------------------------------------------- stages
    def execute(self, until: str = "report") -> dict | None:
        """Run the stages up to and including ``until``; returns the report (rank 0) or None."""
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
        self.timings["retrain"] = time.perf_counter() - t
        if stop < STAGES.index("eval"):
            return None
        t = time.perf_counter()
        evals = [self.evaluate_level(level, m) for level, m in zip(levels, models)]
        self.timings["eval"] = time.perf_counter() - t
        if stop < STAGES.index("report"):
            return None
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
            store=DirStore(self.directory / "tickets"),
            controller=controller,
            log=self._tagged(method="rtl"),
            **common,
        )
        self.search = search
        single = None
        if r.baselines:
            single = extract_tickets(
                self.fresh(1), [concat(self.subsets)], schedule=search.sparsities, store=DirStore(self.directory / "single_tickets"),
                log=self._tagged(method="single"), **common,
            )  # fmt: skip
        levels, used = [], set()
        for target, idx in zip(r.sparsities, at):
            ridx = min(idx, len(search.masks) - 1)
            if ridx in used:
                continue
            used.add(ridx)
            levels.append(
                Level(
                    target, search.sparsities[ridx], ridx, search.masks[ridx], single.masks[ridx] if single else None, relaxed=ridx != idx
                )
            )
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
        base = self.directory / level_name(level.target)
        tags = {"level": level.target, "sparsity": level.achieved}
        out = {"rtl": self._retrained(base / "rtl", self.fresh(), level.masks, self.ticket_data, {"method": "rtl", **tags})}
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
        return out

    def evaluate_level(self, level: Level, models: dict) -> dict:
        """Balanced accuracy with oracle routing by subset (and the one-vs-rest protocol), parameters, similarity."""
        path = self.directory / level_name(level.target) / "eval.json"
        done = read_json(path)
        if done is not None:
            return done
        y = self.test.tensors[1]
        k_total = self.recipe.num_tickets
        counts = param_counts(level.masks)
        shared = dense_param_count(models["rtl"])
        result = {"target": level.target, "sparsity": level.achieved, "round": level.round_index, "relaxed": level.relaxed, "methods": {}}
        rtl_pred = predict(models["rtl"], self.test, self.test_ids).argmax(1)
        result["methods"]["rtl"] = {
            **classification_report(rtl_pred, y, self.num_classes),
            "params": counts["rtl_union"],
            "dense_params": shared,
        }
        if self.recipe.one_vs_rest:
            per = [predict(models["rtl"], self.test, k).argmax(1) for k in range(k_total)]
            result["methods"]["rtl"]["one_vs_rest"] = one_vs_rest(per, self.test_ids, self.ticket_classes)
        if "single" in models:
            single_pred = predict(models["single"], self.test, 0).argmax(1)
            single_params = param_counts(level.single_masks)["rtl_union"]
            result["methods"]["single"] = {
                **classification_report(single_pred, y, self.num_classes),
                "params": single_params,
                "dense_params": shared,
            }
            per_multi = [predict(m, self.test, 0).argmax(1) for m in models["multi"]]
            multi_pred = torch.stack(per_multi)[self.test_ids, torch.arange(len(y))]
            result["methods"]["multi"] = {
                **classification_report(multi_pred, y, self.num_classes),
                "params": counts["multi_model"],
                "dense_params": shared * k_total,
            }
            if self.recipe.one_vs_rest:
                result["methods"]["single"]["one_vs_rest"] = one_vs_rest([single_pred] * k_total, self.test_ids, self.ticket_classes)
                result["methods"]["multi"]["one_vs_rest"] = one_vs_rest(per_multi, self.test_ids, self.ticket_classes)
        result["params"] = counts
        result["similarity"] = to_json(similarity(level.masks))
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
        """``report.json``, ``table.txt``, plots (with matplotlib) and ``model/`` (RTL at the highest sparsity)."""
        rows = []
        for ev in evals:
            for method, values in ev["methods"].items():
                row = {
                    "sparsity": ev["sparsity"],
                    "method": method,
                    "balanced_accuracy": values["balanced_accuracy"],
                    "params": values["params"],
                }
                if "one_vs_rest" in values:
                    row["ovr_balanced_accuracy"] = values["one_vs_rest"]["mean_balanced_accuracy"]
                    row["ovr_precision"] = values["one_vs_rest"]["mean_precision"]
                    row["ovr_recall"] = values["one_vs_rest"]["mean_recall"]
                rows.append(row)
        history = self.search.history
        sparsities = [0.0] + [h["sparsity"] for h in history]  # the dense start: every ticket is all ones, score 1
        scores = [1.0] + [h["mean_score"] for h in history]
        cp = collapse_point(sparsities, scores)
        report = {
            "recipe": self.recipe.to_dict(),
            "directory": str(self.directory),
            "rows": rows,
            "levels": evals,
            "similarity_history": history,
            "collapse_point": None if cp is None else {"round": cp - 1, "sparsity": sparsities[cp], "score": scores[cp]},
            "collapse_controller": self.search.collapse,
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
        }
        (self.directory / "report.json").write_text(json.dumps(report, indent=2))
        (self.directory / "table.txt").write_text(format_table(rows, evals[0]["params"]["dense"]) + "\n")
        final = self.directory / "model"
        shutil.copytree(self.directory / level_name(levels[-1].target) / "rtl", final, dirs_exist_ok=True)
        try:
            from .plots import plot_run

            report["plots"] = [str(p) for p in plot_run(report, levels[-1].masks, self.directory)]
        except ImportError:
            logger.info("matplotlib is not installed; skipping plots (pip install 'rtl-kernels[plot]')")
        return report


def format_table(rows: list[dict], dense_params: int) -> str:
    """The comparison table: sparsity, method, balanced accuracy, prunable parameters (and one-vs-rest scores)."""
    names = {"rtl": "RTL (oracle routing)", "single": "single-mask IMP", "multi": "multi-model IMP"}
    ovr = any("ovr_balanced_accuracy" in r for r in rows)
    head = f"{'sparsity':>8}  {'method':<22} {'bal. acc':>8}  {'params':>9}  {'of dense':>8}"
    if ovr:
        head += f"  {'1-vs-rest bal.acc / prec / rec':>30}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = f"{r['sparsity']:>8.1%}  {names.get(r['method'], r['method']):<22} {r['balanced_accuracy']:>8.4f}  {r['params']:>9,}  {r['params'] / dense_params:>8.2f}"
        if "ovr_balanced_accuracy" in r:
            line += f"  {r['ovr_balanced_accuracy']:>12.3f} / {r['ovr_precision']:.3f} / {r['ovr_recall']:.3f}"
        lines.append(line)
    lines.append(
        f"params: prunable weights stored (dense model: {dense_params:,}); RTL counts the union of its K masks, multi-model the sum of K models."
    )
    return "\n".join(lines)


def _diff(a: Recipe, b: Recipe) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [k for k in da if da[k] != db[k]]
