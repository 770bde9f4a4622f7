"""Recipe validation (field-level messages, unknown keys), TOML/JSON round trip, run-directory hashing."""

import pytest

from rtl_kernels.pipeline import Recipe, packaged_recipe
from rtl_kernels.pipeline.recipe import packaged_recipe_names


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        ({"num_tickets": 0}, ValueError, "recipe.num_tickets"),
        ({"num_tickets": "5"}, TypeError, "recipe.num_tickets"),
        ({"lr": 0.0}, ValueError, "recipe.lr"),
        ({"scope": "row"}, ValueError, "recipe.scope"),
        ({"mode": "parallel"}, ValueError, "recipe.mode"),
        ({"sparsities": (0.5, 0.25)}, ValueError, "recipe.sparsities"),
        ({"sparsities": (0.5, 1.0)}, ValueError, "recipe.sparsities"),
        ({"rewind": "later"}, ValueError, "recipe.rewind"),
        ({"prune_fraction": 1.5}, ValueError, "recipe.prune_fraction"),
        ({"baselines": 1}, TypeError, "recipe.baselines"),
        ({"dataset": "cifar10"}, ValueError, "recipe.data_dir"),
        ({"ignore": ("a", 3)}, TypeError, "recipe.ignore"),
        ({"device": "gpu9"}, ValueError, "recipe.device"),
    ],
)
def test_validation_errors_name_the_field(changes, error, match):
    with pytest.raises(error, match=match):
        Recipe(**changes)


def test_unknown_keys_are_errors():
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rate'\]"):
        Recipe.from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="TOML"):
        Recipe.from_toml("num_tickets = = 3")


def test_toml_and_json_round_trip(tmp_path):
    recipe = Recipe(num_tickets=3, sparsities=(0.2, 0.6), ignore=("re:.*head",), lr=1e-4, one_vs_rest=True)
    assert Recipe.from_toml(recipe.to_toml()) == recipe
    assert Recipe.from_json(recipe.to_json()) == recipe
    for suffix in (".toml", ".json"):
        assert Recipe.load(recipe.save(tmp_path / f"r{suffix}")) == recipe
    assert Recipe.from_toml("lr = 1\nsparsities = [1e-1, 0.5]").lr == 1.0


def test_digest_hashes_only_non_default_fields():
    assert Recipe().digest() == Recipe.from_dict({}).digest()
    assert Recipe(seed=1).digest() != Recipe().digest()
    assert Recipe(lr=Recipe().lr).digest() == Recipe().digest()
    assert Recipe().replace(seed=3) == Recipe(seed=3)


def test_packaged_recipes_load():
    assert {"digits", "cifar10"} <= set(packaged_recipe_names())
    cifar = packaged_recipe("cifar10")
    assert cifar.model == "ghostnet" and cifar.lr == 1e-4 and cifar.num_tickets == 10
    with pytest.raises(ValueError, match="name"):
        packaged_recipe("imagenet")
