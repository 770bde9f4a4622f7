"""Whole-model tools: conversion, routing, model-level masks, save/load."""

from .convert import ConversionSummary, convert
from .io import LoadError, load, save
from .norms import convert_norms
from .routing import RoutedModel, routing, rtl_layers
from .state import masks_of, set_masks

__all__ = [
    "ConversionSummary",
    "LoadError",
    "RoutedModel",
    "convert",
    "convert_norms",
    "load",
    "masks_of",
    "routing",
    "rtl_layers",
    "save",
    "set_masks",
]
