"""Split training data into K subsets: by class groups, by KMeans clusters of the inputs, or by a context label."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset, Subset

PARTITIONS = ("class", "cluster", "context")


def class_groups(num_classes: int, num_subsets: int) -> list[list[int]]:
    """Contiguous, near-equal groups of class ids (K = 5 over 10 classes: {0,1}, {2,3}, ...)."""
    if not 1 <= num_subsets <= num_classes:
        raise ValueError(f"num_subsets: expected 1..{num_classes} (one class at least per subset), got {num_subsets}")
    bounds = [round(i * num_classes / num_subsets) for i in range(num_subsets + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(num_subsets)]


@dataclass
class Partition:
    """Assigns every sample a subset id in ``[0, K)``; ``fit`` on the training data, ``assign`` on any split."""

    kind: str
    num_subsets: int
    groups: list[list[int]] = field(default_factory=list)
    seed: int = 0
    centroids: torch.Tensor | None = None
    contexts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in PARTITIONS:
            raise ValueError(f"kind: expected one of {PARTITIONS}, got {self.kind!r}")
        if isinstance(self.num_subsets, bool) or not isinstance(self.num_subsets, int) or self.num_subsets < 1:
            raise ValueError(f"num_subsets: expected a positive int, got {self.num_subsets!r}")

    def fit(self, inputs: torch.Tensor, targets: torch.Tensor, context: torch.Tensor | None = None) -> Partition:
        if self.kind == "class" and not self.groups:
            self.groups = class_groups(int(targets.max()) + 1, self.num_subsets)
        elif self.kind == "cluster":
            from sklearn.cluster import KMeans  # optional extra "demo"

            km = KMeans(n_clusters=self.num_subsets, n_init=10, random_state=self.seed).fit(
                inputs.reshape(len(inputs), -1).double().numpy()
            )
            self.centroids = torch.as_tensor(km.cluster_centers_)
        elif self.kind == "context":
            if context is None:
                raise ValueError("context: expected a context label per sample for partition 'context', got None")
            self.contexts = sorted(int(c) for c in context.unique())
            if len(self.contexts) != self.num_subsets:
                raise ValueError(
                    f"num_subsets: expected the number of distinct context labels ({len(self.contexts)}), got {self.num_subsets}"
                )
        if self.kind == "class" and len(self.groups) != self.num_subsets:
            raise ValueError(f"groups: expected {self.num_subsets} class groups, got {len(self.groups)}")
        return self

    def assign(self, inputs: torch.Tensor, targets: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Subset id per sample (int64 ``[N]``)."""
        if self.kind == "class":
            lookup = torch.full((max(max(g) for g in self.groups) + 1,), -1, dtype=torch.long)
            for k, group in enumerate(self.groups):
                lookup[torch.as_tensor(group)] = k
            ids = lookup[targets.long()]
            if (ids < 0).any():
                raise ValueError(f"targets: classes {targets[ids < 0].unique().tolist()} are in no class group {self.groups}")
            return ids
        if self.kind == "cluster":
            if self.centroids is None:
                raise ValueError("partition: call fit(...) on the training data before assign(...)")
            return torch.cdist(inputs.reshape(len(inputs), -1).double(), self.centroids).argmin(1)
        if context is None:
            raise ValueError("context: expected a context label per sample, got None")
        lookup = {c: k for k, c in enumerate(self.contexts)}
        return torch.tensor([lookup[int(c)] for c in context], dtype=torch.long)

    def classes_of(self, ids: torch.Tensor, targets: torch.Tensor) -> list[list[int]]:
        """The classes present in each subset (what a ticket can predict)."""
        return [sorted(targets[ids == k].unique().tolist()) for k in range(self.num_subsets)]


def split(dataset: Dataset, ids: torch.Tensor, num_subsets: int) -> list[Subset]:
    """K subsets of ``dataset`` from per-sample subset ids; an empty subset is an error."""
    out = []
    for k in range(num_subsets):
        idx = torch.nonzero(ids == k).squeeze(1).tolist()
        if not idx:
            raise ValueError(f"partition: subset {k} is empty; use fewer subsets or another partition")
        out.append(Subset(dataset, idx))
    return out


def with_negatives(subsets: list[Subset], seed: int = 0) -> list[Dataset]:
    """Each subset plus an equal number of samples drawn from the other subsets (balanced positives/negatives).

    The paper trains vision tickets "as binary classifiers with balanced mini-batches"; here the
    negatives keep their own labels, so a ticket learns to answer "not mine" by predicting a class
    outside its subset (an interpretation: the paper does not say how its binary output is read).
    """
    g = torch.Generator().manual_seed(seed)
    out: list[Dataset] = []
    for k, positives in enumerate(subsets):
        others = torch.cat([torch.as_tensor(s.indices) for j, s in enumerate(subsets) if j != k])
        if others.numel() == 0:
            out.append(positives)
            continue
        picked = others[torch.randperm(others.numel(), generator=g)[: len(positives)]]
        out.append(Subset(positives.dataset, [*positives.indices, *picked.tolist()]))
    return out
