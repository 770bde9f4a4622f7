"""A tiny converted MLP with K synthetic subsets and short IMP settings, shared by the pipeline tests."""

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import rtl_kernels as rtl


def tiny(num_tickets=3, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    rtl.convert(model, num_tickets)
    g = torch.Generator().manual_seed(seed)
    subsets = []
    for k in range(num_tickets):
        x = torch.randn(24, 8, generator=g) + k
        subsets.append(TensorDataset(x, torch.randint(0, 3, (24,), generator=g)))
    return model, subsets


ARGS = dict(epochs_per_round=1, loss_fn=F.cross_entropy, lr=1e-2, batch_size=8, progress=False)
