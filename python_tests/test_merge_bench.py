"""bench/merge_bench.py's whole code path on its tiny --quick configuration, so the committed bench cannot rot."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
BENCH = Path(__file__).resolve().parents[1] / "bench" / "merge_bench.py"


def _bench():
    spec = importlib.util.spec_from_file_location("merge_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["merge_bench"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_quick_merge_bench_runs_end_to_end_and_writes_its_results(tmp_path):
    bench = _bench()
    result = bench.main(["--quick", "--out", str(tmp_path)])
    stem = tmp_path / f"merge_{bench.slug(result['machine']['cpu'])}_{result['date'][:10]}"
    assert json.loads(stem.with_suffix(".json").read_text())["tasks"] == result["tasks"]
    assert "## Storage" in stem.with_suffix(".md").read_text()
    k = len(result["tasks"])
    for label, accs in result["accuracy"].items():
        assert len(accs) == k and all(0.0 <= a <= 1.0 for a in accs), label
    s = result["storage"]
    # flat masks: base + delta + exactly K bits per parameter; only the K scales on top
    assert s["ratio_without_scales"] <= s["target_ratio"] and s["scales_bytes"] == 4 * k
    assert s["routed_merged_saved_bytes"] < s["routed_merged_in_memory_bytes"]
    for rows in ("16", "256"):
        assert set(result["latency_s"][rows]) == {"routed", "separate", "rebuild"}
        assert all(v > 0 for v in result["latency_s"][rows].values())
    assert set(result["targets"]) >= {"routed TALL mean >= 0.98 x experts", "16 rows: routed >= 3x faster than separate experts"}
    # the split form: an accuracy run without latency joined with a --latency-only run
    acc = {key: value for key, value in result.items() if not key.startswith("latency")}
    acc["targets"] = {key: v for key, v in result["targets"].items() if "rows" not in key}
    timing = {"date": result["date"], "bench_model": result["latency_s"], "wide_model": result["latency_wide_s"], "clock": "cpu"}
    timing.update(wide_hidden=result["latency_wide_hidden"], load_1min_start=1.0, load_1min_end=2.0)
    (tmp_path / "acc.json").write_text(json.dumps(acc))
    (tmp_path / "lat.json").write_text(json.dumps(timing))
    joined = bench.main(["--render", str(tmp_path / "acc.json"), str(tmp_path / "lat.json"), "--out", str(tmp_path / "joined")])
    assert joined["targets"] == result["targets"] and "--latency-only run" in joined["latency_source"]
    assert (tmp_path / "joined" / stem.with_suffix(".md").name).is_file()


def test_every_task_transform_keeps_the_shape_and_the_splits_are_stratified():
    torch = pytest.importorskip("torch")
    bench = _bench()
    x = torch.rand(5, 64)
    for tasks in bench.TASK_SETS.values():
        for name in tasks:
            out = bench.transform(name, x, 8)
            assert out.shape == x.shape and not torch.equal(out, x), name
    y = torch.arange(40) % 4
    order = bench.interleaved_classes(y.sort().values, seed=0)
    assert sorted(order.tolist()) == list(range(40))
    assert torch.bincount(y.sort().values[order][:8]).tolist() == [2, 2, 2, 2]
