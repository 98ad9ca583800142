"""Optimisers with a member dimension: elementwise, one learning rate per member, so members never interact."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..validate import check_choice

__all__ = ["BatchedSGD", "BatchedAdam", "OPTIMIZERS", "make_optimizer"]


class BatchedSGD:
    """Plain gradient descent on a list of ``[M, ...]`` leaves, learning rate per member (``[M]`` or scalar)."""

    def __init__(self, params: Sequence[torch.Tensor], lr):
        self.params = _check_params(params)
        self.lr = _lr_tensor(lr, self.params[0])

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.sub_(self.lr.view(-1, *([1] * (p.ndim - 1))) * g)


class BatchedAdam:
    """Adam (``torch.optim.Adam`` defaults: betas=(0.9, 0.999), eps=1e-8, no weight decay) on a list of
    ``[M, ...]`` leaves with a per-member learning rate.

    Adam is elementwise, so members never interact. The update runs ``torch._fused_adam_`` (the kernel of
    ``torch.optim.Adam(fused=True)``: one pass over memory, several times faster than a chain of tensor
    ops at these sizes) once per run of consecutive members sharing a learning rate, on contiguous
    row blocks; where that kernel is unavailable it falls back to the same formula in plain tensor ops.
    Both match ``torch.optim.Adam`` to float rounding (tested).
    """

    def __init__(self, params: Sequence[torch.Tensor], lr, betas=(0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None):
        self.params = _check_params(params)
        self.lr = _lr_tensor(lr, self.params[0])
        self.b1, self.b2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.m = [torch.zeros_like(p).detach() for p in self.params]
        self.v = [torch.zeros_like(p).detach() for p in self.params]
        self.t = 0
        self.blocks: list[tuple[int, int, float]] = []             # (start, stop, lr) runs of equal lr
        for i, x in enumerate(self.lr.view(-1).tolist()):
            if self.blocks and self.blocks[-1][2] == x:
                self.blocks[-1] = (self.blocks[-1][0], i + 1, x)
            else:
                self.blocks.append((i, i + 1, x))
        self.fused = hasattr(torch, "_fused_adam_") if fused is None else bool(fused)
        self._step_t = torch.zeros((), dtype=torch.float32, device=self.params[0].device)
        # the detached parameters and, per block, the row views of parameters and state: built once, not
        # sliced again at every step (a single block, one learning rate, takes the whole tensors)
        self._ps = [p.detach() for p in self.params]
        self._views = [(a, b, lr, [p[a:b] for p in self._ps], [m[a:b] for m in self.m], [v[a:b] for v in self.v])
                       for a, b, lr in self.blocks]

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        ps = self._ps
        gs = [g.contiguous() for g in grads]
        if self.fused:
            try:
                self._step_t.fill_(float(self.t))
                steps = [self._step_t] * len(ps)
                whole = len(self._views) == 1
                for a, b, lr, pv, mv, vv in self._views:
                    torch._fused_adam_(pv, gs if whole else [g[a:b] for g in gs], mv, vv, [], steps,
                                       amsgrad=False, lr=lr, beta1=self.b1, beta2=self.b2, weight_decay=0.0,
                                       eps=self.eps, maximize=False, grad_scale=None, found_inf=None)
                return
            except (RuntimeError, TypeError, NotImplementedError):
                if self.t > 1:
                    raise
                self.fused = False                                # first step: fall back for good
        bc1 = 1.0 - self.b1 ** self.t
        bc2_sqrt = math.sqrt(1.0 - self.b2 ** self.t)
        for p, g, m, v in zip(ps, gs, self.m, self.v):
            m.lerp_(g, 1.0 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1.0 - self.b2)
            denom = v.sqrt().div_(bc2_sqrt).add_(self.eps)
            p.sub_(m.div(denom).mul_(self.lr.view(-1, *([1] * (p.ndim - 1))) / bc1))


OPTIMIZERS = {"adam": BatchedAdam, "sgd": BatchedSGD}


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr):
    """``"adam"`` (the trainer's default) or ``"sgd"`` on a list of ``[M, ...]`` leaves (``policy.param_list()``)."""
    check_choice("optimizer", name, OPTIMIZERS)
    return OPTIMIZERS[name](params, lr)


def _check_params(params) -> list[torch.Tensor]:
    params = list(params)
    if not params or not all(isinstance(p, torch.Tensor) and p.ndim >= 1 and p.is_contiguous() for p in params):
        raise ValueError("params: expected a non-empty list of contiguous tensors with a leading member dimension")
    if len({p.shape[0] for p in params}) != 1:
        raise ValueError("params: every tensor must have the same leading (member) dimension")
    return params


def _lr_tensor(lr, ref: torch.Tensor) -> torch.Tensor:
    M = ref.shape[0]
    t = torch.as_tensor(lr, dtype=ref.dtype, device=ref.device)
    if t.ndim == 0:
        t = t.expand(M)
    if t.shape != (M,) or not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"lr: expected a positive number or one per member ({M}), got {lr!r}")
    return t.reshape(-1).clone()
