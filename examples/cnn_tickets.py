"""Swap RTL into a small ResNet-style CNN, find one ticket per class group, save, and serve it routed.

Synthetic 16x16 images in 4 classes split into K = 2 subsets (class groups, as in the paper):
red-tinted horizontal / vertical stripes (subset 0) and green-tinted diagonal stripes / a centre
blob (subset 1). The pipeline finds a 60%-sparse ticket per subset and retrains the shared weights
jointly. A fresh process (``--serve``) loads the save and serves mixed batches, routed by a
``LinearRouter`` on per-channel means; an ``OracleRouter`` (routes from known labels) is the reference.

    python examples/cnn_tickets.py            # train, save to a temporary dir, serve in a fresh process
    python examples/cnn_tickets.py --out DIR  # keep the save in DIR
"""

from __future__ import annotations

import argparse
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
from rtl_kernels.routers import LinearRouter, OracleRouter

K, SIZE, CLASSES = 2, 16, 4
N_TRAIN = 128
GROUPS = {0: 0, 1: 0, 2: 1, 3: 1}  # class -> subset (ticket)


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.skip(x))


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8, 16, 2)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


def make_images(labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One noisy pattern per label; subset 0 is tinted red, subset 1 green."""
    r = torch.arange(SIZE, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    patterns = torch.stack(
        [
            torch.sin(yy * 1.6),  # horizontal stripes
            torch.sin(xx * 1.6),  # vertical stripes
            torch.sin((xx + yy) * 1.2),  # diagonal stripes
            torch.exp(-((xx - 7.5) ** 2 + (yy - 7.5) ** 2) / 12.0) * 2 - 1,  # centre blob
        ]
    )
    images = patterns[labels].unsqueeze(1).repeat(1, 3, 1, 1)
    tint = torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.6, 0.0]])[torch.tensor([GROUPS[int(c)] for c in labels])]
    images = images + tint[:, :, None, None]
    return images + 0.5 * torch.randn(images.shape, generator=gen)


def make_subsets(n: int, seed: int) -> list[TensorDataset]:
    gen = torch.Generator().manual_seed(seed)
    subsets = []
    for ticket in range(K):
        classes = torch.tensor([c for c, g in GROUPS.items() if g == ticket])
        labels = classes[torch.randint(0, len(classes), (n,), generator=gen)]
        subsets.append(TensorDataset(make_images(labels, gen), labels))
    return subsets


def channel_means(x: torch.Tensor) -> torch.Tensor:
    """Router features: the mean of each colour channel."""
    return x.mean(dim=(2, 3))


def accuracy(model: nn.Module, data: TensorDataset, routes: torch.Tensor | int) -> float:
    x, y = data.tensors
    with torch.no_grad():
        return float((rtl.RoutedModel(model)(x, routes=routes).argmax(-1) == y).float().mean())


def train_and_save(out: Path) -> None:
    torch.manual_seed(0)
    train, test = make_subsets(N_TRAIN, seed=0), make_subsets(128, seed=1)
    model = rtl.convert(SmallResNet(), K)
    print(model.rtl_conversion_summary)
    common = {"loss_fn": F.cross_entropy, "lr": 1e-2, "batch_size": 32, "progress": False}
    rtl.pipeline.find_tickets(model, train, sparsity=0.6, rounds=2, epochs_per_round=2, **common)
    rtl.pipeline.joint_retrain(model, train, epochs=2, **common)
    model.eval()
    for t in range(K):
        print(
            f"subset {t}: accuracy with its own ticket {accuracy(model, test[t], t):.3f}, with the other {accuracy(model, test[t], 1 - t):.3f}"
        )
    sim = rtl.pipeline.similarity(rtl.masks_of(model))
    print("ticket similarity (Jaccard):", [[round(float(v), 3) for v in row] for row in sim["jaccard"]])

    router = LinearRouter(3, K, feature_fn=channel_means)
    router.fit(torch.cat([s.tensors[0] for s in train]), torch.arange(K).repeat_interleave(N_TRAIN), epochs=30, lr=5e-2)
    rtl.save(model, out, metadata={"classes": CLASSES, "groups": GROUPS})
    save_file(router.state_dict(), str(out / "router.safetensors"))
    print(f"saved to {out}")


def serve(out: Path) -> None:
    model = rtl.load(out, rtl.convert(SmallResNet(), K)).eval()
    router = LinearRouter(3, K, feature_fn=channel_means)
    router.load_state_dict(load_file(str(out / "router.safetensors")))
    served = rtl.RoutedModel(model, router)
    test = make_subsets(128, seed=1)
    x = torch.cat([s.tensors[0] for s in test])
    y = torch.cat([s.tensors[1] for s in test])
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    oracle = OracleRouter(GROUPS)
    correct, oracle_correct, start = 0, 0, 0
    with torch.inference_mode():
        for size in (1, 5, 50, 200):  # mixed batches of changing size
            xb, yb = x[start : start + size], y[start : start + size]
            correct += int((served(xb).argmax(-1) == yb).sum())
            oracle_correct += int((served(xb, routes=oracle(yb)).argmax(-1) == yb).sum())
            start += size
    report = router.evaluate(x, oracle(y))
    print(f"served {start} images: accuracy {correct / start:.3f} with the LinearRouter, {oracle_correct / start:.3f} with oracle routes")
    print(f"routing accuracy {report['accuracy']:.3f}; confusion {report['confusion'].tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="directory for the save (default: a temporary one)")
    parser.add_argument("--serve", type=Path, default=None, help="only load the save in DIR and serve it")
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "cnn_rtl"
        train_and_save(out)
        subprocess.run([sys.executable, __file__, "--serve", str(out)], check=True)  # a fresh process


if __name__ == "__main__":
    main()
