"""CIFAR-10 from the standard "python version" batches in a local directory (no download).

The files ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` are Python pickles, each a dict
with ``b"data"`` (uint8 ``[N, 3072]``, channel-major 32×32) and ``b"labels"``. Reading this
standard external dataset format is the only use of pickle in the library; nothing is ever
written as a pickle. The reader only lets the pickle build dicts, lists, bytes and numpy arrays
(any other class is refused), so a tampered file cannot run code through it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
# per-channel mean/std of the CIFAR-10 training set (the usual normalisation)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: numpy array reconstruction only, every other global refused."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise ValueError(f"path: a CIFAR-10 batch may only hold arrays, lists and bytes; refusing to load {module}.{name}")


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as fh:
        # reading the standard CIFAR-10 python batch format (a pickled dict); see the module docstring
        batch = _BatchUnpickler(fh, encoding="bytes").load()
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"path: {path} is not a CIFAR-10 python batch (expected a dict with b'data' and b'labels')")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise ValueError(f"path: {path} holds data of shape {data.shape} and {len(labels)} labels; expected [N, 3072] and N labels")
    return data, labels


def _to_dataset(parts: list[tuple[np.ndarray, np.ndarray]], limit: int) -> TensorDataset:
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if limit:
        data, labels = data[:limit], labels[:limit]
    x = torch.from_numpy(data).reshape(-1, 3, 32, 32).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return TensorDataset(x, torch.from_numpy(labels))


def load_cifar10(root: str | os.PathLike, *, max_train: int = 0, max_test: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets from ``root`` (the ``cifar-10-batches-py`` directory), normalised float32 ``[N, 3, 32, 32]``."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data_dir: expected the directory holding the CIFAR-10 python batches, got {base}")
    missing = [name for name in (*TRAIN_FILES, TEST_FILE) if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(f"data_dir: {base} lacks the CIFAR-10 files {missing}")
    train = _to_dataset([_read_batch(base / name) for name in TRAIN_FILES], max_train)
    test = _to_dataset([_read_batch(base / TEST_FILE)], max_test)
    return train, test
