"""Swap RTL into a transformer built from a config, find one ticket per data subset, save, and serve it.

A tiny BERT (from ``transformers``, built from a config: nothing is downloaded) learns a synthetic
two-domain token task: domain 0 writes sequences with tokens 2-7 and its label says whether its
marker token 8 occurs; domain 1 uses tokens 9-14 and marker 15. The RTL pipeline finds
one 50%-sparse ticket per domain and retrains the shared weights jointly. The save is then
loaded in a fresh process (``--serve``), where a ``CentroidRouter`` on token histograms picks the
ticket of every sample of mixed-domain batches.

    python examples/transformer_tickets.py            # train, save to a temporary dir, serve in a fresh process
    python examples/transformer_tickets.py --out DIR  # keep the save in DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import TensorDataset

import rtl_kernels as rtl
from rtl_kernels.routers import CentroidRouter

VOCAB, SEQ, K = 16, 10, 2
N_TRAIN, N_TEST = 256, 128
CONFIG = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": SEQ,
    "num_labels": 2,
}


class Classifier(nn.Module):
    """A BertForSequenceClassification that returns plain logits (what the pipeline's loss_fn takes)."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        self.bert = BertForSequenceClassification(BertConfig(**config))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids).logits


def make_domain(domain: int, n: int, seed: int) -> TensorDataset:
    """Sequences over the domain's 6 ordinary tokens; label 1 samples carry the domain's marker token somewhere."""
    gen = torch.Generator().manual_seed(seed)
    low = 2 + 7 * domain
    ids = torch.randint(low, low + 6, (n, SEQ), generator=gen)
    labels = torch.randint(0, 2, (n,), generator=gen)
    where = torch.randint(0, SEQ, (n,), generator=gen)
    ids[labels == 1, where[labels == 1]] = low + 6
    return TensorDataset(ids, labels)


def token_histogram(ids: torch.Tensor) -> torch.Tensor:
    """Router features: how often each token occurs in the sequence."""
    return F.one_hot(ids, VOCAB).float().mean(dim=1)


def accuracy(model: nn.Module, data: TensorDataset, routes: torch.Tensor | int) -> float:
    ids, labels = data.tensors
    with torch.no_grad():
        pred = rtl.RoutedModel(model)(ids, routes=routes).argmax(-1)
    return float((pred == labels).float().mean())


def pretrain(model: nn.Module, data: list[TensorDataset], steps: int = 48) -> None:
    """Ordinary dense training on both domains: the model RTL is swapped into is an already trained one."""
    ids = torch.cat([d.tensors[0] for d in data])
    labels = torch.cat([d.tensors[1] for d in data])
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, ids.shape[0], (32,), generator=gen)
        loss = F.cross_entropy(model(ids[idx]), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def train_and_save(out: Path) -> None:
    torch.manual_seed(0)
    train = [make_domain(d, N_TRAIN, seed=d) for d in range(K)]
    test = [make_domain(d, N_TEST, seed=10 + d) for d in range(K)]
    model = Classifier(CONFIG)
    pretrain(model, train)
    model = rtl.convert(model, K, ignore=["re:.*classifier"])  # keep the tiny output head dense
    print(model.rtl_conversion_summary)
    print(f"dense model: accuracy {[round(accuracy(model.eval(), test[d], 0), 3) for d in range(K)]} (all-ones masks)")
    common = {"loss_fn": F.cross_entropy, "lr": 2e-3, "batch_size": 32, "progress": False}
    rtl.pipeline.find_tickets(model.train(), train, sparsity=0.5, rounds=2, epochs_per_round=1, **common)
    rtl.pipeline.joint_retrain(model, train, epochs=2, **common)
    model.eval()
    for d in range(K):
        print(
            f"domain {d}: accuracy with its own ticket {accuracy(model, test[d], d):.3f}, with the other {accuracy(model, test[d], 1 - d):.3f}"
        )
    density = {name: [round(v, 3) for v in m.density().tolist()] for name, m in list(rtl.masks_of(model).items())[:2]}
    print("ticket densities (first layers):", density)

    router = CentroidRouter(K, feature_fn=token_histogram).fit(
        torch.cat([t.tensors[0] for t in train]), torch.arange(K).repeat_interleave(N_TRAIN)
    )
    rtl.save(model, out, metadata={"config": CONFIG, "ignore": ["re:.*classifier"]})
    save_file(router.state_dict(), str(out / "router.safetensors"))
    print(f"saved to {out}")


def serve(out: Path) -> None:
    meta = json.loads((out / "rtl.json").read_text())["metadata"]
    model = rtl.convert(Classifier(meta["config"]), K, ignore=meta["ignore"])
    rtl.load(out, model)
    model.eval()
    router = CentroidRouter(K, feature_fn=token_histogram)
    router.load_state_dict(load_file(str(out / "router.safetensors")))
    served = rtl.RoutedModel(model, router)
    test = [make_domain(d, N_TEST, seed=10 + d) for d in range(K)]
    ids = torch.cat([t.tensors[0] for t in test])
    labels = torch.cat([t.tensors[1] for t in test])
    domains = torch.arange(K).repeat_interleave(N_TEST)
    order = torch.randperm(ids.shape[0], generator=torch.Generator().manual_seed(0))
    ids, labels, domains = ids[order], labels[order], domains[order]
    correct, start = 0, 0
    with torch.inference_mode():
        for size in (1, 7, 24, 64, 160):  # mixed-domain batches of changing size
            batch = slice(start, start + size)
            correct += int((served(ids[batch]).argmax(-1) == labels[batch]).sum())
            start += size
    report = router.evaluate(ids, domains)
    print(f"served {start} samples in mixed batches: task accuracy {correct / start:.3f}, routing accuracy {report['accuracy']:.3f}")
    print("routing confusion (rows: true domain, columns: ticket):", report["confusion"].tolist())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for the save (default: a temporary one)")
    parser.add_argument("--serve", type=Path, default=None, help="only load the save in DIR and serve it")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "bert_rtl"
        train_and_save(out)
        subprocess.run([sys.executable, __file__, "--serve", str(out)], check=True)  # a fresh process


if __name__ == "__main__":
    main()
