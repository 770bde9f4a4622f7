"""``rtl-kernels demo``: the whole RTL pipeline on scikit-learn's bundled digits, then routed inference timing.

K = 5 tickets by class pairs, sparsities 25/50/75 %, RTL vs single-mask IMP vs multi-model IMP,
similarity scores, plots, the saved model, and the routed model's latency on the fastest
available backend next to the dense model's. Output goes to a run directory; a re-run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import rtl_kernels as rtl

from ..pipeline.recipe import packaged_recipe
from ..pipeline.run import Run, default_run_dir, format_table
from .pipeline import add_recipe_args, recipe_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the RTL pipeline end to end on the bundled digits data",
        description="Adaptive tickets by class pairs on scikit-learn's digits, joint retraining, baselines, similarity, plots, "
        "saved model and routed inference latency. Resumes from --out when re-run.",
    )
    p.add_argument("--out", type=Path, help="run directory (default ./runs/demo-<hash of the settings>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: the demo's tiny layers run fastest single-threaded)"
    )
    add_recipe_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args, base=packaged_recipe("digits"))
    out = args.out or default_run_dir(recipe, "runs", prefix="demo")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipeline = Run(recipe, out, progress=not args.quiet)
    report = pipeline.execute()
    elapsed = time.perf_counter() - start
    k = recipe.num_tickets
    print(f"\nRTL demo on {recipe.dataset}: K = {k} tickets by class groups {pipeline.partition.groups}, run directory {out}")
    print(_headline(report))
    print(format_table(report["rows"], report["levels"][0]["params"]["dense"], report["router"]))
    print("\nsimilarity score (mean Jaccard of each ticket with the others):")
    for level in report["levels"]:
        scores = " ".join(f"{s:.3f}" for s in level["similarity"]["score"])
        print(f"  sparsity {level['sparsity']:.0%}: mean {level['similarity']['mean_score']:.3f}  per ticket [{scores}]")
    if report["collapse_point"]:
        print(f"  fastest change of the score with sparsity: at {report['collapse_point']['sparsity']:.0%} sparsity")
    for path in report.get("plots", []):
        print(f"plot: {path}")
    print(f"saved model (rtl.save): {out / 'model'}  (inspect with: rtl-kernels info {out})")
    _latency(pipeline)
    print(f"pipeline time: {elapsed:.1f} s (stages: {report['timings_s']})")
    return 0


def _headline(report: dict) -> str:
    """The deployable figure first: RTL with learned routes at the highest sparsity, against the dense model."""
    last = report["levels"][-1]
    methods = last["methods"]
    text = (
        f"deployable: RTL at {last['sparsity']:.0%} sparsity, routes from a {report['router']['chosen']} router fit on training inputs: "
        f"balanced accuracy {methods['rtl']['balanced_accuracy']:.4f} (router accuracy {report['router']['test_accuracy']:.4f})"
    )
    if "rtl_entropy" in methods:
        text += f"; with the entropy router (no fitting): {methods['rtl_entropy']['balanced_accuracy']:.4f}"
    if "dense" in methods:
        text += f"; dense model on all data, same budget: {methods['dense']['balanced_accuracy']:.4f}"
    return text + f"; oracle (routes from labels): {methods['rtl_oracle']['balanced_accuracy']:.4f}"


def _median_ms(fn, repeats: int = 30) -> float:
    from ..benchmarks.timing import TimerConfig, time_rotating

    config = TimerConfig(warmup_s=0.0, min_time_s=0.0, min_repeats=repeats, max_repeats=repeats, rounds=1)
    return time_rotating(fn, [()], torch.device("cpu"), config).median_s * 1e3


@torch.no_grad()
def _latency(pipeline: Run) -> None:
    """Routed inference (each test sample on the ticket its router picks) on the fastest backend vs the dense model."""
    model = pipeline.load_deployed().model
    backends = rtl.available_backends("cpu")
    backend = backends[0] if backends else "auto"
    for layer in rtl.models.rtl_layers(model):
        layer.backend = backend
    dense = pipeline.fresh()
    dense.load_state_dict(model.state_dict())
    dense_model = _densify(dense)
    x = pipeline.test.tensors[0]
    routes = pipeline.test_routes  # the deployable routes, as in the first table
    routed = rtl.RoutedModel(model)
    ms_routed = _median_ms(lambda: routed(x, routes=routes))
    ms_dense = _median_ms(lambda: dense_model(x))
    print(
        f"routed inference, {len(x)} test samples over {pipeline.recipe.num_tickets} tickets, backend '{backend}' (available: {backends}): {ms_routed:.3f} ms"
    )
    print(f"dense model (no masks, same weights), same batch: {ms_dense:.3f} ms")


def _densify(model: torch.nn.Module) -> torch.nn.Module:
    """The converted model with every RTL layer swapped back for a plain dense layer (all weights, no masks)."""
    for name, layer in list(rtl.models.state.named_rtl_layers(model).items()):
        dense = layer.to_dense(0)
        with torch.no_grad():
            dense.weight.copy_(layer.weight)
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], dense)
    return model.eval()
