"""Datasets for the pipeline: scikit-learn's bundled digits and the CIFAR-10 python batches."""

from .cifar10 import load_cifar10
from .digits import load_digits

__all__ = ["load_cifar10", "load_digits"]
