"""CLI: --help on every subcommand, options generated from the Recipe, recipe errors, the demo end to end (tiny)."""

import dataclasses

import pytest
import torch

from rtl_kernels.cli.main import build_parser, main
from rtl_kernels.pipeline import Recipe

pytest.importorskip("sklearn")


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return sorted(action.choices)


@pytest.mark.parametrize("command", subcommands())
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "find", "retrain", "eval", "demo"])
def test_options_are_generated_from_recipe_fields(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(Recipe):
        assert "--" + f.name.replace("_", "-") in out, f.name


def test_pipeline_commands_are_registered():
    assert {"run", "find", "retrain", "eval", "demo", "info"} <= set(subcommands())


def test_show_dir_names_the_run_by_recipe_hash(tmp_path, capsys):
    recipe_file = Recipe(num_tickets=4).save(tmp_path / "r.toml")
    assert main(["run", "--recipe", str(recipe_file), "--root", str(tmp_path), "--seed", "3", "--show-dir"]) == 0
    expected = tmp_path / f"digits-{Recipe(num_tickets=4, seed=3).digest()}"
    assert capsys.readouterr().out.strip() == str(expected)


def test_bad_recipe_is_a_clean_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("num_tickets = 3\nlearning_rate = 0.1\n")
    assert main(["run", "--recipe", str(bad)]) == 1
    assert "unknown keys ['learning_rate']" in capsys.readouterr().err
    assert main(["find", "--scope", "global", "--sparsities", "0.5", "0.2", "--show-dir"]) == 1
    assert "recipe.sparsities" in capsys.readouterr().err


def test_demo_end_to_end_tiny_and_resumes(tmp_path, capsys):
    before = torch.get_num_threads()
    args = [
        "demo",
        "--quiet",
        "--out",
        str(tmp_path / "demo"),
        "--hidden",
        "16",
        "--max-train",
        "300",
        "--epochs-per-round",
        "1",
        "--retrain-epochs",
        "1",
        "--sparsities",
        "0.5",
        "--prune-fraction",
        "0.5",
        "--strong-epochs",
        "1",
    ]
    try:
        assert main(args) == 0
        out = capsys.readouterr().out
        for text in (
            "deployable: RTL at",
            "RTL (router)",
            "oracle (routes from labels)",
            "dense, all data",
            "single-mask IMP",
            "multi-model IMP",
            "strong tickets (frozen random weights; the model is a seed + masks)",
            "similarity score",
            "routed inference",
            "dense model",
            "saved model",
        ):
            assert text in out
        assert (tmp_path / "demo" / "model" / "rtl.json").is_file()
        assert main(args) == 0, "a re-run resumes from the run directory"
        assert capsys.readouterr().out.count("deployable: RTL at") == 1
        assert main(["info", str(tmp_path / "demo")]) == 0
        assert "K = 5 tickets" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
