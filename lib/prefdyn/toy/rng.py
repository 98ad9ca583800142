"""Counter-based randomness of the toy: a 32-bit integer hash of (seed, stream, index).

A member's initial weights (stream 1), its pairs (stream 2, :func:`prefdyn.toy.space.sample_rejected`) and
its PPO samples (stream 3, :mod:`prefdyn.rlhf`) depend only on its seed, never on the batch it is trained in.
"""

from __future__ import annotations

import torch

__all__ = ["hash_keys", "counter_uniform"]


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 ``x`` in [0, 2**32) without int64 overflow (c split in 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash (C. Wellons) on int64 tensors holding 32-bit values."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def hash_keys(*keys) -> torch.Tensor:
    """Hash a tuple of broadcastable int64 tensors (or ints) to 32-bit values, order-sensitive."""
    h = None
    for k in keys:
        k = torch.as_tensor(k, dtype=torch.int64) if not isinstance(k, torch.Tensor) else k.to(torch.int64)
        k = k & _M32
        h = _hash32(k ^ 0x9E3779B9) if h is None else _hash32(_hash32(h) ^ k)
    return h


def counter_uniform(seeds: torch.Tensor, stream: int, n: int, dtype=torch.float64) -> torch.Tensor:
    """Uniform numbers in (0, 1) of shape ``[M, n]``: row m depends only on (seeds[m], stream, index).

    Counter-based (hash of the key), so a member's random numbers do not depend on which other members
    share its batch. 32 bits of resolution, plenty for initial weights.
    """
    seeds = torch.as_tensor(seeds, dtype=torch.int64)
    idx = torch.arange(n, dtype=torch.int64, device=seeds.device)
    h = hash_keys(seeds[:, None], stream, idx[None, :])
    return (h.to(torch.float64) + 0.5).div_(2.0 ** 32).to(dtype)
