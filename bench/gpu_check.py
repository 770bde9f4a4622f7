"""Everything owed on a GPU in one call: versions, build, GPU tests, compute-sanitizer, bench, tune.

Run on a lent H100/H200 from the repository root (``bash bench/gpu_check.sh``); it finishes
within ``--budget`` seconds (default 470, under the 8 minutes a device call should take), keeps
going when a step fails, and writes at most 8 files into ``--out``: ``report.json``,
``report.md``, ``gpu_check.log`` (every step's output), and the bench JSON, its two plots and
the tuned config table. ``--dry-run`` (what CI runs on CPU) checks instead that every step's
command exists and resolves (the bench preset is found, the tests are collected, the sanitizer
harness compiles where nvcc is present) and writes the report of a fake result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FILES = 8
DEFAULT_BUDGET_S = 470.0  # all steps together: under the 8 minutes a device call should take
TAIL_CHARS = 3000
GPU_TEST_FILES = (
    "python_tests/test_cuda_kernel.py",
    "python_tests/test_triton_linear.py",
    "python_tests/test_triton_conv.py",
    "python_tests/test_triton_configs.py",
    # Triton calls on DEVICE (CUDA here): seeded-weight kernels, masked-delta kernels, Philox bits, NaN/Inf rules
    "python_tests/test_seeded_kernels.py",
    "python_tests/test_masked_delta.py",
    "python_tests/test_strong_init.py",
    "python_tests/test_nonfinite.py",
    "python_tests/test_compile.py",
    "python_tests/test_routed_model.py",
)
# a dry run only resolves commands: it must not spend minutes JIT-building the CPU kernels
DRY_RUN_ENV = {"RTL_KERNELS_NO_EXTENSION": "1"}
# the targets of the README and the kernel issues, checked against the bench result
TARGETS = (
    ("decode: time / HBM roofline", "≤ 1.2"),
    ("decode: K-copies loop / ours", "≥ 4"),
    ("decode: naive masking / ours", "≥ 12"),
    ("large batch: torch.mm / ours", "≥ 0.75"),
    ("tile masks (density ≤ 0.25): dense / ours", "≥ 2.5"),
    ("conv: ours / cuDNN", "≤ 1.3"),
)

VERSIONS_SCRIPT = r"""
import json, platform, subprocess, sys
info = {"python": sys.version.split()[0], "platform": platform.platform()}
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    gpu_memory_gib=round(p.total_memory / 2**30, 1))
except ImportError:
    info["torch"] = None
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
try:
    q = "name,driver_version,clocks.max.sm,clocks.max.mem"
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip() or None
except (OSError, subprocess.SubprocessError):
    info["nvidia_smi"] = None
try:
    info["nvcc"] = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[-1]
except (OSError, subprocess.SubprocessError, IndexError):
    info["nvcc"] = None
