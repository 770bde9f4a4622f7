"""Partitions: class groups, KMeans clusters of the inputs, context labels."""

import pytest
import torch
from torch.utils.data import TensorDataset

from rtl_kernels.pipeline import Partition, class_groups, split


def test_class_groups_and_assign():
    assert class_groups(10, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert class_groups(10, 3) == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    y = torch.tensor([0, 3, 9, 4])
    part = Partition("class", 5).fit(torch.zeros(4, 2), torch.arange(10))
    assert part.assign(torch.zeros(4, 2), y).tolist() == [0, 1, 4, 2]
    with pytest.raises(ValueError, match="num_subsets"):
        class_groups(3, 4)


def test_cluster_partition_separates_blobs():
    pytest.importorskip("sklearn")
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    x = torch.cat([c + torch.randn(30, 2, generator=g) for c in centers])
    part = Partition("cluster", 3, seed=0).fit(x, torch.zeros(90, dtype=torch.long))
    ids = part.assign(x, torch.zeros(90))
    for b in range(3):
        assert ids[b * 30 : (b + 1) * 30].unique().numel() == 1
    assert ids.unique().numel() == 3
    subsets = split(TensorDataset(x, torch.zeros(90)), ids, 3)
    assert sorted(len(s) for s in subsets) == [30, 30, 30]


def test_context_partition_and_errors():
    ctx = torch.tensor([7, 3, 7, 5])
    part = Partition("context", 3).fit(torch.zeros(4, 1), torch.zeros(4), ctx)
    assert part.assign(torch.zeros(4, 1), torch.zeros(4), ctx).tolist() == [2, 0, 2, 1]
    with pytest.raises(ValueError, match="context"):
        Partition("context", 3).fit(torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match="kind"):
        Partition("random", 3)
    with pytest.raises(ValueError, match="empty"):
        split(TensorDataset(torch.zeros(3, 1)), torch.tensor([0, 0, 2]), 3)


def test_with_negatives_balances_positives_and_negatives():
    from rtl_kernels.pipeline.partition import with_negatives

    data = TensorDataset(torch.arange(30).float().unsqueeze(1), torch.arange(30) % 3)
    ids = torch.arange(30) % 3
    subsets = split(data, ids, 3)
    mixed = with_negatives(subsets, seed=0)
    for k, (s, m) in enumerate(zip(subsets, mixed)):
        idx = torch.as_tensor(m.indices)
        assert len(m) == 2 * len(s)
        assert int((ids[idx] == k).sum()) == len(s) and int((ids[idx] != k).sum()) == len(s)
        assert idx.unique().numel() == idx.numel()
