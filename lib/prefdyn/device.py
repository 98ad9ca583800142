"""Where tensors live: resolve ``"auto"``/``"cpu"``/``"cuda"`` to a device, and the CPU settings of the
small batched computations (threads, subnormal floats). Shared by the toy trainer, RLHF and the probes."""

from __future__ import annotations

import torch

from .validate import check_int

__all__ = ["resolve_device", "cpu_settings"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise ``torch.device(device)`` (validated)."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, ValueError):
            raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:n]', got {device!r}") from None
    else:
        raise ValueError(f"device: expected 'auto', 'cpu' or 'cuda[:n]', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but no CUDA device is available (use device='auto')")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device: only cpu and cuda are supported, got {device!r}")
    return dev


class cpu_settings:
    """Context manager for the toy's tiny tensors on the CPU: ``threads`` intra-op threads (restored on
    exit; ``None`` leaves torch's setting) and flush-to-zero of subnormal floats (``flush_denormal``; set
    back to torch's default, off, on exit).

    Why: the toy's tensors are a few hundred kB, so intra-op threads only add synchronisation, which on
    a shared, oversubscribed 2-core machine made single steps 10-50x slower in our measurements; and
    Adam's second moments and the gradients of near-zero probabilities reach subnormal floats (below
    1.2e-38 in float32), which the CPU handles in slow microcode (2x per step measured). Flushing them to
    zero changes no recorded number at the precision we report.
    """

    def __init__(self, threads: int | None = 1, flush_denormal: bool = True):
        if threads is not None:
            check_int("threads", threads, 1)
        self.threads, self.flush = threads, bool(flush_denormal)

    def __enter__(self):
        self._old = torch.get_num_threads()
        if self.threads is not None and self.threads != self._old:
            torch.set_num_threads(self.threads)
        if self.flush:
            torch.set_flush_denormal(True)
        return self

    def __exit__(self, *exc):
        if self.threads is not None and torch.get_num_threads() != self._old:
            torch.set_num_threads(self._old)
        if self.flush:
            torch.set_flush_denormal(False)
        return False
