"""Write a result document as JSON, a Markdown report, PNG plots (matplotlib optional) and LATEST.md.

Files go to ``out_dir`` named ``<device>-<UTC date>``; ``LATEST-<cpu|cuda>.md`` is the README-ready
snippet of the newest run per device type and ``LATEST.md`` joins them.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from pathlib import Path

from .machine import device_slug

logger = logging.getLogger(__name__)

CASE_COLUMNS = ("op", "shape", "rows", "tickets", "density", "structure", "routing", "dtype")
HEADERS = {
    "op": "op",
    "shape": "shape",
    "rows": "rows",
    "tickets": "K",
    "density": "density",
    "structure": "masks",
    "routing": "routing",
    "dtype": "dtype",
}
WRONG = " ✗"


def run_stem(doc: dict) -> str:
    """``<device slug>-<YYYYmmdd-HHMM>`` from the document's machine and start date."""
    date = doc["date"][:16].replace("-", "").replace(":", "").replace("T", "-")
    return f"{device_slug(doc['machine'])}-{date}"


def _fmt_us(us: float) -> str:
    if us >= 1e5:
        return f"{us / 1e3:,.0f} ms"
    if us >= 1e4:
        return f"{us / 1e3:,.1f} ms"
    return f"{us:,.1f}" if us < 100 else f"{us:,.0f}"


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.2f}"


def _ok(result: dict) -> bool:
    return "skipped" not in result


def _masked(name: str) -> bool:
    return name != "dense_unmasked"


def _cell(result: dict, best: bool) -> str:
    if not _ok(result):
        return "—"
    text = _fmt_us(result["median_us"])
    if result.get("correct") is False:
        return text + WRONG
    return f"**{text}**" if best else text


def _best(results: dict) -> str | None:
    """Fastest correct masked approach of a case."""
    valid = {n: r["median_us"] for n, r in results.items() if _ok(r) and _masked(n) and r.get("correct") is not False}
    return min(valid, key=valid.get) if valid else None


def _case_cells(rec: dict) -> list[str]:
    case = rec["case"]
    cells = [str(case[c]) if c != "density" else f"{case[c]:g}" for c in CASE_COLUMNS]
    cells.insert(4, f"{rec['active_tickets']:g}")
    return cells


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _case_header() -> list[str]:
    head = [HEADERS[c] for c in CASE_COLUMNS]
    head.insert(4, "K_act")
    return head


def _fastest(results: dict, ours: bool) -> float | None:
    """Median µs of the fastest correct masked approach among ours (``rtl:*``) or among the baselines."""
    times = [
        r["median_us"]
        for n, r in results.items()
        if _ok(r) and _masked(n) and r.get("correct") is not False and n.startswith("rtl:") == ours
    ]
    return min(times) if times else None


def speedup_cell(results: dict) -> str:
    """Fastest correct baseline time / our fastest correct backend time (above 1: ours is faster)."""
    ours, base = _fastest(results, True), _fastest(results, False)
    return f"{base / ours:.2f}x" if ours and base else "—"


def time_table(doc: dict) -> list[str]:
    """Median µs per approach and case; the fastest correct masked approach in bold."""
    names = doc["approaches"]
    rows = []
    for rec in doc["cases"]:
        best = _best(rec["results"])
        cells = [_cell(rec["results"].get(n, {"skipped": "not run"}), n == best) for n in names]
        rows.append(_case_cells(rec) + cells + [speedup_cell(rec["results"])])
    return _table([*_case_header(), *names, "ours vs best baseline"], rows)


def roofline_table(doc: dict) -> list[str]:
    """Per approach: % of its roofline time max(bytes / bandwidth, FLOPs / compute peak)."""
    names = doc["approaches"]
    rows = []
    for rec in doc["cases"]:
        cells = []
        for n in names:
            r = rec["results"].get(n, {})
            if not _ok(r) or not r:
                cells.append("—")
                continue
            compute = r.get("pct_compute_peak", r["pct_matmul_peak"])  # older result files: the matmul probe
            bound = "bw" if r["bw_time_us"] >= r["flop_time_us"] else ("pk" if "pct_compute_peak" in r else "mm")
            cells.append(f"{max(r['pct_bw_roofline'], compute):.0f}% {bound}")
        rows.append(_case_cells(rec) + cells)
    return _table(_case_header() + names, rows)


def footprint_table(doc: dict) -> list[str]:
    """Resident MiB (weights + masks) per approach, one row per distinct layer/mask setting."""
    names = doc["approaches"]
    seen: dict[tuple, list[str]] = {}
    for rec in doc["cases"]:
        c = rec["case"]
        key = (c["op"], c["shape"], c["tickets"], c["density"], c["structure"], c["dtype"])
        if key in seen:
            continue
        cells = [_fmt_bytes(r["footprint_bytes"]) if _ok(r) and r else "—" for r in (rec["results"].get(n, {}) for n in names)]
        seen[key] = [c["op"], c["shape"], str(c["tickets"]), f"{c['density']:g}", c["structure"], c["dtype"], *cells]
    return _table(["op", "shape", "K", "density", "masks", "dtype", *names], list(seen.values()))


