"""What a batch is: ``(inputs, targets)`` pairs by default; dict samples, custom collation and forward keywords on request.

A :class:`Batching` tells the training loops how to collate samples, where the model's input and
the target are, and which keywords go to ``model(...)`` (Hugging Face's ``attention_mask``).
Model outputs with ``.logits`` (Hugging Face ``ModelOutput``) reach ``loss_fn`` as their logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

BatchFn = Callable[[Any], tuple]


@dataclass(frozen=True)
class Batching:
    """How the pipeline reads samples (validated on construction).

    ``input_key`` / ``target_key``: the entries of a dict (or tuple) batch holding the model's input
    and the target. ``batch_fn(batch) -> (inputs, targets)`` or ``(inputs, targets, kwargs)``
    replaces both. ``forward_keys``: batch entries passed to the model as keywords;
    ``forward_kwargs``: constant keywords. ``collate_fn(list of samples) -> batch`` replaces
    ``torch.utils.data.default_collate``.
    """

    input_key: str | int | None = None
    target_key: str | int | None = None
    batch_fn: BatchFn | None = None
    collate_fn: Callable[[list], Any] | None = None
    forward_keys: tuple[str, ...] = ()
    forward_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("input_key", "target_key"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise TypeError(f"{name}: expected a dict key (str) or a tuple index (int), got {type(value).__name__}")
        for name in ("batch_fn", "collate_fn"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"{name}: expected a callable, got {type(getattr(self, name)).__name__}")
        if self.batch_fn is not None and (self.input_key is not None or self.target_key is not None):
            raise ValueError("batch_fn: expected either batch_fn or input_key/target_key, got both")
        if isinstance(self.forward_keys, str) or not isinstance(self.forward_keys, Sequence):
            raise TypeError(f"forward_keys: expected a tuple of batch keys, got {self.forward_keys!r}")
        object.__setattr__(self, "forward_keys", tuple(self.forward_keys))
        if not isinstance(self.forward_kwargs, Mapping) or not all(isinstance(k, str) for k in self.forward_kwargs):
            raise TypeError(f"forward_kwargs: expected a dict of keyword -> value, got {self.forward_kwargs!r}")

    def split(self, batch: Any) -> tuple[Any, Any, dict[str, Any]]:
        """``(model input, target, forward keywords)`` of one collated batch."""
        if self.batch_fn is not None:
            parts = self.batch_fn(batch)
            if not isinstance(parts, tuple) or len(parts) not in (2, 3) or (len(parts) == 3 and not isinstance(parts[2], Mapping)):
                raise TypeError("batch_fn: expected it to return (inputs, targets) or (inputs, targets, kwargs dict)")
            kwargs = dict(parts[2]) if len(parts) == 3 else {}
            return parts[0], parts[1], {**self.forward_kwargs, **kwargs}
        if isinstance(batch, Mapping) and (self.input_key is None or self.target_key is None):
            raise TypeError(
                f"batch: the samples are dicts (keys {sorted(batch)}); pass Batching(input_key=..., target_key=...) or a batch_fn"
            )
        x, y = batch[0 if self.input_key is None else self.input_key], batch[1 if self.target_key is None else self.target_key]
        return x, y, {**self.forward_kwargs, **{k: batch[k] for k in self.forward_keys}}


DEFAULT = Batching()


def check_batching(batching: object) -> Batching:
    """``batching`` or the default ``(inputs, targets)`` reading when None."""
    if batching is None:
        return DEFAULT
    if not isinstance(batching, Batching):
        raise TypeError(f"batching: expected rtl_kernels.pipeline.Batching(...), got {type(batching).__name__}")
    return batching


def logits_of(out: object) -> torch.Tensor:
    """A model's output as a tensor: itself, ``out.logits`` (Hugging Face), ``out["logits"]`` or the first element of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and isinstance(out.logits, torch.Tensor):
        return out.logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model output: expected a tensor or an output with .logits, got {type(out).__name__}")


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors (also inside dicts, tuples and lists) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def cat_batches(batches: list[Any]) -> Any:
    """Collated batches joined along the batch dimension (tensors, and dicts/tuples of them)."""
    first = batches[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(batches)
    if isinstance(first, Mapping):
        return {k: cat_batches([b[k] for b in batches]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(cat_batches(list(parts)) for parts in zip(*batches))
    raise TypeError(f"batch: expected tensors, dicts or tuples of tensors to join, got {type(first).__name__}")


def take(batch: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of a collated batch."""
    if isinstance(batch, torch.Tensor):
        return batch[index]
    if isinstance(batch, Mapping):
        return {k: take(v, index) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(take(v, index) for v in batch)
    raise TypeError(f"batch: expected tensors, dicts or tuples of tensors, got {type(batch).__name__}")
