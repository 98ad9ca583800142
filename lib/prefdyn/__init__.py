"""prefdyn: the training dynamics of Direct Preference Optimization (DPO).

The library behind the executable book. One concept per module:

- ``prefdyn.losses``    the loss zoo (DPO and its variants), the one source of truth for every loss;
- ``prefdyn.symbolic``  sympy derivations of their gradients;
- ``prefdyn.printed``   the papers' printed equations and the errata;
- ``prefdyn.fields``    loss landscapes, gradient fields and gradient flows;
- ``prefdyn.toy``       the batched toy trainer (000 Sec. 3.2);
- ``prefdyn.rlhf``      reward model and KL-regularised policy optimisation on the toy (000 Sec. 4);
- ``prefdyn.plotting``  the one plotting style of the book;
- ``prefdyn.progress``  progress bars that stay out of executed chapters;
- ``prefdyn.results``   the chapters' JSON results;
- ``prefdyn.chapters``  chapter declarations, parameter validation and the papermill runner;
- ``prefdyn.cli``       the ``prefdyn`` command.

Seed papers are quoted by their file number in ``shared/seeds``: 000 (Yan et al., 3D-properties),
002 (Feng et al., gradient fields), 004 (Ma et al., gradient imbalance).
"""

__version__ = "0.1.0"