def skip_reasons(doc: dict) -> list[str]:
    """Why approaches did not run, deduplicated with the number of cases."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for rec in doc["cases"]:
        for n, r in rec["results"].items():
            if not _ok(r):
                counts[(n, r["skipped"])] += 1
    lines = [f"- `{n}`: {reason} ({k} case{'s' if k > 1 else ''})" for (n, reason), k in sorted(counts.items())]
    lines += [f"- backend `{n}` not timed: {reason}" for n, reason in doc["backends"]["excluded"].items()]
    return lines


def _timer_method(doc: dict) -> str:
    methods = {r["time"]["method"] for rec in doc["cases"] for r in rec["results"].values() if "time" in r}
    return ", ".join(sorted(methods)) or "none"


def _truncation(doc: dict) -> list[str]:
    """A line saying the run stopped at its time budget, when it did."""
    planned = doc.get("cases_planned", len(doc["cases"]))
    if planned <= len(doc["cases"]):
        return []
    return [f"Stopped at its time budget ({doc['config'].get('time_budget_s'):g} s): {len(doc['cases'])} of {planned} cases ran."]


def _peak_line(p: dict) -> str:
    peaks = ", ".join(f"{k} {val / 1e9:,.0f} GFLOP/s" for k, val in p["peak_flops"].items())
    return f"{peaks} = {p['peak_description']}"


def markdown(doc: dict, images: list[str] | None = None, *, link_prefix: str = "", stem: str | None = None) -> str:
    """The Markdown report (also the README snippet); ``link_prefix`` is prepended to the JSON link ``<stem>.json``."""
    stem = stem or run_stem(doc)
    m, v, p = doc["machine"], doc["versions"], doc["probes"]
    hw = m.get("gpu_name") or f"{m['cpu_model']}, {m['cpu_count']} cores"
    peaks = ", ".join(f"{k} {val / 1e9:,.0f} GFLOP/s" for k, val in p["matmul_flops"].items())
    cfg = doc["config"]
    load = m.get("load_average")
    out = [
        f"### Kernel benchmarks: {hw} ({doc['date'][:10]})",
        "",
        f"Run `{doc['command']}` ({cfg['preset']} preset) on {hw}, {m['torch_threads']} torch threads; "
        f"torch {v['torch']}, triton {v['triton']}, Python {v['python']}, rtl_kernels {v['rtl_kernels']}"
        + (f"; load average at start {load[0]:.1f}, end {load[1]:.1f}" if load else "")
        + ".",
        f"Probes in the same run: copy bandwidth {p['bandwidth_Bps'] / 1e9:,.1f} GB/s (read + write of {p['copy_bytes'] >> 20} MiB), "
        f"square matmul ({p['matmul_size']}) peak: {peaks}."
        + (f" Physical compute peak (roofline): {_peak_line(p)}." if "peak_flops" in p else ""),
        f"Timer: {_timer_method(doc)}, median of interleaved rounds. Backends timed: {', '.join(doc['backends']['timed']) or 'none'}. Raw figures: [{stem}.json]({link_prefix}{stem}.json).",
        *_truncation(doc),
        "",
        "#### Median time per call (µs unless marked; best correct masked approach in bold; ✗ = wrong output; — = did not run; "
        "last column: fastest baseline time / fastest of our backends)",
        "",
        *time_table(doc),
        "",
        "#### Share of the roofline (bytes / measured bandwidth or FLOPs / compute peak, whichever is larger; bw = bandwidth-bound, "
        "pk = compute-bound against the physical peak named above (mm: against the matmul probe, older runs); "
        "above 100%: weights served from cache, the bandwidth probe measures memory)",
        "",
        *roofline_table(doc),
        "",
        "#### Resident memory, weights + masks (MiB)",
        "",
        *footprint_table(doc),
        "",
    ]
    if load and load[0] is not None and load[0] > m["cpu_count"]:
        out.insert(
            4,
            f"**Busy machine:** the 1-minute load average ({load[0]:.1f}) exceeded the {m['cpu_count']} CPUs, other jobs shared the "
            "cores: absolute CPU times are inflated and noisy; approaches of one case were timed interleaved, so their ratios are fairer.",
        )
    reasons = skip_reasons(doc)
    if reasons:
        out += ["#### Not run", "", *reasons, ""]
    for img in images or []:
        out += [f"![{Path(img).stem}]({img})", ""]
    return "\n".join(out)


def _series_groups(doc: dict, axis: str) -> dict[tuple, list[dict]]:
    """Cases that differ only in ``axis``, grouped (groups with at least two values)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for rec in doc["cases"]:
        c = rec["case"]
        groups[tuple((k, c[k]) for k in CASE_COLUMNS if k != axis)].append(rec)
    return {k: sorted(v, key=lambda r: r["case"][axis]) for k, v in groups.items() if len({r["case"][axis] for r in v}) >= 2}


