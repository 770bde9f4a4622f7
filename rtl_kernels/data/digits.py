"""scikit-learn's bundled 8×8 digits (1,797 images, 10 classes; no download) as tensor datasets."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Stratified train/test split of the digits: inputs float32 ``[N, 64]`` scaled to [0, 1], targets int64."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction: expected a fraction in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits as sk_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the digits data needs scikit-learn: pip install 'rtl-kernels[demo]'") from exc
    data = sk_digits()
    x = torch.as_tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.as_tensor(data.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(torch.arange(len(y)).numpy(), test_size=test_fraction, random_state=seed, stratify=y.numpy())
    idx_train, idx_test = torch.as_tensor(idx_train), torch.as_tensor(idx_test)
    return TensorDataset(x[idx_train], y[idx_train]), TensorDataset(x[idx_test], y[idx_test])
