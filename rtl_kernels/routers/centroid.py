"""``CentroidRouter``: route each sample to the ticket whose subset centroid is nearest in a feature space."""

from __future__ import annotations

import torch

from ..ops.checks import check_num_tickets
from .base import FeatureFn, FeatureRouter, check_subset_ids
from .store import register_router_class

_METRICS = ("euclidean", "cosine")


@register_router_class
class CentroidRouter(FeatureRouter):
    """Nearest centroid on ``feature_fn(x)``; centroids from known subset ids or from k-means.

    ``fit(features, subset_ids)`` averages each subset's features; without ``subset_ids`` it runs
    k-means with ``num_tickets`` clusters (needs scikit-learn), and cluster ``j`` is ticket ``j``.
    ``features`` go through ``feature_fn`` first, exactly as inputs do when routing.
    """

    def __init__(self, num_tickets: int | None = None, *, feature_fn: FeatureFn | None = None, metric: str = "euclidean") -> None:
        super().__init__(num_tickets, feature_fn)
        if metric not in _METRICS:
            raise ValueError(f"metric: expected one of {_METRICS}, got {metric!r}")
        self.metric = metric
        self.register_buffer("centroids", torch.empty(0, 0))

    @property
    def is_fitted(self) -> bool:
        return self.centroids.numel() > 0

    def _space(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        return torch.nn.functional.normalize(features, dim=1) if self.metric == "cosine" else features

    @torch.no_grad()
    def fit(
        self, features: torch.Tensor, subset_ids: torch.Tensor | None = None, *, seed: int = 0, batch_size: int = 256
    ) -> CentroidRouter:
        """Set the centroids from ``features`` (through ``feature_fn``) and their ``subset_ids``, or by k-means."""
        feats = self._space(self.features_batched(features, batch_size))
        if feats.shape[0] == 0:
            raise ValueError("features: expected at least one sample to fit on, got none")
        if subset_ids is None:
            if self.num_tickets is None:
                raise ValueError("num_tickets: k-means needs the number of tickets; pass CentroidRouter(num_tickets=K) or subset_ids")
            centroids = self._kmeans(feats, self.num_tickets, seed)
        else:
            ids = check_subset_ids(subset_ids, feats.shape[0], self.num_tickets).to(feats.device)
            k = self.num_tickets if self.num_tickets is not None else int(ids.max()) + 1
            counts = torch.bincount(ids, minlength=k)
            if bool((counts == 0).any()):
                raise ValueError(
                    f"subset_ids: every ticket needs at least one sample, tickets {torch.nonzero(counts == 0).flatten().tolist()} have none"
                )
            sums = torch.zeros(k, feats.shape[1], dtype=feats.dtype, device=feats.device).index_add_(0, ids, feats)
            centroids = sums / counts.unsqueeze(1).to(feats.dtype)
            self.num_tickets = k
        if self.metric == "cosine":
            centroids = torch.nn.functional.normalize(centroids, dim=1)
        self.centroids = centroids.to(feats.device, torch.float32)
        return self

    @staticmethod
    def _kmeans(feats: torch.Tensor, k: int, seed: int) -> torch.Tensor:
        try:
            from sklearn.cluster import KMeans
        except ImportError as exc:
            raise ImportError(
                "CentroidRouter.fit without subset_ids runs k-means, which needs scikit-learn: "
                "`pip install scikit-learn` (or pass subset_ids to average known subsets instead)"
            ) from exc
        if feats.shape[0] < k:
            raise ValueError(f"features: k-means with {k} clusters needs at least {k} samples, got {feats.shape[0]}")
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(feats.detach().to("cpu", torch.float64).numpy())
        return torch.from_numpy(km.cluster_centers_).to(feats.device, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ticket ids ``[B]`` (int64, on ``x``'s device): the nearest centroid of each sample."""
        self._require_fitted()
        feats = self._space(self.features(x))
        centroids = self.centroids.to(feats.device)
        if feats.shape[1] != centroids.shape[1]:
            raise ValueError(f"x: expected features of size {centroids.shape[1]} (as fitted), got {feats.shape[1]}")
        dist = (feats.unsqueeze(1) - centroids.unsqueeze(0)).pow(2).sum(-1)
        routes = dist.argmin(dim=1)
        return routes.to(x.device) if isinstance(x, torch.Tensor) else routes

    def router_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The centroids, and the metric and K as config (see :func:`rtl_kernels.routers.save_router`)."""
        config = {"num_tickets": self.num_tickets, "metric": self.metric, "feature_fn": self.feature_fn is not None}
        return {"centroids": self.centroids}, config

    @classmethod
    def from_router_state(
        cls, tensors: dict[str, torch.Tensor], config: dict, model: object = None, *, feature_fn: FeatureFn | None = None
    ) -> CentroidRouter:
        """A router with the saved centroids (``feature_fn`` again when the saved one had one)."""
        router = cls(config["num_tickets"], feature_fn=cls.saved_feature_fn(config, feature_fn, cls.__name__), metric=config["metric"])
        centroids = tensors["centroids"]
        if centroids.numel() and (centroids.dim() != 2 or centroids.shape[0] != router.num_tickets):
            raise ValueError(f"centroids: expected [{router.num_tickets}, D], got {list(centroids.shape)}")
        router.centroids = centroids.to(torch.float32)
        return router

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # centroids are sized by fit; take the saved size when loading into a fresh router
        saved = state_dict.get(prefix + "centroids")
        if isinstance(saved, torch.Tensor) and saved.shape != self.centroids.shape:
            self.centroids = torch.empty_like(saved, device=self.centroids.device)
            self.num_tickets = check_num_tickets(int(saved.shape[0])) if saved.numel() else self.num_tickets
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_tickets={self.num_tickets}, metric={self.metric!r}, fitted={self.is_fitted}"