print(json.dumps(info))
"""


@dataclass(frozen=True)
class Step:
    """One command of the check. ``argv`` and ``dry_argv`` may use {python}, {out}, {work}."""

    name: str
    title: str
    argv: tuple[str, ...]
    budget_s: int
    dry_argv: tuple[str, ...] | None = None  # resolves the step on CPU (None: only `needs` is looked up)
    needs: tuple[str, ...] = ()  # executables that must be on PATH where the step really runs
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    name: str
    title: str
    command: str
    status: str  # ok | failed | timeout | skipped | resolved | unresolved | gpu-only (dry run: a tool only a GPU machine has)
    seconds: float = 0.0
    returncode: int | None = None
    detail: str = ""
    tail: str = ""


def steps() -> list[Step]:
    """The check, most important first: a budget that runs out cuts from the end."""
    sanitize = ("{work}/sanitize_gemv",)
    gpu_tests = ("{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TEST_FILES, "-m", "gpu or not gpu")
    rest = ("{python}", "-m", "pytest", "-q", "-p", "no:cacheprovider", "python_tests", *(f"--ignore={f}" for f in GPU_TEST_FILES))
    return [
        Step(
            "versions",
            "GPU, driver, torch, Triton, CUDA",
            ("{python}", "-c", VERSIONS_SCRIPT),
            30,
            dry_argv=("{python}", "-c", VERSIONS_SCRIPT),
        ),
        Step(
            "build",
            "build the C++/CUDA extensions",
            ("{python}", "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."),
            150,
            dry_argv=(
                "{python}",
                "-c",
                "import importlib.util as u, rtl_kernels._build; assert u.find_spec('setuptools') and u.find_spec('pip')",
            ),
            env={"MAX_JOBS": str(os.cpu_count() or 4)},
        ),
        Step(
            "gpu_tests",
            "GPU backends: Triton (routed, seeded, masked-delta), CUDA, bf16, CUDA graphs, torch.compile",
            gpu_tests,
            150,  # a cap: the check still ends at --budget; time this step takes is time later steps (tune, suite) lose
            dry_argv=(*gpu_tests, "--collect-only"),
        ),
        Step(
            "sanitizer_build",
            "build the compute-sanitizer harness",
            (
                "nvcc",
                "-std=c++17",
                "-O1",
                "-lineinfo",
                "-arch=sm_90",
                "-o",
                *sanitize,
                "csrc/cuda/sanitize_main.cu",
                "csrc/cuda/routed_gemv.cu",
            ),
            60,
            dry_argv=("nvcc", "-std=c++17", "-O0", "-arch=sm_90", "-c", "-o", "{work}/sanitize_main.o", "csrc/cuda/sanitize_main.cu"),
            needs=("nvcc",),
        ),
        *(
            Step(
                tool,
                f"compute-sanitizer {tool}, small shapes",
                ("compute-sanitizer", "--tool", tool, "--error-exitcode", "1", *sanitize),
                45,
                needs=("compute-sanitizer",),
            )
            for tool in ("memcheck", "racecheck")
        ),
        Step(
            "bench",
            "rtl-kernels bench --preset gpu (time-boxed)",
            (
                "{python}",
                "-m",
                "rtl_kernels",
                "bench",
                "--preset",
                "gpu",
                "--device",
                "cuda",
                "--time-budget",
                "110",
                "--no-progress",
                "--out",
                "{work}/bench",
            ),
            150,
            dry_argv=("{python}", "-m", "rtl_kernels", "bench", "--preset", "gpu", "--device", "cpu", "--list"),
        ),
        Step(
            "tune",
            "a short rtl-kernels tune",
            (
                "{python}",
                "-m",
                "rtl_kernels",
                "tune",
                "--linear",
                "4096:4096",
                "--rows",
                "16,1024",
                "--dtype",
                "bfloat16",
                "--kernels",
                "fwd,decode",
                "--max-candidates",
                "6",
                "--quiet",
                "--output-dir",
                "{work}/tune",
            ),
            60,
            dry_argv=("{python}", "-m", "rtl_kernels", "tune", "--help"),
        ),
        Step("suite", "the rest of python_tests on the GPU machine", rest, 150, dry_argv=(*rest, "--collect-only")),
    ]


def _expand(argv: tuple[str, ...], out: Path, work: Path) -> list[str]:
    values = {"{python}": sys.executable, "{out}": str(out), "{work}": str(work)}
    expanded = []
    for arg in argv:
        for key, value in values.items():
            arg = arg.replace(key, value)
        expanded.append(arg)
    return expanded


def _run(argv: list[str], timeout: float, env: dict[str, str], log) -> tuple[int | None, str, bool]:
    """Run in its own process group; returns (returncode, output, timed_out). Output also goes to ``log``."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
    try:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
    except OSError as exc:
        log.write(f"could not start: {exc}\n")
        return None, str(exc), False
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1.0))
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    log.write(output or "")
    log.flush()
    return proc.returncode, output or "", timed_out


def run_steps(out: Path, work: Path, *, dry_run: bool, budget_s: float, only: set[str] | None = None) -> list[Outcome]:
    """Run (or, with ``dry_run``, resolve) every step in order; nothing stops the ones after a failure."""
    deadline = time.monotonic() + budget_s
    outcomes = []
    with open(out / "gpu_check.log", "w") as log:
        for step in steps():
            if only is not None and step.name not in only:
                continue
            argv = step.dry_argv if dry_run else step.argv
            shown = " ".join(_expand(argv, out, work)) if argv else ""
            outcome = Outcome(step.name, step.title, shown if len(shown) < 400 else shown[:400] + " …", "skipped")
            outcomes.append(outcome)
            log.write(f"\n===== {step.name}: {step.title}\n$ {shown}\n")
            missing = [n for n in step.needs if shutil.which(n) is None]
            if missing:
                outcome.status = "gpu-only" if dry_run else "unresolved"
                outcome.detail = f"not on PATH here: {', '.join(missing)}" + (" (a GPU machine's tool)" if dry_run else "")
                log.write(outcome.detail + "\n")
                continue
            if argv is None:
                outcome.status = "resolved"
                outcome.detail = "found " + ", ".join(shutil.which(n) or n for n in step.needs)
                continue
            left = deadline - time.monotonic()
            if left < 5:
                outcome.detail = "the check's time budget was spent"
                log.write(outcome.detail + "\n")
                continue
            t0 = time.monotonic()
            env = {**step.env, **DRY_RUN_ENV} if dry_run else step.env
            code, output, timed_out = _run(_expand(argv, out, work), min(step.budget_s, left), env, log)
            outcome.seconds = round(time.monotonic() - t0, 1)
            outcome.returncode = code
            outcome.tail = output[-TAIL_CHARS:]
            if timed_out:
                outcome.status, outcome.detail = "timeout", f"killed after {outcome.seconds:.0f} s"
            elif code == 0:
                outcome.status = "resolved" if dry_run else "ok"
            else:
                outcome.status = "failed"
                outcome.detail = f"exit code {code}"
            log.write(f"----- {step.name}: {outcome.status} in {outcome.seconds:.1f} s {outcome.detail}\n")
    return outcomes


