"""``LinearRouter``: a small gate (linear, or one hidden layer) trained to predict a sample's subset."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..ops.checks import check_num_tickets
from .base import FeatureFn, FeatureRouter, check_subset_ids
from .store import register_router_class

logger = logging.getLogger(__name__)


@register_router_class
class LinearRouter(FeatureRouter):
    """Softmax gate on standardised ``feature_fn(x)``; routes to the most likely ticket.

    ``in_features`` may be left out and is then taken from the first ``fit``; give it when loading
    a state dict into a fresh router. ``hidden > 0`` adds one ReLU hidden layer.
    """

    def __init__(self, in_features: int | None, num_tickets: int, *, hidden: int = 0, feature_fn: FeatureFn | None = None) -> None:
        super().__init__(check_num_tickets(num_tickets), feature_fn)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ValueError(f"hidden: expected a non-negative int, got {hidden!r}")
        if in_features is not None and (isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1):
            raise ValueError(f"in_features: expected a positive int or None, got {in_features!r}")
        self.hidden = hidden
        self.in_features = in_features
        self.gate: nn.Module | None = self._make_gate(in_features) if in_features is not None else None
        self.history: list[float] = []

    def _make_gate(self, in_features: int) -> nn.Module:
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        k = self.num_tickets
        if self.hidden:
            return nn.Sequential(nn.Linear(in_features, self.hidden), nn.ReLU(), nn.Linear(self.hidden, k))
        return nn.Linear(in_features, k)

    @property
    def is_fitted(self) -> bool:
        return self.gate is not None and bool(self.history)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Gate logits ``[B, K]`` for inputs ``x``."""
        if self.gate is None:
            raise ValueError("router: this LinearRouter has no in_features yet; call fit(features, subset_ids) first")
        feats = self.features(x)
        if feats.shape[1] != self.in_features:
            raise ValueError(f"x: expected features of size {self.in_features}, got {feats.shape[1]}")
        feats = feats.to(self.mean.device, self.mean.dtype)
        return self.gate((feats - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ticket ids ``[B]`` (int64, on ``x``'s device): the gate's most likely ticket."""
        routes = self.logits(x).argmax(dim=1)
        return routes.to(x.device) if isinstance(x, torch.Tensor) else routes

    def fit(
        self,
        features: torch.Tensor,
        subset_ids: torch.Tensor,
        *,
        epochs: int = 100,
        lr: float = 1e-2,
        batch_size: int = 256,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> LinearRouter:
        """Train the gate with Adam and cross-entropy on ``(feature_fn(features), subset_ids)``; returns self."""
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs: expected a positive int, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
        feats = self.features_batched(features).detach().float()
        if feats.shape[0] == 0:
            raise ValueError("features: expected at least one sample to fit on, got none")
        ids = check_subset_ids(subset_ids, feats.shape[0], self.num_tickets).to(feats.device)
        if self.gate is None:
            self.in_features = feats.shape[1]
            self.gate = self._make_gate(self.in_features)
        elif feats.shape[1] != self.in_features:
            raise ValueError(f"features: expected size {self.in_features} per sample (in_features), got {feats.shape[1]}")
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.gate.parameters():  # deterministic init per seed
                if p.dim() > 1:
                    nn.init.kaiming_uniform_(p, a=5**0.5, generator=gen)
                else:
                    p.zero_()
        self.to(feats.device)
        self.mean.copy_(feats.mean(0))
        self.std.copy_(feats.std(0, unbiased=False).clamp_min(1e-6))
        opt = torch.optim.Adam(self.gate.parameters(), lr=lr, weight_decay=weight_decay)
        normed = (feats - self.mean) / self.std
        self.history = []
        for _ in range(epochs):
            order = torch.randperm(normed.shape[0], generator=gen).to(feats.device)
            total = 0.0
            for i in range(0, normed.shape[0], batch_size):
                idx = order[i : i + batch_size]
                loss = nn.functional.cross_entropy(self.gate(normed[idx]), ids[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * idx.numel()
            self.history.append(total / normed.shape[0])
        logger.info("LinearRouter.fit: final loss %.4f after %d epochs", self.history[-1], epochs)
        return self

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Gate weights and the feature standardisation (mean, std) as tensors; sizes as config."""
        config = {
            "in_features": self.in_features,
            "num_tickets": self.num_tickets,
            "hidden": self.hidden,
            "feature_fn": self.feature_fn is not None,
            "history": self.history,
        }
        return ({} if self.gate is None else dict(self.state_dict())), config

    @classmethod
    def from_router_state(
        cls, tensors: dict[str, torch.Tensor], config: dict, model: object = None, *, feature_fn: FeatureFn | None = None
    ) -> LinearRouter:
        """A router with the saved gate and standardisation (``feature_fn`` again when the saved one had one)."""
        fn = cls.saved_feature_fn(config, feature_fn, cls.__name__)
        router = cls(config["in_features"], config["num_tickets"], hidden=config["hidden"], feature_fn=fn)
        if router.gate is not None:
            try:
                router.load_state_dict(tensors, strict=True)
            except RuntimeError as exc:
                raise ValueError(
                    f"tensors: expected the gate of a LinearRouter({config['in_features']}, {config['num_tickets']}), {exc}"
                ) from None
        router.history = [float(v) for v in config.get("history", [])]
        return router

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if any(k.startswith(prefix + "gate.") for k in state_dict):
            self.history = self.history or [float("nan")]  # loaded weights count as fitted

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_tickets={self.num_tickets}, hidden={self.hidden}, fitted={self.is_fitted}"
