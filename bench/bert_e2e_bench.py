"""End-to-end latency and memory of a routed BERT-base-size encoder vs the dense model.

Targets (issue 7): routed latency <= 1.6x dense (batch 32, sequence 128, K = 4, 50% density) on
the CPU machine, and weights + K tickets' masks <= (1 + K/16)x the dense weights. The encoder is
``transformers.BertModel`` built from a config (random weights: nothing is downloaded); every
``nn.Linear`` becomes an RTL layer with K random 50%-density masks, and each sample of the batch
is routed to one ticket (balanced). Dense and routed runs are interleaved so that drift in the
machine's load hits both alike. Writes ``bench/results/bert_e2e_<date>.json`` and ``.md``.

    python bench/bert_e2e_bench.py                       # the issue's setting, backend "auto"
    python bench/bert_e2e_bench.py --layers 2 --reps 3   # a quicker look
    python bench/bert_e2e_bench.py --backends auto reference
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
from pathlib import Path

import torch
from torch import nn

import rtl_kernels as rtl
from rtl_kernels.backends.registry import Call, resolve_backend
from rtl_kernels.benchmarks.machine import cpu_model
from rtl_kernels.benchmarks.timing import time_rounds

RESULTS = Path(__file__).resolve().parent / "results"
LATENCY_TARGET, MEMORY_TARGET_PER_TICKET = 1.6, 1 / 16


def build_encoder(layers: int, hidden: int, heads: int, intermediate: int, seq: int) -> nn.Module:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max(512, seq),
        attn_implementation="sdpa",
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def run(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    dense = build_encoder(args.layers, args.hidden, args.heads, args.intermediate, args.seq)
    ids = torch.randint(0, dense.config.vocab_size, (args.batch, args.seq))
    with torch.inference_mode():
        dense_out = dense(ids).last_hidden_state
    dense_weight_bytes, dense_buffer_bytes = weight_bytes(dense), buffer_bytes(dense)

    routed = rtl.convert(build_encoder(args.layers, args.hidden, args.heads, args.intermediate, args.seq), args.tickets)
    routed.load_state_dict(dense.state_dict(), strict=False)
    with torch.inference_mode():  # all-ones masks reproduce the dense model
        check = rtl.RoutedModel(routed)(ids, routes=torch.zeros(args.batch, dtype=torch.long)).last_hidden_state
    all_ones_error = float((check - dense_out).abs().max())
    gen = torch.Generator().manual_seed(1)
    rtl.set_masks(
        routed, {n: torch.rand((args.tickets, *m.weight_shape), generator=gen) < args.density for n, m in rtl.masks_of(routed).items()}
    )
    routes = torch.arange(args.batch) % args.tickets
    routes = routes[torch.randperm(args.batch, generator=gen)]
    served = rtl.RoutedModel(routed)

    linear = next(m for m in routed.modules() if isinstance(m, rtl.nn.RTLLinear))
    rows = args.batch * args.seq
    chosen = {}
    results = {}
    for backend in args.backends:
        for layer in rtl.models.rtl_layers(routed):
            layer.backend = backend
        call = Call("linear", torch.device("cpu"), torch.float32, rows, tuple(linear.weight.shape), args.tickets)
        chosen[backend] = resolve_backend(backend, call).name
        with torch.inference_mode():
            for _ in range(args.warmup):
                dense(ids)
                served(ids, routes=routes)
            times = time_rounds({"dense": lambda: dense(ids), "routed": lambda: served(ids, routes=routes)}, args.reps, 0.0)  # interleaved
            dense_times, routed_times = times["dense"], times["routed"]
        d, r = statistics.median(dense_times), statistics.median(routed_times)
        results[backend] = {
            "backend_used": chosen[backend],
            "dense_ms": [round(1e3 * t, 2) for t in dense_times],
            "routed_ms": [round(1e3 * t, 2) for t in routed_times],
            "dense_median_ms": round(1e3 * d, 2),
            "routed_median_ms": round(1e3 * r, 2),
            "dense_min_ms": round(1e3 * min(dense_times), 2),
            "routed_min_ms": round(1e3 * min(routed_times), 2),
            "ratio": round(r / d, 3),
            "ratio_of_mins": round(min(routed_times) / min(dense_times), 3),
            "meets_target": r / d <= LATENCY_TARGET,
        }

    mask_bytes = sum(m.nbytes() for m in rtl.masks_of(routed).values())
    routed_weight_bytes = weight_bytes(routed)
    memory_ratio = (routed_weight_bytes + mask_bytes) / dense_weight_bytes
    summary = routed.rtl_conversion_summary
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "logical_cpus": os.cpu_count(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "rtl_kernels": rtl.__version__,
        },
        "setting": {
            "layers": args.layers,
            "hidden": args.hidden,
            "heads": args.heads,
            "intermediate": args.intermediate,
            "batch": args.batch,
            "seq": args.seq,
            "tickets": args.tickets,
            "density": args.density,
            "reps": args.reps,
            "warmup": args.warmup,
            "threads": torch.get_num_threads(),
            "available_backends": rtl.available_backends("cpu"),
        },
        "conversion": {"layers": len(summary.converted), "covered_params": summary.covered_params, "total_params": summary.total_params},
        "all_ones_max_abs_error": all_ones_error,
        "latency": results,
        "memory": {
            "dense_weight_bytes": dense_weight_bytes,
            "dense_buffer_bytes": dense_buffer_bytes,
            "mask_bytes": mask_bytes,
            "ratio": round(memory_ratio, 4),
            "target": 1 + args.tickets * MEMORY_TARGET_PER_TICKET,
            "meets_target": memory_ratio <= 1 + args.tickets * MEMORY_TARGET_PER_TICKET,
        },
    }


def markdown(res: dict) -> str:
    s, m = res["setting"], res["memory"]
    lines = [
        f"# Routed BERT encoder vs dense ({res['date']})",
        "",
        f"Machine: {res['machine']['cpu']}, {s['threads']} threads, {res['machine']['platform']}; "
        f"torch {res['versions']['torch']}, transformers {res['versions']['transformers']}, rtl_kernels {res['versions']['rtl_kernels']}.",
        f"Setting: {s['layers']} layers, hidden {s['hidden']}, {s['heads']} heads, intermediate {s['intermediate']}; batch {s['batch']} x "
        f"sequence {s['seq']}; K = {s['tickets']} tickets at density {s['density']}; median of {s['reps']} interleaved runs after "
        f"{s['warmup']} warm-up; backends available: {', '.join(s['available_backends'])}.",
        f"All-ones masks reproduce the dense output (max abs error {res['all_ones_max_abs_error']:.2e}).",
        "",
        f"| backend (used) | dense ms (median / min) | routed ms (median / min) | routed / dense (medians) | ratio of mins | medians <= {LATENCY_TARGET} |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["latency"].items():
        ok = "yes" if r["meets_target"] else "no"
        lines.append(
            f"| {name} ({r['backend_used']}) | {r['dense_median_ms']:.0f} / {r['dense_min_ms']:.0f} | {r['routed_median_ms']:.0f} / "
            f"{r['routed_min_ms']:.0f} | {r['ratio']:.2f} | {r['ratio_of_mins']:.2f} | {ok} |"
        )
    lines += [
        "",
        f"Memory: dense weights {m['dense_weight_bytes'] / 2**20:.1f} MiB, masks for {s['tickets']} tickets "
        f"{m['mask_bytes'] / 2**20:.1f} MiB: ratio {m['ratio']:.4f} (target <= {m['target']:.4f}: {'yes' if m['meets_target'] else 'no'}).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--tickets", type=int, default=4)
    parser.add_argument("--density", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--backends", nargs="+", default=["auto"], help="routed backends to time (default: auto)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and Markdown results")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    res = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bert_e2e_{dt.date.today().isoformat()}{'_' + args.tag if args.tag else ''}"
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    print(f"wrote {args.out / stem}.json and .md")


if __name__ == "__main__":
    main()
