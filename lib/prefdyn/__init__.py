"""prefdyn: the training dynamics of Direct Preference Optimization (DPO).

The library behind the executable book. One concept per module; the dependency direction is
``losses`` -> the science modules -> ``chapters``/``cli``:

- ``prefdyn.losses``    the loss zoo and its registry (DPO and its variants; register your own), the one
                        source of truth for every loss;
- ``prefdyn.symbolic``  sympy derivations of their gradients;
- ``prefdyn.printed``   the papers' printed equations and the errata;
- ``prefdyn.fields``    loss landscapes, gradient fields and gradient flows;
- ``prefdyn.toy``       the batched toy trainer of 000 Sec. 3.2 (a package: ``space``, ``rng``, ``policy``,
                        ``optim``, ``train``, ``verdicts``);
- ``prefdyn.records``   what a run records per step, the indicators read from it and their summaries;
- ``prefdyn.stats``     means and intervals over seeds, curve bands, rank correlations;
- ``prefdyn.rlhf``      reward model and KL-regularised policy optimisation on the toy (000 Sec. 4);
- ``prefdyn.probes``    log-prob and gradient probes of Hugging Face causal LMs, a preference-training loop;
- ``prefdyn.lm``        the small GPT-2 models made here, their arithmetic task, the preference data of 000
                        Table 4;
- ``prefdyn.bench``     the batched trainer against a plain loop (``prefdyn bench toy``);
- ``prefdyn.plotting``  the one plotting style of the book and its figure helpers;
- ``prefdyn.tables``    tables of key numbers; ``prefdyn.results`` the chapters' JSON results;
- ``prefdyn.regression``  tolerances of the golden numbers; ``prefdyn.ledger`` the claims ledger (verdicts
                        computed from the chapters' results);
- ``prefdyn.validate``  argument checks at the API boundary; ``prefdyn.device`` devices and CPU settings;
- ``prefdyn.progress``  progress bars that stay out of executed chapters;
- ``prefdyn.chapters``  chapter declarations, parameter validation and the papermill runner;
- ``prefdyn.cli``       the ``prefdyn`` command.

``import prefdyn`` alone gives every module as an attribute, imported on first use (``prefdyn.toy.train``,
``prefdyn.losses.register``), so the ``prefdyn`` command starts without loading torch.

Seed papers are quoted by their file number in ``shared/seeds``: 000 (Yan et al., 3D-properties),
002 (Feng et al., gradient fields), 004 (Ma et al., gradient imbalance).
"""

import importlib

__version__ = "0.1.0"

_MODULES = ("losses", "symbolic", "printed", "fields", "toy", "records", "stats", "rlhf", "imbalance", "probes", "lm", "bench", "plotting",
            "tables", "results", "regression", "ledger", "validate", "device", "progress", "chapters", "cli")
__all__ = ["__version__", *_MODULES]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'prefdyn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_MODULES))