def _best(results: dict, prefix: str) -> float | None:
    times = [
        r["median_us"] for name, r in results.items() if name.startswith(prefix) and "median_us" in r and r.get("correct") is not False
    ]
    return min(times) if times else None


def target_figures(bench: dict | None) -> list[dict]:
    """Each target with the figure measured for it (None where the bench has no such case)."""
    found: dict[str, float] = {}
    for record in (bench or {}).get("cases", []):
        case, res = record["case"], record["results"]
        ours = _best(res, "rtl:")
        if ours is None:
            continue
        dense = res.get("dense_unmasked", {}).get("median_us")
        if case["op"] == "linear" and case["rows"] <= 16 and case["structure"] == "unstructured":
            roof = next((r.get("bw_time_us") for n, r in res.items() if n.startswith("rtl:") and r.get("median_us") == ours), None)
            if roof:
                found.setdefault("decode: time / HBM roofline", ours / roof)
            for key, base in (("decode: K-copies loop / ours", "copies_loop"), ("decode: naive masking / ours", "naive_eager")):
                t = res.get(base, {}).get("median_us")
                if t:
                    found.setdefault(key, t / ours)
        if case["op"] == "linear" and case["rows"] >= 4096 and dense:
            found.setdefault("large batch: torch.mm / ours", dense / ours)
        if case["op"] == "linear" and case["structure"] == "tile" and case["density"] <= 0.25 and dense:
            found.setdefault("tile masks (density ≤ 0.25): dense / ours", dense / ours)
        if case["op"] == "conv2d" and dense:
            found.setdefault("conv: ours / cuDNN", ours / dense)
    rows = []
    for name, goal in TARGETS:
        value = found.get(name)
        met = None
        if value is not None:
            bound = float(goal.split()[1])
            met = value <= bound if goal.startswith("≤") else value >= bound
        rows.append({"target": name, "goal": goal, "measured": value, "met": met})
    return rows


def _versions(outcomes: list[Outcome]) -> dict:
    for o in outcomes:
        if o.name == "versions" and o.status in ("ok", "resolved"):
            for line in reversed(o.tail.strip().splitlines()):
                try:
                    return json.loads(line)
                except json.JSONDecodeError:
                    continue
    return {}


