"""Packaged pipeline recipes (TOML): ``digits`` (the demo) and ``cifar10`` (the paper's setting)."""
