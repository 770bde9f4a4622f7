"""``rtl-kernels info``: what a save directory holds (layers, K, densities, similarity)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..masks.similarity import jaccard
from ..models.io import read_metadata, saved_masks


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe a saved RTL model or run directory",
        description="Print the layers, ticket densities and mask similarity of a save made by rtl.save (and, for a pipeline run directory, its comparison table).",
    )
    p.add_argument("path", type=Path, help="a directory written by rtl.save (or a run directory containing model/)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = args.path / "model" if (args.path / "model" / "rtl.json").is_file() else args.path
    run_report = _run_report(args.path)
    meta = read_metadata(path)
    packed = saved_masks(path)
    layers = {name: [round(float(d), 4) for d in p.density()] for name, p in packed.items()}
    sim = jaccard(packed)
    report = {
        "path": str(path),
        "num_tickets": meta["num_tickets"],
        "layer_density": layers,
        "jaccard": sim.tolist(),
        "routed_norms": sorted(meta.get("norms") or {}),
        "metadata": meta["metadata"],
    }
    if run_report is not None:
        report["run"] = {key: run_report.get(key) for key in ("rows", "router", "collapse_point", "collapse_controller", "timings_s")}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{path}: {len(layers)} RTL layers, K = {meta['num_tickets']} tickets (saved with rtl_kernels {meta.get('library_version')})")
    for name, dens in layers.items():
        print(f"  {name:<40} density per ticket: {' '.join(f'{d:.3f}' for d in dens)}")
    k = sim.shape[0]
    off = (sim.sum() - sim.diagonal().sum()) / max(k * (k - 1), 1)
    print(f"model-level mean Jaccard similarity between tickets: {float(off):.3f}")
    if report["routed_norms"]:
        print(f"BatchNorm running statistics per ticket (routed): {', '.join(report['routed_norms'])}")
    if run_report is not None:
        from ..pipeline.run import format_table

        print(f"\npipeline run {args.path} (recipe in recipe.json):")
        print(format_table(run_report["rows"], run_report["levels"][0]["params"]["dense"], run_report.get("router")))
    return 0


def _run_report(path: Path) -> dict | None:
    """The ``report.json`` of a pipeline run directory, if ``path`` is one that has finished."""
    report = path / "report.json"
    return json.loads(report.read_text()) if report.is_file() else None
