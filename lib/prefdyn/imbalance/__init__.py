"""Gradient imbalance (004, Ma et al.): its theory checked against real updates (:mod:`.theory`) and
the Balanced-DPO benchmark of 004 Sec. 6.1 (:mod:`.benchmark`). Both use the loss zoo
(:mod:`prefdyn.losses`); the benchmark uses the toy trainer's batched policies and optimisers."""

from . import benchmark, theory
from .benchmark import *  # noqa: F401,F403
from .theory import *  # noqa: F401,F403

__all__ = [*theory.__all__, *benchmark.__all__]
