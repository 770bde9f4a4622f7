"""Routed BatchNorm: running statistics kept per ticket (``[K, C]``), the affine parameters shared.

Tickets see different data (a subset each), so one set of running statistics fits none of them
well. :class:`RTLBatchNorm2d` / :class:`RTLBatchNorm1d` keep a running mean and variance per
ticket and read each call's routes from the route scope (``rtl.routing``, ``RoutedModel``), like
the RTL layers; routes are never stored on the module.

- Training: each ticket's rows are normalised with the batch statistics *of those rows* and
  update only that ticket's running statistics. So a row's output never depends on rows of
  other tickets in the batch, and what eval uses (the ticket's running statistics) estimates
  exactly what training normalised with. A batch of one ticket computes what ``nn.BatchNorm``
  computes.
- Eval: each row is normalised with its own ticket's running statistics.

The affine ``weight`` / ``bias`` (``[C]``) are shared by all tickets, like every parameter that
no mask covers; they keep ``nn.BatchNorm``'s names, so an optimizer built before conversion stays valid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.checks import check_num_tickets
from ..routing_plans.plan import RoutingPlan
from ..routing_plans.routes import plan_for_rows
from .scope import resolve_routes

Routes = int | torch.Tensor | RoutingPlan


class RTLBatchNorm(nn.Module):
    """BatchNorm over dim 1 with per-ticket running statistics; see the module docstring."""

    input_dims: tuple[int, ...] = (2, 3, 4, 5)
    dense_type: type[nn.modules.batchnorm._BatchNorm] = nn.BatchNorm2d
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(
        self,
        num_features: int,
        num_tickets: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_num_tickets(num_tickets)
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features: expected a positive int, got {num_features!r}")
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(num_features, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_tickets, num_features, device=device, dtype=dtype))
        self.register_buffer("running_var", torch.ones(num_tickets, num_features, device=device, dtype=dtype))
        self.register_buffer("num_batches_tracked", torch.zeros(num_tickets, dtype=torch.long, device=device))

    @classmethod
    def from_dense(cls, module: nn.modules.batchnorm._BatchNorm, num_tickets: int) -> RTLBatchNorm:
        """A routed BatchNorm sharing ``module``'s affine Parameters; every ticket starts with ``module``'s running statistics."""
        if not isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            raise TypeError(f"module: expected an nn.BatchNorm1d or nn.BatchNorm2d, got {type(module).__name__}")
        if not module.track_running_stats or module.running_mean is None:
            raise ValueError("module: expected a BatchNorm with track_running_stats=True (it has no running statistics to keep per ticket)")
        check_num_tickets(num_tickets)
        kind = RTLBatchNorm1d if isinstance(module, nn.BatchNorm1d) else RTLBatchNorm2d
        ref = module.running_mean
        layer = kind(module.num_features, num_tickets, module.eps, module.momentum, affine=False, device=ref.device, dtype=ref.dtype)
        if module.affine:
            layer.affine, layer.weight, layer.bias = True, module.weight, module.bias
        with torch.no_grad():
            layer.running_mean.copy_(module.running_mean.expand(num_tickets, -1))
            layer.running_var.copy_(module.running_var.expand(num_tickets, -1))
            layer.num_batches_tracked.fill_(int(module.num_batches_tracked))
        layer.train(module.training)
        return layer

    @property
    def num_tickets(self) -> int:
        return int(self.running_mean.shape[0])

    def to_dense(self, ticket: int) -> nn.modules.batchnorm._BatchNorm:
        """A plain ``nn.BatchNorm`` with ticket ``ticket``'s running statistics and a copy of the affine parameters."""
        if isinstance(ticket, bool) or not isinstance(ticket, int) or not 0 <= ticket < self.num_tickets:
            raise ValueError(f"ticket: expected an int in [0, {self.num_tickets}), got {ticket!r}")
        ref = self.running_mean
        dense = self.dense_type(self.num_features, self.eps, self.momentum, self.affine, device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            dense.running_mean.copy_(self.running_mean[ticket])
            dense.running_var.copy_(self.running_var[ticket])
            dense.num_batches_tracked.fill_(int(self.num_batches_tracked[ticket]))
            if self.affine:
                dense.weight.copy_(self.weight)
                dense.bias.copy_(self.bias)
        return dense.train(self.training)

    def pooled_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance ``[C]`` of the equal mixture of the tickets' distributions (a start for a new ticket)."""
        mean = self.running_mean.mean(0)
        var = (self.running_var + self.running_mean.square()).mean(0) - mean.square()
        return mean, var.clamp_min(0)

    @torch.no_grad()
    def set_num_tickets(self, num_tickets: int, *, keep: bool = True) -> None:
        """Grow to (or reset to) ``num_tickets``: with ``keep`` the existing tickets' statistics stay bit for bit and
        the new ones start from :meth:`pooled_statistics`; without it every ticket gets the pooled statistics."""
        check_num_tickets(num_tickets)
        k_old = self.num_tickets if keep else 0
        if num_tickets < k_old:
            raise ValueError(f"num_tickets: expected at least the current {k_old} tickets when keeping them, got {num_tickets}")
        mean, var = self.pooled_statistics()
        extra = num_tickets - k_old
        self.running_mean = torch.cat([self.running_mean[:k_old], mean.expand(extra, -1)])
        self.running_var = torch.cat([self.running_var[:k_old], var.expand(extra, -1)])
        self.num_batches_tracked = torch.cat([self.num_batches_tracked[:k_old], self.num_batches_tracked.new_zeros(extra)])

    def forward(self, x: torch.Tensor, routes: Routes | None = None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() not in self.input_dims or x.shape[1] != self.num_features:
            dims = " or ".join(f"{d}-D" for d in self.input_dims)
            raise ValueError(f"x: expected a {dims} input with {self.num_features} channels in dim 1, got shape {list(x.shape)}")
        plan = plan_for_rows(resolve_routes(self, routes, self.num_tickets), self.num_tickets, (x.shape[0],), x.device, what="x.shape[:1]")
        if self.training:
            return self._train_forward(x, plan)
        shape = (x.shape[0], self.num_features) + (1,) * (x.dim() - 2)
        mean = self.running_mean[plan.routes].view(shape)
        invstd = torch.rsqrt(self.running_var[plan.routes].view(shape) + self.eps)
        y = (x - mean) * invstd
        if self.affine:
            channel = (1, self.num_features) + (1,) * (x.dim() - 2)
            y = y * self.weight.view(channel) + self.bias.view(channel)
        return y.to(x.dtype)

    def _train_forward(self, x: torch.Tensor, plan: RoutingPlan) -> torch.Tensor:
        """Each ticket's rows normalised by their own batch statistics, which update that ticket's running statistics."""
        offsets = plan.offsets.tolist()
        per_row = math.prod(x.shape[2:])
        parts = []
        for k in range(self.num_tickets):
            start, stop = offsets[k], offsets[k + 1]
            if start == stop:
                continue
            if (stop - start) * per_row < 2:
                raise ValueError(
                    f"x: expected more than 1 value per channel for every ticket in training mode, got {stop - start} row(s) of "
                    f"shape {list(x.shape[1:])} on ticket {k}"
                )
            rows = x if stop - start == x.shape[0] else x.index_select(0, plan.perm[start:stop])
            self.num_batches_tracked[k] += 1
            # momentum None: the cumulative average over this ticket's batches
            factor = 1.0 / float(self.num_batches_tracked[k]) if self.momentum is None else self.momentum
            out = F.batch_norm(rows, self.running_mean[k], self.running_var[k], self.weight, self.bias, True, factor, self.eps)
            if stop - start == x.shape[0]:
                return out
            parts.append(out)
        return torch.empty_like(x).index_copy(0, plan.perm, torch.cat(parts))

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_tickets={self.num_tickets}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class RTLBatchNorm2d(RTLBatchNorm):
    """Routed ``nn.BatchNorm2d``: inputs ``[B, C, H, W]``."""

    input_dims = (4,)
    dense_type = nn.BatchNorm2d


class RTLBatchNorm1d(RTLBatchNorm):
    """Routed ``nn.BatchNorm1d``: inputs ``[B, C]`` or ``[B, C, L]``."""

    input_dims = (2, 3)
    dense_type = nn.BatchNorm1d
