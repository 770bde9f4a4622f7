"""Resumable runs on the digits: an interrupted run resumes to the same result; RTL vs single-mask IMP quality."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rtl_kernels.pipeline import Recipe, Run

pytest.importorskip("sklearn")

RECIPE = Recipe(hidden=32, sparsities=(0.5, 0.75), prune_fraction=0.5, epochs_per_round=2, retrain_epochs=3, lr=3e-3, one_vs_rest=True)


pytestmark = pytest.mark.usefixtures("one_thread")


class Interrupt(Exception):
    pass


class FlakyRun(Run):
    """Dies at the n-th metrics record of a given stage (like a kill between two saves)."""

    fail_stage = "tickets"
    fail_after = 3

    def log(self, record):
        super().log(record)
        if record.get("stage") == self.fail_stage and (self.fail_stage != "tickets" or "ticket" in record):
            self.fail_after -= 1
            if self.fail_after == 0:
                raise Interrupt


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("full")
    return out, Run(RECIPE, out, progress=False).execute()


def test_quality_rtl_not_below_single_mask_imp(full_run):
    _, report = full_run
    by = {(round(r["sparsity"], 2), r["method"]): r for r in report["rows"]}
    for s in (0.5, 0.75):
        assert by[(s, "rtl_oracle")]["balanced_accuracy"] >= by[(s, "single")]["balanced_accuracy"]
        assert by[(s, "rtl_oracle")]["balanced_accuracy"] > 0.8
        assert by[(s, "rtl")]["balanced_accuracy"] > 0.6, "routes from the learned router"
        assert by[(s, "single")]["params"] < by[(s, "rtl")]["params"] < by[(s, "multi")]["params"]
    assert "ovr_balanced_accuracy" in by[(0.5, "rtl_oracle")]
    assert report["rows"][0]["method"] == "dense" and report["rows"][0]["balanced_accuracy"] > 0.8
    assert 0.5 < report["router"]["test_accuracy"] <= 1.0 and report["router"]["chosen"] in ("centroid", "linear", "mlp")


def test_run_directory_contents(full_run):
    out, report = full_run
    for name in (
        "recipe.json",
        "init.safetensors",
        "metrics.jsonl",
        "report.json",
        "table.txt",
        "model/rtl.json",
        "tickets/summary.json",
        "tickets.json",
        "model/router.json",
    ):
        assert (out / name).is_file(), name
    assert len(list(out.glob("retrain-*/s50-*/eval-*.json"))) == 1
    assert len(list(out.glob("retrain-*/dense/rtl.json"))) == 1
    from rtl_kernels.routers import load_router

    router = load_router(out / "model")  # model and router in one rtl.save of a RoutedModel
    assert router is not None and router.num_tickets == RECIPE.num_tickets
    assert not (out / "model" / "router").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"tickets", "retrain", "router", "eval"}
    assert [h["sparsity"] for h in report["similarity_history"]] == [0.5, 0.75]
    assert len(list((out / "tickets").glob("round_*/ticket_*.safetensors"))) == 2 * RECIPE.num_tickets


def test_resume_after_interruptions_matches_uninterrupted(full_run, tmp_path):
    """Killed mid-search, then killed mid-retraining, then resumed: same tickets, models and metrics."""
    full_dir, full_report = full_run
    for stage, after in (("tickets", 4), ("retrain", 7)):
        flaky = FlakyRun(RECIPE, tmp_path, progress=False)
        flaky.fail_stage, flaky.fail_after = stage, after
        with pytest.raises(Interrupt):
            flaky.execute()
        assert not (tmp_path / "report.json").exists()
    report = Run(RECIPE, tmp_path, progress=False).execute()
    assert report["rows"] == full_report["rows"]
    for path in sorted(full_dir.glob("retrain-*/**/*.safetensors")) + sorted(full_dir.glob("tickets/**/*.safetensors")):
        a, b = load_file(str(path)), load_file(str(tmp_path / path.relative_to(full_dir)))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path


def test_different_recipe_in_same_directory_is_an_error(full_run):
    out, _ = full_run
    with pytest.raises(ValueError, match=r"different recipe \(changed ticket settings: \['seed'\]\)"):
        Run(RECIPE.replace(seed=5), out, progress=False)


def _ticket_records(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["method"], r["round"], r["ticket"]) for r in records if r.get("stage") == "tickets" and "ticket" in r]


def test_changed_downstream_settings_reuse_finished_tickets(full_run, tmp_path):
    """Per-stage keys: retraining/eval settings and added levels keep the directory and every finished ticket round."""
    import shutil

    out, _ = full_run
    work = tmp_path / "copy"
    shutil.copytree(out, work)
    searched = len(_ticket_records(work))
    changed = RECIPE.replace(retrain_epochs=1, router="centroid", one_vs_rest=False)
    assert changed.digest() == RECIPE.digest() and changed.stage_digest("retrain") != RECIPE.stage_digest("retrain")
    report = Run(changed, work, progress=False).execute()
    assert len(_ticket_records(work)) == searched, "no ticket was searched again"
    assert report["router"]["chosen"] == "centroid"
    assert len(list(work.glob("retrain-*"))) == 2
    more = RECIPE.replace(sparsities=(0.5, 0.75, 0.875))
    Run(more, work, progress=False).execute(until="tickets")
    new = _ticket_records(work)[searched:]
    assert {r for _, r, _ in new} == {2}, "only the added round is searched"
