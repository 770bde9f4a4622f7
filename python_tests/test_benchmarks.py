"""The benchmark harness itself: case expansion, data generation, byte/FLOP formulas, approaches, reports.

No timing assertions: runs use tiny shapes and a near-zero time budget.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rtl_kernels.benchmarks.baselines import Unsupported, approach_factories, backend_names, excluded_backend_reason, make_bsr_loop
from rtl_kernels.benchmarks.cases import PRESETS, Case, build_cases, parse_shape
from rtl_kernels.benchmarks.machine import device_slug, slug
from rtl_kernels.benchmarks.problem import build_problem, reference_rows, relative_error, sample_masks, sample_routes
from rtl_kernels.benchmarks.report import markdown, speedup_cell, write_report
from rtl_kernels.benchmarks.roofline import Geometry, approach_bytes, approach_flops, geometry
from rtl_kernels.benchmarks.runner import RunConfig, run_benchmark
from rtl_kernels.benchmarks.timing import TimerConfig, summarize, time_interleaved, time_rotating
from rtl_kernels.cli.main import main

CPU = torch.device("cpu")
FAST = TimerConfig(warmup_s=0.0, min_time_s=0.0, min_repeats=2, max_repeats=2)


def small_case(**kw) -> Case:
    base = dict(
        op="linear", shape="64x96", rows=24, tickets=4, density=0.5, structure="tile", routing="uniform", dtype="float32", tile=(16, 16)
    )
    base.update(kw)
    return Case(**base)


# --- cases ------------------------------------------------------------------------------------


def test_quick_preset_sweeps_each_axis_around_the_base():
    cases = build_cases("quick")
    keys = [c.key() for c in cases]
    assert len(keys) == len(set(keys))
    quick = PRESETS["quick"]
    for axis in ("tickets", "density", "routing", "dtype"):
        seen = {getattr(c, axis) for c in cases if c.op == "linear"}
        assert seen == set(quick.values[axis]), axis
    linear_rows = {c.rows for c in cases if c.op == "linear"}
    assert linear_rows == set(quick.values["rows"])
    assert {c.rows for c in cases if c.op == "conv2d"} == set(quick.conv_rows)
    # away from the rows sweep every linear case sits at the base row count
    assert all(c.rows == quick.base["rows"] for c in cases if c.op == "linear" and c.tickets != quick.base["tickets"])


def test_overrides_and_grid():
    cases = build_cases("quick", {"op": ["linear"], "rows": [1, 8], "tickets": [2], "dtype": ["float32"]})
    assert {c.tickets for c in cases} == {2}
    assert {c.rows for c in cases} == {1, 8}
    grid = build_cases(
        "quick",
        {
            "op": ["linear"],
            "rows": [1, 8],
            "tickets": [2, 4],
            "density": [0.5],
            "structure": ["tile"],
            "routing": ["one"],
            "dtype": ["float32"],
        },
        grid=True,
    )
    assert len(grid) == 4
    conv = build_cases("quick", {"op": ["conv2d"], "rows": [2, 3]}, conv_shape="8x8x8x3", tile=(8, 8))
    assert {c.rows for c in conv} == {2, 3} and {c.shape for c in conv} == {"8x8x8x3"} and conv[0].tile == (8, 8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"routing": ["bogus"]}, "routing"), ({"density": [1.5]}, "density"), ({"rows": [0]}, "rows"), ({"nope": [1]}, "overrides")],
)
def test_bad_overrides_name_the_axis(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_cases("quick", overrides)


def test_bad_preset_and_shape():
    with pytest.raises(ValueError, match="preset"):
        build_cases("huge")
    with pytest.raises(ValueError, match="shape"):
        parse_shape("linear", "64x64x3")
    assert parse_shape("conv2d", "3x8x16x5").padding == 2


# --- data -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "zipf", "one", "distinct"])
def test_routes_distributions(kind):
    gen = torch.Generator().manual_seed(1)
    routes = sample_routes(kind, 4000, 8, gen)
    assert routes.dtype == torch.int64 and routes.shape == (4000,)
    assert int(routes.min()) >= 0 and int(routes.max()) < 8
    counts = torch.bincount(routes, minlength=8)
    if kind == "one":
        assert counts[0] == 4000
    elif kind == "distinct":
        assert counts.tolist() == [500] * 8
        assert torch.unique(sample_routes(kind, 5, 8, gen)).numel() == 5
    elif kind == "zipf":
        assert counts[0] > 2 * counts[7]
    else:
        assert int(counts.min()) > 350


def test_tile_masks_are_whole_tiles_and_density_is_close():
    gen = torch.Generator().manual_seed(0)
    masks = sample_masks("tile", 3, 64, 96, 0.25, (16, 32), gen)
    tiles = masks.reshape(3, 4, 16, 3, 32)
    per_tile = tiles.sum((2, 4))
    assert bool(((per_tile == 0) | (per_tile == 16 * 32)).all())
    unstructured = sample_masks("unstructured", 2, 256, 256, 0.2, (16, 16), gen)
    assert abs(float(unstructured.float().mean()) - 0.2) < 0.01


def test_problem_reference_matches_a_float64_loop():
    problem = build_problem(small_case(routing="zipf"), CPU, rotations=3)
    assert len(problem.inputs) == 3
    n, ref = reference_rows(problem)
    x, routes = problem.inputs[0]
    w = problem.weight.double()
    for i in range(n):
        expect = x[i].double() @ (w * problem.masks[routes[i]]).T + problem.bias.double()
        assert torch.allclose(ref[i], expect)
    assert relative_error(ref, ref) == 0.0


# --- roofline ---------------------------------------------------------------------------------


def test_byte_and_flop_formulas():
    g = Geometry(
        rows=16,
        elem_size=2,
        weight_elems=4096 * 4096,
        in_elems=4096,
        out_elems=4096,
        macs_per_row=4096 * 4096,
        active_tickets=8,
        mask_bytes_per_ticket=4096 * 4096 // 8,
    )
    w = 2 * 4096 * 4096
    act = 2 * 16 * (4096 + 4096)
    assert approach_bytes("dense", g) == w + act
    assert approach_bytes("fused", g) == w + 8 * w / 16 + act + 8 * 16
    assert approach_bytes("copies", g) == approach_bytes("grouped", g) == 8 * w + 3 * act + 8 * 16
    assert approach_bytes("naive", g) == 8 * (3.5 * w + 8 * 16) + 3 * act
    assert approach_bytes("per_row", g) == 8 * w + act + 8 * 16
    # the design note's worked example: fused ~48 MiB, K copies ~256 MiB
    assert approach_bytes("fused", g) / 2**20 == pytest.approx(48.5, abs=0.5)
    assert approach_bytes("copies", g) / 2**20 == pytest.approx(256.8, abs=0.5)
    assert approach_flops("fused", g) == approach_flops("dense", g) == 2 * 16 * 4096 * 4096
    with pytest.raises(ValueError, match="kind"):
        approach_bytes("magic", g)


def test_geometry_of_a_tile_problem_counts_bsr_blocks():
    problem = build_problem(small_case(routing="one", density=0.5), CPU)
    g = geometry(problem)
    assert g.active_tickets == 1 and g.weight_elems == 64 * 96
    kept = int(problem.masks[0].sum())
    assert g.bsr_macs == 24 * kept
    assert g.bsr_bytes_active == pytest.approx(4 * kept + 8 * (kept / 256 + 64 / 16 + 1))
    conv = geometry(build_problem(small_case(op="conv2d", shape="4x6x8x3", rows=3, structure="unstructured"), CPU))
    assert conv.macs_per_row == 6 * 64 * 4 * 9 and conv.in_elems == 4 * 64


# --- approaches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["linear", "conv2d"])
def test_every_approach_is_correct_or_skipped_with_a_reason(op):
    shape = "64x96" if op == "linear" else "4x6x8x3"
    problem = build_problem(small_case(op=op, shape=shape, rows=10 if op == "conv2d" else 24), CPU)
    n, ref = reference_rows(problem)
    factories, _ = approach_factories(CPU)
    factories.pop("naive_compiled")  # compiling takes seconds; covered by the tiny run below
    ran = set()
    for name, make in factories.items():
        with torch.inference_mode():
            try:
                approach = make(problem)
            except Unsupported as exc:
                assert str(exc)
                continue
            out = approach.fn(*problem.inputs[1 % len(problem.inputs)])
            out0 = approach.fn(*problem.inputs[0])
        assert out.dtype == torch.float32
        assert approach.footprint_bytes > 0
        if approach.kind != "dense":
            assert relative_error(out0[:n], ref) < 1e-5, name
        ran.add(name)
    expected = {"naive_eager", "per_row_loop", "copies_loop", "dense_unmasked"} | (
        {"grouped_mm", "bsr_loop"} if op == "linear" and hasattr(torch, "_grouped_mm") else set()
    )
    assert expected <= ran


def test_footprints_follow_storage():
    problem = build_problem(small_case(), CPU)
    factories, _ = approach_factories(CPU)
    s, e, k = 4, 64 * 96, 4
    assert factories["copies_loop"](problem).footprint_bytes == k * s * e + s * 64
    assert factories["naive_eager"](problem).footprint_bytes == s * e + k * e + s * 64
    assert factories["rtl:reference"](problem).footprint_bytes == s * e + s * 64 + k * 64 * 3 * 4
    assert factories["dense_unmasked"](problem).footprint_bytes == s * e + s * 64


def test_bsr_refuses_unstructured_masks():
    with pytest.raises(Unsupported, match="unstructured"):
        make_bsr_loop(build_problem(small_case(structure="unstructured"), CPU))


def test_interpreted_triton_is_never_timed():
    timed, excluded = backend_names(CPU)
    assert "reference" in timed and "triton" not in timed
    if "triton" in excluded:
        assert "interpreter" in excluded["triton"]
        assert excluded_backend_reason("triton", CPU) is not None
    assert excluded_backend_reason("reference", CPU) is None


# --- timing -------------------------------------------------------------------------------------


def test_timer_rotates_inputs_and_summarizes():
    seen = []
    timing = time_rotating(
        lambda i: seen.append(i), [(0,), (1,), (2,)], CPU, TimerConfig(warmup_s=0.0, min_time_s=0.0, min_repeats=7, max_repeats=7)
    )
    assert timing.repeats == 7
    assert set(seen) == {0, 1, 2} and seen[:6] == [0, 1, 2, 0, 1, 2]
    calls = {"a": 0, "b": 0}
    order = []

    def counter(name):
        def fn(_):
            calls[name] += 1
            order.append(name)

        return fn

    cfg = TimerConfig(warmup_s=0.0, min_time_s=0.0, min_repeats=8, max_repeats=8, rounds=4)
    timings = time_interleaved({"a": counter("a"), "b": counter("b")}, [(0,), (1,)], CPU, cfg)
    assert timings["a"].repeats == timings["b"].repeats == 8
    measured = order[8:]  # after two warm-up passes of 2 + 2 calls each
    assert measured == (["a", "a", "b", "b"] * 4)  # interleaved rounds of 2 calls
    cpu_clock = time_interleaved(
        {"a": counter("a")}, [(0,)], CPU, TimerConfig(warmup_s=0.0, min_time_s=0.0, min_repeats=3, max_repeats=3, clock="cpu")
    )
    assert cpu_clock["a"].method == "process_time" and cpu_clock["a"].repeats == 3
    flushed = time_rotating(
        lambda i: None, [(0,)], CPU, TimerConfig(warmup_s=0.0, min_time_s=0.0, min_repeats=2, max_repeats=2, cpu_flush_bytes=1 << 16)
    )
    assert flushed.method == "perf_counter+cacheflush"
    with pytest.raises(ValueError, match="clock"):
        time_interleaved({"a": counter("a")}, [(0,)], CPU, TimerConfig(clock="sundial"))
    s = summarize([3.0, 1.0, 2.0, 10.0, 4.0], "x")
    assert s.median_s == 3.0 and s.min_s == 1.0 and s.p90_s == 10.0 and s.p10_s == 1.0
    with pytest.raises(ValueError, match="inputs"):
        time_rotating(lambda: None, [], CPU)


def test_slugs():
    assert slug("Intel(R) Xeon(R) Processor") == "intel-xeon-processor"
    assert device_slug({"cpu_model": "AMD EPYC 7B13", "cpu_count": 2}) == "cpu-amd-epyc-7b13-2c"
    assert device_slug({"gpu_name": "NVIDIA H100 80GB HBM3", "cpu_model": "x", "cpu_count": 1}) == "nvidia-h100-80gb-hbm3"


# --- a tiny end-to-end run --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_doc():
    config = RunConfig(
        preset="quick",
        overrides={
            "op": ["linear"],
            "shape": ["32x64"],
            "rows": [2, 8],
            "tickets": [2],
            "density": [0.5, 0.25],
            "structure": ["tile"],
            "routing": ["uniform"],
            "dtype": ["float32"],
        },
        timer=FAST,
        rotations=2,
        copy_bytes=1 << 20,
        matmul_size=64,
        tile=(16, 16),
        approaches=["rtl:reference", "naive_eager", "copies_loop", "bsr_loop", "dense_unmasked"],
    )
    return run_benchmark(config, command="test")


def test_tiny_run_document(tiny_doc):
    assert tiny_doc["versions"]["torch"] == torch.__version__
    assert tiny_doc["machine"]["cpu_model"]
    assert tiny_doc["probes"]["bandwidth_Bps"] > 0 and tiny_doc["probes"]["matmul_flops"]["float32"] > 0
    assert len(tiny_doc["cases"]) == 3  # rows 2, 8 at density 0.5, then density 0.25 at rows 2 (quick sweeps)
    for rec in tiny_doc["cases"]:
        assert list(rec["results"]) == tiny_doc["approaches"]
        for name, r in rec["results"].items():
            if "skipped" in r:
                continue
            assert r["median_us"] > 0 and r["bytes"] > 0 and r["flops"] > 0
            assert math.isclose(r["pct_bw_roofline"], 100 * r["bw_time_us"] / r["median_us"], rel_tol=1e-9)
            assert r["correct"] in (True, None), name


def test_report_files(tiny_doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = write_report(tiny_doc, Path("bench/results"), plots=True)
    data = json.loads(paths["json"].read_text())
    assert data["cases"][0]["key"] == tiny_doc["cases"][0]["key"]
    text = paths["markdown"].read_text()
    assert "| op | shape | rows | K | K_act |" in text and "rtl:reference" in text and "**" in text
    assert paths["latest"].read_text().count("### Kernel benchmarks") == 1
    assert paths["markdown"].name.startswith("cpu-")
    stem = paths["json"].stem
    assert f"({stem}.json)" in text  # the per-run report links next to itself
    assert f"(bench/results/{stem}.json)" in paths["latest"].read_text()  # LATEST links from the repository root
    if "time_vs_rows" in paths:  # matplotlib installed
        assert paths["time_vs_rows"].stat().st_size > 0 and paths["speedup_vs_density"].stat().st_size > 0
        assert f"](bench/results/{paths['time_vs_rows'].name})" in paths["latest"].read_text()
    again = write_report(tiny_doc, Path("bench/results"), plots=False)
    assert again["json"].name == f"{stem}-2.json" and f"({stem}-2.json)" in again["markdown"].read_text()
    assert paths["json"].is_file()


def test_report_without_matplotlib(tiny_doc, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpl(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    paths = write_report(tiny_doc, tmp_path)
    assert paths["json"].is_file() and paths["markdown"].is_file()
    assert not list(tmp_path.glob("*.png"))


def test_markdown_marks_wrong_and_skipped(tiny_doc):
    doc = json.loads(json.dumps(tiny_doc))
    rec = doc["cases"][0]
    rec["results"]["naive_eager"]["correct"] = False
    rec["results"]["copies_loop"] = {"skipped": "because"}
    text = markdown(doc)
    assert "✗" in text and "`copies_loop`: because (1 case)" in text
    doc["machine"]["load_average"] = [99.0, 99.0]
    assert "Busy machine" in markdown(doc)


def test_speedup_cell_compares_fastest_correct_entries():
    def r(us, correct=True):
        return {"median_us": us, "correct": correct}

    results = {
        "rtl:a": r(10.0),
        "rtl:b": r(5.0, False),
        "naive_eager": r(30.0),
        "copies_loop": r(20.0),
        "dense_unmasked": {"median_us": 1.0, "correct": None},
    }
    assert speedup_cell(results) == "2.00x"
    assert speedup_cell({"naive_eager": r(3.0)}) == "—"


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_list_and_help(capsys, keep_threads):
    assert main(["bench", "--list", "--op", "linear", "--rows", "4", "--tickets", "2"]) == 0
    out = capsys.readouterr().out
    assert "naive_eager" in out and "M=4/K=2" in out
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--preset" in capsys.readouterr().out
    assert main(["bench", "--list", "--routing", "sideways"]) == 1
    assert main(["bench", "--list", "--clock", "cpu", "--threads", "2"]) == 1


def test_an_approach_failing_while_timed_is_recorded_not_fatal():
    from rtl_kernels.benchmarks.baselines import Approach, make_dense, make_naive_eager
    from rtl_kernels.benchmarks.runner import run_case

    def make_flaky(problem):
        good = make_naive_eager(problem)
        calls = {"n": 0}

        def fn(x, routes):
            calls["n"] += 1
            if calls["n"] > 1:
                raise RuntimeError("out of memory (simulated)")
            return good.fn(x, routes)

        return Approach("flaky", "naive", fn, good.footprint_bytes)

    config = RunConfig(timer=FAST, rotations=2)
    probes = {"bandwidth_Bps": 1e9, "matmul_flops": {"float32": 1e9}}
    record = run_case(small_case(), {"flaky": make_flaky, "dense_unmasked": make_dense}, config, probes)
    assert record["results"]["flaky"]["skipped"].startswith("failed here: RuntimeError: out of memory")
    assert record["results"]["dense_unmasked"]["median_us"] > 0
