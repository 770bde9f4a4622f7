"""Masked optimizer updates: a weight outside the active ticket's mask never moves on that step.

Masking only the gradient is not enough with Adam: the running moments built by other tickets'
steps would still move a weight whose current gradient is zero. Two mechanisms:

* :class:`MaskedAdam` (the default): a "lazy" Adam whose state is per weight. On a step with an
  update mask, inactive weights keep their value AND their moments; each weight counts its own
  steps for bias correction, so every weight follows exactly the Adam trajectory of the steps of
  the tickets that keep it. With no mask it is ``torch.optim.Adam``.
* any other optimizer (via ``optimizer=``): the masked weights are snapshotted before
  ``optimizer.step()`` and restored after. The weights are frozen exactly, but the optimizer's
  state for them still evolves (e.g. SGD momentum or Adam moments decay with zero gradients).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn


class MaskedAdam(torch.optim.Optimizer):
    """Adam whose ``step(masks=...)`` updates only the weights (and moments) where the mask is true."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0:
            raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas: expected two values in [0, 1), got {betas!r}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None, *, masks: Mapping[torch.Tensor, torch.Tensor] | None = None):  # type: ignore[override]
        """One update; ``masks`` maps a parameter to a bool tensor of its shape (absent: dense update)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if wd:
                    g = g.add(p, alpha=wd)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                mask = None if masks is None else masks.get(p)
                step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
                if mask is None:
                    step.add_(1)
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                else:
                    step.add_(mask.to(step.dtype))
                    m.copy_(torch.where(mask, m * b1 + g * (1 - b1), m))
                    v.copy_(torch.where(mask, v * b2 + g * g * (1 - b2), v))
                bc1 = 1 - torch.pow(b1, step)
                bc2 = 1 - torch.pow(b2, step)
                update = (m / bc1) / ((v / bc2).sqrt() + eps)
                if mask is not None:
                    update = torch.where(mask, update, torch.zeros_like(update))
                p.sub_(update * lr)
        return loss


@torch.no_grad()
def masked_step(opt: torch.optim.Optimizer, masks: Mapping[torch.Tensor, torch.Tensor] | None) -> None:
    """``opt.step()`` such that a parameter entry outside its mask in ``masks`` does not change."""
    if isinstance(opt, MaskedAdam):
        opt.step(masks=masks)
        return
    if not masks:
        opt.step()
        return
    saved = {p: p.detach().clone() for p in masks}
    opt.step()
    for p, mask in masks.items():
        p.copy_(torch.where(mask, p, saved[p]))
