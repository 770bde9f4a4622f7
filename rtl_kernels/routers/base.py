"""What the learned routers share: an optional feature function, batched feature extraction, evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..ops.checks import check_num_tickets
from .metrics import plot_confusion, routing_report

FeatureFn = Callable[[torch.Tensor], torch.Tensor]


def check_subset_ids(subset_ids: object, num_rows: int, num_tickets: int | None) -> torch.Tensor:
    """``subset_ids`` as int64 ``[num_rows]`` with values in ``[0, num_tickets)`` (when K is known)."""
    if not isinstance(subset_ids, torch.Tensor):
        subset_ids = torch.as_tensor(subset_ids)
    if subset_ids.dtype.is_floating_point or subset_ids.dtype == torch.bool or subset_ids.is_complex():
        raise TypeError(f"subset_ids: expected integer ticket ids, got dtype {subset_ids.dtype}")
    subset_ids = subset_ids.reshape(-1).to(torch.int64)
    if subset_ids.numel() != num_rows:
        raise ValueError(f"subset_ids: expected one id per sample ({num_rows}), got {subset_ids.numel()}")
    if subset_ids.numel() and int(subset_ids.min()) < 0:
        raise ValueError(f"subset_ids: expected non-negative ids, got min {int(subset_ids.min())}")
    if num_tickets is not None and subset_ids.numel() and int(subset_ids.max()) >= num_tickets:
        raise ValueError(f"subset_ids: expected ids in [0, {num_tickets}), got max {int(subset_ids.max())}")
    return subset_ids


class FeatureRouter(nn.Module):
    """Base of the learned routers: ``router(x)`` routes on ``feature_fn(x)`` (``x`` itself by default).

    The feature function is kept as a plain attribute (not a submodule), so the router's state dict
    holds only what the router learned; moving a feature model between devices is the caller's job.
    """

    def __init__(self, num_tickets: int | None, feature_fn: FeatureFn | None) -> None:
        super().__init__()
        if num_tickets is not None:
            check_num_tickets(num_tickets)
        if feature_fn is not None and not callable(feature_fn):
            raise TypeError(f"feature_fn: expected a callable x -> features [B, D], got {type(feature_fn).__name__}")
        self.num_tickets = num_tickets
        self.__dict__["feature_fn"] = feature_fn

    def _as_2d(self, features: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"{name}: expected a tensor [B, D], got {type(features).__name__}")
        if not features.dtype.is_floating_point:
            features = features.float()
        if features.dim() == 1:
            features = features.unsqueeze(1)
        return features.reshape(features.shape[0], -1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``feature_fn(x)`` (or ``x``) flattened to ``[B, D]``; what the router compares."""
        feats = x if self.feature_fn is None else self.feature_fn(x)
        return self._as_2d(feats, "features" if self.feature_fn is None else "feature_fn(x)")

    @torch.no_grad()
    def features_batched(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """:meth:`features` over ``x`` in chunks of ``batch_size`` rows (for fitting on a whole data set)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"features: expected a tensor, got {type(x).__name__}")
        if self.feature_fn is None or x.shape[0] <= batch_size:
            return self.features(x)
        return torch.cat([self.features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])

    @staticmethod
    def saved_feature_fn(config: dict, feature_fn: FeatureFn | None, name: str) -> FeatureFn | None:
        """``feature_fn`` for a router loaded from ``config``: required when the saved one routed on features."""
        if config.get("feature_fn") and feature_fn is None:
            raise ValueError(
                f"feature_fn: the saved {name} routed on feature_fn(x), and functions are not saved; "
                "pass the same feature_fn= when loading, got None"
            )
        return feature_fn

    def _require_fitted(self) -> int:
        if self.num_tickets is None or not self.is_fitted:
            raise ValueError(f"router: this {type(self).__name__} is not fitted yet; call fit(features, subset_ids) first")
        return self.num_tickets

    @property
    def is_fitted(self) -> bool:
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, subset_ids: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
        """Route ``x`` and compare with the true ``subset_ids``: accuracy, per-ticket accuracy, confusion matrix."""
        k = self._require_fitted()
        routes = (
            torch.cat([self(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
            if x.shape[0]
            else x.new_zeros(0, dtype=torch.long)
        )
        return routing_report(routes, check_subset_ids(subset_ids, x.shape[0], k), k)

    def plot_confusion(self, x: torch.Tensor, subset_ids: torch.Tensor, **kwargs: Any) -> Any:
        """Evaluate on ``(x, subset_ids)`` and draw the confusion matrix (matplotlib Figure; see :func:`plot_confusion`)."""
        return plot_confusion(self.evaluate(x, subset_ids)["confusion"], **kwargs)
