"""Routed BatchNorm in a pipeline run (recipe routed_bn / recalibrate_bn) and the one-call RoutedModel save in model/."""

import json
import shutil

import pytest
import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.nn import RTLBatchNorm1d
from rtl_kernels.pipeline import Recipe, Run
from rtl_kernels.pipeline.training import predict
from rtl_kernels.serve.loading import load_served_model
from rtl_kernels.zoo import MODELS, register_model

pytest.importorskip("sklearn")
pytestmark = pytest.mark.usefixtures("one_thread")


def bn_mlp(*, in_features, num_classes, hidden):
    return nn.Sequential(nn.Linear(in_features, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, num_classes))


@pytest.fixture
def bn_model():
    register_model("bn_mlp", bn_mlp)
    yield "bn_mlp"
    MODELS.pop("bn_mlp")


def ticket_rounds(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("stage") == "tickets" and "ticket" in r]


def test_routed_and_recalibrated_bn_reuse_the_tickets_and_save_one_routed_model(bn_model, tmp_path, capsys):
    base = Recipe(
        model=bn_model, num_tickets=3, sparsities=(0.5,), prune_fraction=0.5, epochs_per_round=1, retrain_epochs=1,
        batch_size=64, baselines=False, router="centroid",
    )  # fmt: skip
    shared = Run(base, tmp_path, progress=False).execute()
    searched = len(ticket_rounds(tmp_path))
    routed_recipe = base.replace(routed_bn=True)
    routed_run = Run(routed_recipe, tmp_path, progress=False)
    routed = routed_run.execute()
    assert routed_recipe.digest() == base.digest() and len(ticket_rounds(tmp_path)) == searched, "tickets reused"
    assert len(list(tmp_path.glob("retrain-*"))) == 2
    saved = rtl.models.io.read_metadata(tmp_path / "model")
    assert set(saved["norms"]) == {"1"} and (tmp_path / "model" / "router.json").is_file()
    recal_recipe = base.replace(recalibrate_bn=True)
    recal_run = Run(recal_recipe, tmp_path, progress=False)
    recal = recal_run.execute()
    assert len(list(tmp_path.glob("retrain-*"))) == 2, "recalibration is an eval setting: shared BN's retraining is reused"
    assert len(list(tmp_path.glob("router-*"))) == 1, "the router is keyed by the router setting alone"
    for report in (shared, routed, recal):
        assert {r["method"] for r in report["rows"]} >= {"rtl", "rtl_oracle"}
    deployed = recal_run.load_deployed()
    bn = deployed.model[1]
    assert isinstance(bn, RTLBatchNorm1d) and not deployed.training and deployed.router is not None
    # each ticket's statistics are those of its own training subset, through the first layer
    for k, subset in enumerate(recal_run.subsets):
        x = torch.stack([subset[i][0] for i in range(len(subset))])
        with torch.no_grad(), rtl.routing(deployed.model, k):
            h = deployed.model[0](x.float())
        torch.testing.assert_close(bn.running_mean[k], h.mean(0), rtol=1e-3, atol=1e-4)
    x_test = recal_run.test.tensors[0]
    routes = deployed.router(x_test)
    with torch.no_grad():
        assert torch.equal(deployed(x_test), predict(deployed.model, recal_run.test, routes))
    served = load_served_model(tmp_path)
    assert isinstance(served.model[1], RTLBatchNorm1d) and served.router is not None
    with torch.no_grad():
        assert torch.equal(served(x_test), deployed(x_test))
    from rtl_kernels.cli.main import main

    capsys.readouterr()
    assert main(["info", str(tmp_path)]) == 0
    assert "BatchNorm running statistics per ticket (routed): 1" in capsys.readouterr().out
    # a run directory from before one-call saves: the router in model/router/ is still found
    for name in ("router.json", "router.safetensors"):
        (tmp_path / "model" / "router").mkdir(exist_ok=True)
        shutil.move(tmp_path / "model" / name, tmp_path / "model" / "router" / name)
    assert recal_run.load_deployed().router is not None and load_served_model(tmp_path).router is not None


def test_max_train_takes_a_seeded_subset_of_every_class(tmp_path):
    recipe = Recipe(max_train=100, num_tickets=5, sparsities=(0.5,), epochs_per_round=1, retrain_epochs=1, baselines=False)
    run = Run(recipe, tmp_path, progress=False)
    labels = run.train.tensors[1]
    assert len(labels) == 100 and len(labels.unique()) == 10
    assert torch.equal(Run(recipe, tmp_path, progress=False).train.tensors[0], run.train.tensors[0])
