"""A two-hidden-layer ReLU MLP (the digits model)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``in -> hidden -> hidden -> classes`` with ReLU; every Linear is prunable."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))
