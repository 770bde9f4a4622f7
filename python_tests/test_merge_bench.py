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
    timing = {"date": result["date"], "bench_model": result["latency_s"], "synthetic_model": result["latency_synthetic_s"], "clock": "cpu"}
    timing.update(synthetic_hidden=result["latency_synthetic_hidden"], load_1min_start=1.0, load_1min_end=2.0)
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


def test_sparse_fine_tuning_moves_only_its_support():
    torch = pytest.importorskip("torch")
    bench = _bench()
    from rtl_kernels.zoo.mlp import MLP

    torch.manual_seed(0)
    x, y = torch.rand(64, 16), torch.randint(0, 4, (64,))
    base = MLP(16, 4, 8).eval()
    args = bench.parse_args(["--expert-density", "0.25", "--expert-epochs", "2"])
    dense = bench.train(bench.copy.deepcopy(base), x, y, 2, 1e-2, seed=1)
    sparse = bench.sparse_refit(base, dense, x, y, args, seed=1)
    base_params = dict(base.named_parameters())
    for key, p in sparse.named_parameters():
        moved = int((p != base_params[key]).sum())
        assert 0 < moved <= round(0.25 * p.numel()), key
