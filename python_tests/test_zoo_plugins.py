"""Model registry and plug-ins: built-in names (LeNet-300-100, the MNIST CNN), 'module:factory' specs, clear errors."""

import sys
import textwrap

import pytest
import torch

from rtl_kernels.pipeline import Recipe, packaged_recipe
from rtl_kernels.zoo import MODELS, build_model, register_model


def test_builtin_models():
    lenet = build_model("lenet300", in_features=784, num_classes=10)
    assert sum(m.weight.numel() for m in lenet.modules() if isinstance(m, torch.nn.Linear)) == 266_200
    cnn = build_model("cnn", in_features=784, num_classes=10)
    assert cnn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert {"mlp", "lenet300", "cnn", "ghostnet"} <= set(MODELS)
    recipe = packaged_recipe("mnist")
    assert (recipe.dataset, recipe.model, recipe.lr, recipe.batch_size) == ("mnist", "lenet300", 0.0012, 60)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_rtl_plugin.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch.utils.data import TensorDataset

            def tiny(*, in_features, num_classes, hidden):
                return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_features, num_classes))

            def wide(*, in_features, num_classes, hidden):
                return torch.nn.Sequential(torch.nn.Linear(in_features, 40), torch.nn.ReLU(), torch.nn.Linear(40, num_classes))

            def data(*, seed, data_dir, max_train):
                g = torch.Generator().manual_seed(seed)
                x = torch.randn(40, 6, generator=g)
                y = torch.arange(40) % 4
                return TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:])

            not_callable = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_rtl_plugin"
    sys.modules.pop("my_rtl_plugin", None)


def test_plugin_model_and_errors(plugin_module):
    model = build_model(f"{plugin_module}:tiny", in_features=6, num_classes=4)
    assert model(torch.randn(3, 6)).shape == (3, 4)
    with pytest.raises(ValueError, match="model: expected one of"):
        build_model("resnet", in_features=6, num_classes=4)
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod'"):
        build_model("no_such_mod:f", in_features=6, num_classes=4)
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        build_model(f"{plugin_module}:missing", in_features=6, num_classes=4)
    with pytest.raises(TypeError, match="to be callable"):
        build_model(f"{plugin_module}:not_callable", in_features=6, num_classes=4)
    with pytest.raises(ValueError, match=r"recipe.model: expected one of .* or a plug-in 'module:factory'"):
        Recipe(model="resnet")
    register_model("tiny2", lambda **kw: torch.nn.Linear(kw["in_features"], kw["num_classes"]))
    try:
        assert isinstance(build_model("tiny2", in_features=6, num_classes=4), torch.nn.Linear)
    finally:
        MODELS.pop("tiny2")


def test_plugin_data_and_model_in_a_run_and_the_coverage_guard(plugin_module, tmp_path):
    from rtl_kernels.pipeline import Run

    recipe = Recipe(
        dataset=f"{plugin_module}:data", model=f"{plugin_module}:wide", ignore=("0",), num_tickets=2, sparsities=(0.5,),
        prune_fraction=0.5, epochs_per_round=1, retrain_epochs=1, batch_size=8, baselines=False, router="centroid",
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"RTL layers hold only 36\.0% of the model's parameters"):
        with pytest.raises(ValueError, match="allow_low_coverage"):
            Run(recipe, tmp_path / "refused", progress=False)
    with pytest.warns(UserWarning, match="RTL layers hold only"):
        report = Run(recipe.replace(allow_low_coverage=True), tmp_path / "run", progress=False).execute()
    assert {r["method"] for r in report["rows"]} == {"rtl", "rtl_entropy", "rtl_oracle"}
    with pytest.raises(ValueError, match=r"recipe\.dataset: expected one of"):
        Recipe(dataset="imagenet")


def test_registered_dataset_and_model_names_are_recipe_values():
    from torch.utils.data import TensorDataset

    from rtl_kernels.data import DATASETS, register_dataset
    from rtl_kernels.pipeline.run import load_datasets

    def data(*, seed, data_dir, max_train):
        x = torch.randn(20, 4, generator=torch.Generator().manual_seed(seed))
        return TensorDataset(x[:15], torch.arange(15) % 3), TensorDataset(x[15:], torch.arange(5) % 3)

    register_dataset("tiny_registered", data)
    register_model("tiny_registered_model", lambda **kw: torch.nn.Linear(kw["in_features"], kw["num_classes"]))
    try:
        recipe = Recipe(dataset="tiny_registered", model="tiny_registered_model")
        train, test = load_datasets(recipe)
        assert len(train) == 15 and len(test) == 5
    finally:
        DATASETS.pop("tiny_registered")
        MODELS.pop("tiny_registered_model")
    with pytest.raises(ValueError, match=r"recipe\.dataset: expected one of"):
        Recipe(dataset="tiny_registered")
    with pytest.raises(ValueError, match="name: expected a non-empty dataset name"):
        register_dataset("a:b", data)
    with pytest.raises(TypeError, match="factory: expected a callable"):
        register_dataset("x", 3)