def _title(key: tuple, axis_skip: str) -> str:
    d = dict(key)
    parts = [d["op"], d["shape"], f"K={d['tickets']}", d["dtype"]]
    if axis_skip != "rows":
        parts.insert(2, f"M={d['rows']}")
    if axis_skip != "density":
        parts.append(f"d={d['density']:g}")
    if axis_skip != "structure":
        parts.append(d["structure"])
    parts.append(d["routing"])
    return " ".join(parts)


def _color(doc: dict, name: str) -> str:
    """The same colour for an approach in every panel and plot."""
    return f"C{doc['approaches'].index(name) % 10}"


def plot_time_vs_rows(doc: dict, path: Path) -> bool:
    """Log-log median time vs rows, one line per approach, one panel per series; False if nothing to plot."""
    groups = _series_groups(doc, "rows")
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (key, recs) in zip(axes[0], groups.items()):
        for name in doc["approaches"]:
            pts = [(r["case"]["rows"], r["results"][name]["median_us"]) for r in recs if name in r["results"] and _ok(r["results"][name])]
            if len(pts) >= 1:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=name, color=_color(doc, name), linestyle="--" if not _masked(name) else "-")
        ax.set(xscale="log", yscale="log", xlabel="rows (images for conv2d)", ylabel="median time per call (µs)", title=_title(key, "rows"))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{doc['machine'].get('gpu_name') or doc['machine']['cpu_model']}: time vs rows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_speedup_vs_density(doc: dict, path: Path, baseline: str = "naive_eager") -> bool:
    """Speed-up over ``baseline`` vs density, one line per approach, one panel per series."""
    groups = _series_groups(doc, "density")
    if not groups:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
    for ax, (key, recs) in zip(axes[0], groups.items()):
        for name in doc["approaches"]:
            pts = []
            for r in recs:
                res, base = r["results"].get(name, {}), r["results"].get(baseline, {})
                if res and base and _ok(res) and _ok(base):
                    pts.append((100 * r["case"]["density"], base["median_us"] / res["median_us"]))
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=name, color=_color(doc, name), linestyle="--" if not _masked(name) else "-")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="density (% of weights kept)",
            ylabel=f"speed-up over {baseline}",
            title=_title(key, "density"),
        )
        densities = sorted({100 * r["case"]["density"] for r in recs})
        ax.set_xticks(densities, [f"{d:g}%" for d in densities])
        ax.minorticks_off()
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plots(doc: dict, out_dir: Path, stem: str) -> list[Path]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        logger.warning("matplotlib is not installed (pip install 'rtl-kernels[plot]'): no plots written")
        return []
    written = []
    for suffix, fn in (("time_vs_rows", plot_time_vs_rows), ("speedup_vs_density", plot_speedup_vs_density)):
        path = out_dir / f"{stem}-{suffix}.png"
        if fn(doc, path):
            written.append(path)
    return written


def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _prefix_from_cwd(out: Path) -> str:
    try:
        rel = out.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return ""
    return "" if str(rel) == "." else rel.as_posix() + "/"


def write_report(doc: dict, out_dir: str | Path, *, plots: bool = True) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md``, the PNGs, ``LATEST-<type>.md`` and ``LATEST.md``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = base = run_stem(doc)
    n = 1
    while (out / f"{stem}.json").exists():  # two runs in the same minute never overwrite each other
        n += 1
        stem = f"{base}-{n}"
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(_finite(doc), indent=1, allow_nan=False) + "\n")
    images = _plots(doc, out, stem) if plots else []
    for img in images:
        paths[img.stem.removeprefix(stem + "-")] = img
    paths["markdown"].write_text(markdown(doc, [img.name for img in images], stem=stem))
    # the LATEST files are meant for inclusion in the top-level README: links relative to the working directory
    prefix = _prefix_from_cwd(out)
    kind = "cuda" if doc["machine"].get("gpu_name") else "cpu"
    paths["latest_device"] = out / f"LATEST-{kind}.md"
    paths["latest_device"].write_text(markdown(doc, [prefix + img.name for img in images], link_prefix=prefix, stem=stem))
    paths["latest"] = out / "LATEST.md"
    parts = [(out / f"LATEST-{k}.md").read_text() for k in ("cpu", "cuda") if (out / f"LATEST-{k}.md").is_file()]
    paths["latest"].write_text(
        "<!-- generated by `rtl-kernels bench`: do not edit; newest run per device type -->\n\n" + "\n\n".join(parts)
    )
    return paths