def markdown(report: dict, bench_md: str | None) -> str:
    v = report["versions"]
    lines = [
        f"# GPU check: {v.get('gpu') or 'no GPU'} ({report['started'][:10]})" + (" — DRY RUN on CPU" if report["dry_run"] else ""),
        "",
        f"GPU {v.get('gpu')} (capability {v.get('capability')}, {v.get('sms')} SMs), nvidia-smi: {v.get('nvidia_smi')}; "
        f"torch {v.get('torch')} (CUDA {v.get('torch_cuda')}), Triton {v.get('triton')}, nvcc: {v.get('nvcc')}; Python {v.get('python')}.",
        f"Started {report['started']}, finished {report['finished']}; budget {report['budget_s']:g} s.",
        "",
        "| step | what | status | seconds | detail |",
        "|---|---|---|---|---|",
    ]
    for o in report["steps"]:
        lines.append(f"| {o['name']} | {o['title']} | {o['status']} | {o['seconds']:.1f} | {o['detail']} |")
    lines += ["", "## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        measured = "—" if t["measured"] is None else f"{t['measured']:.2f}"
        met = "—" if t["met"] is None else ("yes" if t["met"] else "no")
        lines.append(f"| {t['target']} | {t['goal']} | {measured} | {met} |")
    failed = [o for o in report["steps"] if o["status"] in ("failed", "timeout", "unresolved")]
    for o in failed:
        lines += ["", f"## {o['name']}: {o['status']} (last lines)", "", "```", o["tail"][-1500:].strip(), "```"]
    if bench_md:
        lines += ["", bench_md.strip()]
    return "\n".join(lines) + "\n"


def write_report(out: Path, outcomes: list[Outcome], *, dry_run: bool, started: str, budget_s: float, work: Path) -> dict:
    """Collect the bench and tune outputs into ``out`` and write report.json + report.md (at most MAX_FILES files)."""
    bench_doc = bench_md = None
    bench_dir = work / "bench"
    jsons = sorted(bench_dir.glob("*.json")) if bench_dir.is_dir() else []
    if jsons:
        bench_doc = json.loads(jsons[-1].read_text())
        stem = jsons[-1].stem
        shutil.copy(jsons[-1], out / "bench.json")
        for png in sorted(bench_dir.glob(f"{stem}-*.png"))[:2]:
            shutil.copy(png, out / f"bench-{png.name.removeprefix(stem + '-')}")
        md = bench_dir / f"{stem}.md"
        if md.is_file():
            bench_md = md.read_text().replace(f"]({stem}-", "](bench-").replace(f"({stem}.json)", "(bench.json)")
    tuned = sorted((work / "tune").glob("*.json")) if (work / "tune").is_dir() else []
    if tuned:
        shutil.copy(tuned[-1], out / "tune.json")
    report = {
        "schema": 1,
        "dry_run": dry_run,
        "started": started,
        "finished": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "budget_s": budget_s,
        "versions": _versions(outcomes),
        "steps": [asdict(o) for o in outcomes],
        "targets": target_figures(bench_doc),
        "bench_cases": len(bench_doc["cases"]) if bench_doc else 0,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(markdown(report, bench_md))
    files = [p for p in out.iterdir() if p.is_file()]
    if len(files) > MAX_FILES:
        raise RuntimeError(f"out: expected at most {MAX_FILES} files, wrote {len(files)}: {sorted(p.name for p in files)}")
    return report


def fake_bench(work: Path) -> None:
    """A minimal bench result in the bench's own format, so the dry run exercises the report writer."""
    rtl = {"median_us": 50.0, "bw_time_us": 45.0, "correct": True}
    doc = {
        "cases": [
            {"case": {"op": "linear", "rows": 16, "structure": "unstructured", "density": 0.2},
             "results": {"rtl:triton": rtl, "copies_loop": {"median_us": 250.0}, "naive_eager": {"median_us": 700.0},
                         "dense_unmasked": {"median_us": 40.0}}},
            {"case": {"op": "conv2d", "rows": 16, "structure": "unstructured", "density": 0.2},
             "results": {"rtl:triton": {"median_us": 120.0, "correct": True}, "dense_unmasked": {"median_us": 100.0}}},
        ]
    }  # fmt: skip
    (work / "bench").mkdir(parents=True, exist_ok=True)
    (work / "bench" / "fake.json").write_text(json.dumps(doc))
    (work / "bench" / "fake.md").write_text("### Kernel benchmarks: fake (dry run)\n\n[raw](fake.json)\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Build, test, sanitize and benchmark rtl_kernels on a GPU in one call (see the module docstring).",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="result folder, at most 8 files (default: $OUT/gpu_check or bench/results/gpu_check-DATE)"
    )
    p.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all steps together (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="on CPU: check that every step resolves and that the report writer works")
    p.add_argument("--only", default=None, help="comma-separated subset of steps: " + ",".join(s.name for s in steps()))
    args = p.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    out = args.out or (
        Path(os.environ["OUT"]) / "gpu_check" if os.environ.get("OUT") else ROOT / "bench" / "results" / f"gpu_check-{started:%Y%m%d-%H%M}"
    )
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        p.error(f"--out: expected an empty folder, got {out} with files in it")
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {s.name for s in steps()}
    if unknown:
        p.error(f"--only: expected step names among {[s.name for s in steps()]}, got {sorted(unknown)}")
    with tempfile.TemporaryDirectory(prefix="rtl-gpu-check-") as tmp:
        work = Path(tmp)
        outcomes = run_steps(out, work, dry_run=args.dry_run, budget_s=args.budget, only=only)
        if args.dry_run:
            fake_bench(work)
        report = write_report(out, outcomes, dry_run=args.dry_run, started=started.isoformat(), budget_s=args.budget, work=work)
    for o in report["steps"]:
        print(f"{o['name']:<16} {o['status']:<10} {o['seconds']:>6.1f} s  {o['detail']}")
    for t in report["targets"]:
        shown = "—" if t["measured"] is None else f"{t['measured']:.2f}"
        print(f"target {t['target']:<44} {t['goal']:<7} measured {shown}")
    print(f"report: {out / 'report.md'}")
    bad = {"failed", "timeout"} | ({"unresolved"} if not args.dry_run else set())
    return 1 if any(o.status in bad for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
