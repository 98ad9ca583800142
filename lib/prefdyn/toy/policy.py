"""Batched policies over the toy space: an ensemble of ``M`` independent policies, one leaf tensor per
layer with a leading member dimension (the tabular policy and the MLP of 000 Sec. 3.2.1)."""

from __future__ import annotations

import math
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..validate import check_choice, check_int, check_positive
from .rng import counter_uniform
from .space import ToySpec

__all__ = ["log_softmax_responses", "BatchedPolicy", "TabularPolicy", "MLPPolicy", "POLICIES", "ACTIVATIONS",
           "make_policy", "as_seeds"]


def log_softmax_responses(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` over the last dimension. On the CPU it is computed on a copy with that dimension
    moved to the front and returned as a view in the original layout: PyTorch's CPU kernel is several
    times faster (forward and backward) when the reduced dimension is not the innermost one and is as
    short as the toy's 10 responses. Same values up to float rounding."""
    if logits.device.type != "cpu" or logits.ndim < 2:
        return torch.log_softmax(logits, dim=-1)
    return torch.log_softmax(logits.movedim(-1, 0).contiguous(), dim=0).movedim(0, -1)


class BatchedPolicy:
    """An ensemble of ``M`` independent policies over a :class:`ToySpec`, one leaf tensor per layer.

    Interface (shared by :class:`TabularPolicy` and :class:`MLPPolicy`, used by :mod:`prefdyn.rlhf`):

    - ``params``: dict layer name -> leaf tensor ``[M, *shape]`` (``requires_grad=True``); index m along
      the leading dimension = member m. ``param_list()`` gives them in a fixed order (for autograd and
      the optimisers);
    - ``forward(params=None) -> [M, P, R]``: raw outputs (logits; a reward model reads them as rewards);
    - ``log_probs(params=None)``, ``probs()`` (detached): the categorical policy over responses;
    - ``seeds``: int64 ``[M]``, the seed each member was initialised from (counter-based, so a member's
      initial parameters do not depend on the other members);
    - ``members``, ``spec``, ``device``, ``dtype``, ``n_params`` (per member); ``clone()``,
      ``subset(index)``, ``flat()`` (detached ``[M, n_params]``), ``load_flat(theta)``.

    Pass ``params`` (a dict like ``self.params``) to evaluate other parameter values (e.g. in
    ``torch.func.functional_call`` style); by default the policy's own leaves are used.
    """

    kind = "base"

    def __init__(self, spec: ToySpec, seeds, *, device="auto", dtype=torch.float32):
        if not isinstance(spec, ToySpec):
            raise ValueError(f"spec: expected a ToySpec, got {type(spec).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype}")
        seeds = as_seeds(seeds)
        self.spec = spec
        self.device = resolve_device(device)
        self.dtype = dtype
        self.seeds = seeds.to(self.device)
        self.layout: list[tuple[str, tuple[int, ...], int]] = []   # (name, shape, offset in flat())
        self.n_params = 0
        self._build_layout()
        self.load_flat(self._init_flat())

    # -- to implement -------------------------------------------------------------------------
    def _build_layout(self) -> None:
        raise NotImplementedError

    def _init_flat(self) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, params: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------
    def _add(self, name: str, shape: tuple[int, ...]) -> None:
        self.layout.append((name, tuple(shape), self.n_params))
        self.n_params += int(np.prod(shape))

    def param_list(self) -> list[torch.Tensor]:
        """The leaves in layout order."""
        return [self.params[name] for name, _, _ in self.layout]

    def flat(self) -> torch.Tensor:
        """All parameters, detached, as ``[M, n_params]`` (layout order)."""
        M = self.members
        return torch.cat([p.detach().reshape(M, -1) for p in self.param_list()], dim=1)

    @torch.no_grad()
    def load_flat(self, theta: torch.Tensor) -> None:
        """Replace the parameters by ``theta [M', n_params]`` (new leaves; ``M'`` may differ only if it
        matches ``seeds``)."""
        theta = torch.as_tensor(theta)
        if theta.ndim != 2 or theta.shape != (len(self.seeds), self.n_params):
            raise ValueError(f"theta: expected shape [{len(self.seeds)}, {self.n_params}], got {tuple(theta.shape)}")
        theta = theta.to(device=self.device, dtype=self.dtype)
        self.params = {
            name: theta[:, off: off + int(np.prod(shape))].reshape(-1, *shape).clone().requires_grad_(True)
            for name, shape, off in self.layout}

    @property
    def members(self) -> int:
        return int(len(self.seeds))

    def logits(self, params=None) -> torch.Tensor:
        """Alias of :meth:`forward`: ``[M, P, R]``."""
        return self.forward(params)

    def log_probs(self, params=None) -> torch.Tensor:
        """log pi(a|x), ``[M, P, R]`` (``log_softmax`` over responses, see :func:`log_softmax_responses`)."""
        return log_softmax_responses(self.forward(params))

    @torch.no_grad()
    def probs(self) -> torch.Tensor:
        """pi(a|x), detached, ``[M, P, R]``."""
        return torch.softmax(self.forward(), dim=-1)

    def logits_and_vjp(self, work: dict | None = None) -> tuple[torch.Tensor, Callable[..., list[torch.Tensor]]]:
        """The trainer's forward and backward pass without an autograd graph over the parameters.

        Returns the logits ``[M, P, R]`` (detached) and ``vjp(g, out=None)``, which maps
        ``g`` = d(loss)/d(logits) to d(loss)/d(leaf) for every leaf of :meth:`param_list` (a list in that
        order). ``out``: optional tensors shaped like the leaves that a pass may write gradients into
        instead of allocating (the returned list is what counts). The leaves must not change between the
        two calls. ``work``: a dict the caller keeps across calls, where a policy may keep its buffers (the
        returned tensors may live there, valid until the next call). This default runs autograd;
        :class:`MLPPolicy` and :class:`TabularPolicy` write their backward pass out (tested against autograd).
        """
        params = self.param_list()
        with torch.enable_grad():
            z = self.forward()

        def vjp(g, out=None):
            return list(torch.autograd.grad(z, params, g, allow_unused=True, materialize_grads=True))

        return z.detach(), vjp

    def clone(self) -> "BatchedPolicy":
        """An independent copy (same seeds, copied parameters)."""
        return self.subset(slice(None))

    def subset(self, index) -> "BatchedPolicy":
        """A new policy holding members ``index`` (int, slice, list, bool mask or tensor), parameters copied."""
        idx = _as_index(index, self.members, self.device)
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("params", "seeds")})
        new.seeds = self.seeds[idx].clone()
        new.params = {k: v.detach()[idx].clone().requires_grad_(True) for k, v in self.params.items()}
        return new

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(members={self.members}, spec={self.spec}, n_params={self.n_params}, "
                f"device={self.device.type}, dtype={str(self.dtype).replace('torch.', '')})")


class TabularPolicy(BatchedPolicy):
    """One free logit per (prompt, response): ``logits[m, p, r] = params["logits"][m, p, r]``; initialised
    at 0 (uniform). The contrast case of the toy (see the module docstring)."""

    kind = "tabular"

    def _build_layout(self):
        self._add("logits", (self.spec.n_prompts, self.spec.n_responses))

    def _init_flat(self):
        return torch.zeros(len(self.seeds), self.n_params, dtype=self.dtype, device=self.device)

    def forward(self, params=None):
        params = self.params if params is None else params
        return params["logits"]

    def logits_and_vjp(self, work: dict | None = None):
        """See :meth:`BatchedPolicy.logits_and_vjp`: the logits are the leaf, so the gradient is ``g``."""
        def vjp(g, out=None):
            return [g]

        return self.params["logits"].detach(), vjp


#: The MLP's activations: name -> (function for the batched forward, ``torch.nn`` module for
#: :meth:`MLPPolicy.member_module`). ``"linear"`` (no activation) is a control: the network is then
#: an affine map of the one-hot prompt, a factorised table of logits.
ACTIVATIONS: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], type]] = {
    "relu": (torch.relu, torch.nn.ReLU), "tanh": (torch.tanh, torch.nn.Tanh), "gelu": (F.gelu, torch.nn.GELU),
    "silu": (F.silu, torch.nn.SiLU), "linear": (lambda a: a, torch.nn.Identity),
}

_aten = torch.ops.aten

#: The activations as out= kernels (the ATen ops of :data:`ACTIVATIONS`, same values) and their backward:
#: (d(loss)/d(output), pre-activation a, output h, out) -> d(loss)/d(a), the kernels autograd runs for them.
_ACTIVATION_OUT: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "relu": lambda a, out: _aten.clamp_min.out(a, 0, out=out), "tanh": lambda a, out: _aten.tanh.out(a, out=out),
    "gelu": lambda a, out: _aten.gelu.out(a, out=out), "silu": lambda a, out: _aten.silu.out(a, out=out),
    "linear": lambda a, out: out.copy_(a),
}
_ACTIVATION_BACKWARD: dict[str, Callable[..., torch.Tensor]] = {
    "relu": lambda g, a, h, out: _aten.threshold_backward.grad_input(g, h, 0, grad_input=out),
    "tanh": lambda g, a, h, out: _aten.tanh_backward.grad_input(g, h, grad_input=out),
    "gelu": lambda g, a, h, out: _aten.gelu_backward.grad_input(g, a, grad_input=out),
    "silu": lambda g, a, h, out: _aten.silu_backward.grad_input(g, a, grad_input=out),
    "linear": lambda g, a, h, out: out.copy_(g),
}


def _buffer(work: dict, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``work[name]``, (re)allocated as an empty tensor of ``shape`` with ``like``'s dtype and device."""
    t = work.get(name)
    if t is None or t.shape != shape or t.dtype != like.dtype or t.device != like.device:
        t = work[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
    return t


class MLPPolicy(BatchedPolicy):
    """The three-layer MLP of 000 Sec. 3.2.1: one-hot prompt -> H -> H -> R logits, per member.

    ``h1 = act(onehot(x) W1 + b1)`` (the one-hot product is a row of ``W1``), ``h2 = act(h1 W2 + b2)``,
    ``logits = h2 W3 + b3``; all members at once with ``torch.baddbmm``. Leaves ``W1 [M, P, H]``,
    ``b1 [M, 1, H]``, ``W2 [M, H, H]``, ``b2``, ``W3 [M, H, R]``, ``b3 [M, 1, R]`` (``W`` is stored
    ``[in, out]`` = ``nn.Linear.weight.T``). Initialisation as ``torch.nn.Linear``
    (U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for weights and biases), drawn from :func:`counter_uniform`
    with the member's seed.

    Choices 000 leaves open, kept as options for the sensitivity analyses (the defaults are the
    paper's network): ``depth`` hidden layers (default 2; the output layer is then ``W{depth+1}``,
    ``b{depth+1}``, see :attr:`output_layer`), ``init_scale`` (every initial bound times this factor)
    and ``activation`` (:data:`ACTIVATIONS`, ``"linear"`` included).
    """

    kind = "mlp"

    def __init__(self, spec: ToySpec, seeds, *, hidden: int = 64, activation: str = "relu", depth: int = 2,
                 init_scale: float = 1.0, device="auto", dtype=torch.float32):
        self.hidden = check_int("hidden", hidden, 1)
        check_choice("activation", activation, ACTIVATIONS)
        self.activation = activation
        self.depth = check_int("depth", depth, 1, 8)
        self.init_scale = float(check_positive("init_scale", init_scale))
        super().__init__(spec, seeds, device=device, dtype=dtype)

    @property
    def output_layer(self) -> tuple[str, str]:
        """The names of the output layer's weight and bias (``("W3", "b3")`` at the default depth)."""
        return f"W{self.depth + 1}", f"b{self.depth + 1}"

    def _build_layout(self):
        P, R, H = self.spec.n_prompts, self.spec.n_responses, self.hidden
        self._fan_in = {}
        for i in range(1, self.depth + 2):
            fan_in, fan_out = (P if i == 1 else H), (R if i == self.depth + 1 else H)
            self._add(f"W{i}", (fan_in, fan_out)); self._add(f"b{i}", (1, fan_out))
            self._fan_in[f"W{i}"] = self._fan_in[f"b{i}"] = fan_in

    def _init_flat(self):
        bound = torch.empty(self.n_params, dtype=torch.float64)
        for name, shape, off in self.layout:
            bound[off: off + int(np.prod(shape))] = self.init_scale / math.sqrt(self._fan_in[name])
        u = counter_uniform(self.seeds.cpu(), stream=1, n=self.n_params)        # [M, N] in (0, 1)
        return ((2.0 * u - 1.0) * bound).to(device=self.device, dtype=self.dtype)

    def features(self, params=None) -> torch.Tensor:
        """The last hidden layer ``h_depth [M, P, H]``: the features the output layer reads for each prompt."""
        v = self.params if params is None else params
        act = ACTIVATIONS[self.activation][0]
        h = act(v["W1"] + v["b1"])                               # one-hot(x) @ W1 + b1, [M, P, H]
        for i in range(2, self.depth + 1):
            h = act(torch.baddbmm(v[f"b{i}"], h, v[f"W{i}"]))     # [M, P, H]
        return h

    def forward(self, params=None):
        v = self.params if params is None else params
        w, b = self.output_layer
        return torch.baddbmm(v[b], self.features(params), v[w])   # [M, P, R]

    def logits_and_vjp(self, work: dict | None = None):
        """See :meth:`BatchedPolicy.logits_and_vjp`; the backward pass written out, with the ATen kernels
        autograd runs for :meth:`forward` (a few ops per layer, no graph). For the output layer L:
        ``g_bL = sum_p g``, ``g_WL = h^T g``; for each hidden layer i from the top:
        ``g_ai = act'(g_hi)``, ``g_Wi = h_{i-1}^T g_ai``, ``g_bi = sum_p g_ai``, ``g_h{i-1} = g_ai Wi^T``; the
        first layer's ``g_W1 = g_a1`` (the one-hot input selects one row of ``W1`` per prompt).

        ``work``: a dict the caller keeps from step to step; the activations, logits and intermediate
        gradients then live in buffers held there (reused by the next call, so no large allocation per
        step). Without it they are allocated."""
        work = {} if work is None else work
        v = self.params
        M, P, H, R, D = self.members, self.spec.n_prompts, self.hidden, self.spec.n_responses, self.depth
        ref = v["W1"]
        act = _ACTIVATION_OUT[self.activation]
        back = _ACTIVATION_BACKWARD[self.activation]
        with torch.no_grad():
            a = [torch.add(v["W1"], v["b1"], out=_buffer(work, "a1", (M, P, H), ref))]
            h = [act(a[0], _buffer(work, "h1", (M, P, H), ref))]
            for i in range(2, D + 1):
                a.append(torch.baddbmm(v[f"b{i}"], h[-1], v[f"W{i}"], out=_buffer(work, f"a{i}", (M, P, H), ref)))
                h.append(act(a[-1], _buffer(work, f"h{i}", (M, P, H), ref)))
            z = torch.baddbmm(v[f"b{D + 1}"], h[-1], v[f"W{D + 1}"], out=_buffer(work, "z", (M, P, R), ref))

        def vjp(g, out=None):
            o = [None] * (2 * D + 2) if out is None else out
            grads: list = [None] * (2 * D + 2)
            with torch.no_grad():
                grads[2 * D + 1] = torch.sum(g, 1, keepdim=True, out=o[2 * D + 1])
                grads[2 * D] = torch.bmm(h[D - 1].transpose(1, 2), g, out=o[2 * D])
                gh = torch.bmm(g, v[f"W{D + 1}"].transpose(1, 2), out=_buffer(work, f"g_h{D}", (M, P, H), ref))
                for i in range(D, 1, -1):                          # hidden layer i (1-based), from the top
                    ga = back(gh, a[i - 1], h[i - 1], _buffer(work, f"g_a{i}", (M, P, H), ref))
                    grads[2 * i - 1] = torch.sum(ga, 1, keepdim=True, out=o[2 * i - 1])
                    gh = torch.bmm(ga, v[f"W{i}"].transpose(1, 2), out=_buffer(work, f"g_h{i - 1}", (M, P, H), ref))
                    grads[2 * i - 2] = torch.bmm(h[i - 2].transpose(1, 2), ga, out=o[2 * i - 2])
                grads[0] = back(gh, a[0], h[0], o[0] if o[0] is not None else torch.empty_like(gh))
                grads[1] = torch.sum(grads[0], 1, keepdim=True, out=o[1])
            return grads

        return z, vjp

    def member_module(self, m: int) -> torch.nn.Sequential:
        """Member ``m`` as the plain ``torch.nn`` network a single run would use: ``Sequential(Linear(P, H),
        act, Linear(H, H), act, ..., Linear(H, R))`` with the member's current weights
        (``Linear.weight = W.T``), applied to one-hot prompts (``torch.eye(P)``). Same outputs as
        :meth:`forward` for that member (tested); the plain loop of :func:`prefdyn.bench.bench` trains it."""
        P, R, H = self.spec.n_prompts, self.spec.n_responses, self.hidden
        act = ACTIVATIONS[self.activation][1]
        layers: list[torch.nn.Module] = []
        for i in range(1, self.depth + 2):
            layers.append(torch.nn.Linear(P if i == 1 else H, R if i == self.depth + 1 else H))
            if i <= self.depth:
                layers.append(act())
        model = torch.nn.Sequential(*layers).to(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            for i, lin in enumerate(model[::2], start=1):
                lin.weight.copy_(self.params[f"W{i}"][m].T)
                lin.bias.copy_(self.params[f"b{i}"][m].view(-1))
        return model


POLICIES = {"mlp": MLPPolicy, "tabular": TabularPolicy}


def make_policy(kind: str, spec: ToySpec, seeds, *, hidden: int = 64, activation: str = "relu",
                depth: int = 2, init_scale: float = 1.0, device="auto", dtype=torch.float32) -> BatchedPolicy:
    """A batched policy: ``kind`` is ``"mlp"`` (000 Sec. 3.2.1) or ``"tabular"``; one member per seed.
    ``hidden``, ``activation``, ``depth`` and ``init_scale`` are the MLP's (:class:`MLPPolicy`)."""
    check_choice("policy", kind, POLICIES)
    if kind == "mlp":
        return MLPPolicy(spec, seeds, hidden=hidden, activation=activation, depth=depth,
                         init_scale=init_scale, device=device, dtype=dtype)
    return TabularPolicy(spec, seeds, device=device, dtype=dtype)


def as_seeds(seeds) -> torch.Tensor:
    """Seeds as a 1-D int64 tensor: a count ``n`` means ``0..n-1``; a list is taken as given (validated)."""
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds: expected a positive count or a list of seeds, got {seeds!r}")
        return torch.arange(int(seeds), dtype=torch.int64)
    try:
        t = torch.as_tensor(seeds)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"seeds: expected a count or a 1-D list of non-negative integers, got {seeds!r}") from None
    if t.ndim != 1 or t.numel() == 0 or t.dtype.is_floating_point or t.dtype == torch.bool or bool((t < 0).any()):
        raise ValueError(f"seeds: expected a count or a 1-D list of non-negative integers, got {seeds!r}")
    return t.to(torch.int64).cpu()


def _as_index(index, n: int, device) -> torch.Tensor:
    if isinstance(index, slice):
        return torch.arange(n, device=device)[index]
    t = torch.as_tensor(index, device=device)
    if t.ndim == 0:
        t = t[None]
    if t.dtype == torch.bool:
        t = t.nonzero().flatten()
    if t.numel() == 0 or bool((t < -n).any()) or bool((t >= n).any()):
        raise ValueError(f"index: expected member indices in [0, {n}), got {index!r}")
    return t.to(torch.int64)
