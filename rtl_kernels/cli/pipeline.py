"""``rtl-kernels run|find|retrain|eval``: the RTL pipeline from a recipe; options are generated from :class:`Recipe`'s fields."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

import torch

from ..pipeline.recipe import Recipe, packaged_recipe, packaged_recipe_names
from ..pipeline.run import Run, default_run_dir, format_table

# subcommand -> (last stage, help)
COMMANDS = {
    "run": ("report", "run the whole pipeline: tickets, joint retraining, baselines, evaluation, report and plots"),
    "find": ("tickets", "find the K adaptive tickets (IMP with rewinding per subset), and single-mask IMP's"),
    "retrain": ("retrain", "find tickets if needed, then joint retraining of RTL (and the baselines) per sparsity level"),
    "eval": (
        "eval",
        "everything up to evaluation per level: accuracy with a router fit on training inputs, oracle routes, baselines, similarity",
    ),
}


# extra spellings of some recipe options: --data module:factory reads like --model module:factory
ALIASES = {"dataset": ("--data",)}


def add_recipe_args(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per Recipe field (type, choices and help from the field); unset options keep the recipe's value."""
    group = parser.add_argument_group("recipe fields (override the recipe file)")
    hints = typing.get_type_hints(Recipe)
    for f in dataclasses.fields(Recipe):
        flag = "--" + f.name.replace("_", "-")
        flags = (flag, *ALIASES.get(f.name, ()))
        hint = hints[f.name]
        text = f"{f.metadata.get('help', '')} (default {f.default!r})"
        kwargs: dict = {"dest": f.name, "default": None, "help": text}
        if hint is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if typing.get_origin(hint) is tuple:
            inner = typing.get_args(hint)[0]
            group.add_argument(*flags, nargs="*", type=inner, metavar=inner.__name__.upper(), **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        group.add_argument(*flags, type=hint, metavar=hint.__name__.upper(), **kwargs)


def recipe_from_args(args: argparse.Namespace, base: Recipe | None = None) -> Recipe:
    """The recipe file (or ``--preset``, or ``base``) with the command-line overrides applied and validated."""
    if getattr(args, "recipe", None):
        recipe = Recipe.load(args.recipe)
    elif getattr(args, "preset", None):
        recipe = packaged_recipe(args.preset)
    else:
        recipe = base or Recipe()
    changes = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name, None) is not None}
    for name, value in changes.items():
        if isinstance(value, list):
            changes[name] = tuple(value)
    return dataclasses.replace(recipe, **changes) if changes else recipe


def add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", type=Path, help="recipe file (.toml or .json); command-line options override it")
    parser.add_argument("--preset", choices=packaged_recipe_names(), help="start from a packaged recipe instead of a file")
    parser.add_argument("--out", type=Path, help="run directory (default: <root>/<dataset>-<hash of the non-default settings>)")
    parser.add_argument("--root", type=Path, default=Path("runs"), help="parent of auto-named run directories (default ./runs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--show-dir", action="store_true", help="print the run directory for these settings and exit")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; tiny models run fastest with 1)")


def register(sub: argparse._SubParsersAction) -> None:
    for name, (_, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=f"{text}. Finished stages in the run directory are reused, so a re-run resumes.")
        add_run_args(p)
        add_recipe_args(p)
        p.set_defaults(func=run, stage_command=name)


def run(args: argparse.Namespace) -> int:
    recipe = recipe_from_args(args)
    out = args.out or default_run_dir(recipe, args.root)
    if args.show_dir:
        print(out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from ..pipeline.distributed import init_from_env, world

    distributed = init_from_env()
    rank = world()[0]
    try:
        report = Run(recipe, out, progress=not args.quiet and rank == 0).execute(COMMANDS[args.stage_command][0])
    finally:
        if distributed:
            torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    print(f"run directory: {out}")
    if report is not None:
        print(format_table(report["rows"], report["levels"][0]["params"]["dense"], report["router"]))
        if "timings_s" in report:
            print(json.dumps({"timings_s": report["timings_s"], "collapse_point": report["collapse_point"]}))
    return 0
