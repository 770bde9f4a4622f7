"""Compiled and JIT kernel families (one subpackage per kernel language)."""
