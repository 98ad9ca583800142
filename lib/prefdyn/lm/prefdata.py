"""Preference pairs of the four scenarios of 000 Table 4, made with the small models of
:mod:`prefdyn.lm.models` and graded by the rule-based verifier of :mod:`prefdyn.lm.task`.

000 Sec. 5.1 builds MATH*: the policy samples 8 responses per training prompt, GPT-4 picks the best and
the worst, and prompts "where all responses were uniformly good or bad" are dropped. Off-policy chosen
responses are the dataset's solutions, off-policy rejected ones are sampled from another LLM (Qwen1.5-7B).
000 Table 4 assigns them to the scenarios (chosen / rejected):

- Scenario 1: policy / policy (on-policy DPO);
- Scenario 2: dataset solutions / policy;
- Scenario 3: policy / other LLM;
- Scenario 4: dataset solutions / other LLM.

(The same assignment as 000 Fig. 3's caption: S2 has the off-policy chosen, S3 the off-policy rejected.)

Here (:func:`make_pairs`):

- **prompts**: fresh problems of the training split (as 000 takes MATH's training prompts);
- **on-policy**: ``n = 8`` samples per prompt from the policy (model A) at temperature 1, each scored by
  :func:`prefdyn.lm.task.score`; chosen = the best, rejected = the worst; ties go to the first sample in
  sampling order with that score (``torch.argmax``/``argmin`` return the first);
- **off-policy chosen**: the reference solution in the worked style (:func:`prefdyn.lm.task.answer_text`),
  which the policy produces only in a minority of its samples;
- **off-policy rejected**: the worst of ``n = 8`` samples of the other model (model B, mostly worked
  style) at temperature 1;
- **filter** (000's rule): a prompt is kept only if the policy's samples are neither all correct nor all
  wrong, and at least one sample of the other model is wrong (else it has no off-policy rejected). So
  every chosen response is correct and every rejected one wrong. With ``shared=True`` (default) the four
  scenarios use the same kept prompts (they differ only in where the responses come from); with
  ``shared=False`` each scenario keeps the prompts its own two sources allow (S1: mixed policy samples;
  S2: a wrong policy sample; S3: a correct policy sample and a wrong other sample; S4: a wrong other
  sample). The fractions kept are in ``meta``.

Seeds: the prompts come from ``torch.Generator().manual_seed(seed)``, the policy's samples from a
generator seeded ``seed + 1``, the other model's from ``seed + 2``, the test sets from ``seed + 3``
(in distribution, held-out split) and ``seed + 4`` (out of distribution: ``digits + 1``-digit operands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..validate import check_bool, check_int
from . import task as T
from .models import generate

__all__ = ["SCENARIOS", "SOURCES", "accuracy", "Samples", "sample_scored", "PrefData", "make_pairs"]

#: 000 Table 4: scenario -> (source of the chosen, source of the rejected responses).
SCENARIOS = {1: ("policy", "policy"), 2: ("reference", "policy"), 3: ("policy", "other"),
             4: ("reference", "other")}
#: The response sources: the policy's own samples, the dataset's reference solutions, the other model's.
SOURCES = ("policy", "reference", "other")


def _scores(responses: list[list[str]], problems: T.Problems) -> torch.Tensor:
    return torch.tensor([[T.score(r, int(a), int(b), problems.digits) for r in rs]
                         for rs, a, b in zip(responses, problems.a, problems.b)], dtype=torch.float64)


def accuracy(model: Any, problems: T.Problems, *, greedy: bool = True, n: int = 1, seed: int = 0) -> float:
    """Exact-match accuracy of ``model`` on ``problems`` (verifier score 1): greedy decoding, or the mean
    over ``n`` samples per problem at temperature 1 (``torch.Generator().manual_seed(seed)``)."""
    check_bool("greedy", greedy)
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    g = None if greedy else torch.Generator().manual_seed(seed)
    resp = generate(model, problems.prompts, n=1 if greedy else n, greedy=greedy, generator=g)
    return float((_scores(resp, problems) == 1).double().mean())


@dataclass
class Samples:
    """``n`` sampled responses per problem and their verifier scores (float64 ``[P, n]``)."""

    problems: T.Problems
    responses: list[list[str]]
    scores: torch.Tensor

    def best(self) -> list[str]:
        """The best response per problem (the first sample with the highest score)."""
        i = self.scores.argmax(1)
        return [rs[int(k)] for rs, k in zip(self.responses, i)]

    def worst(self) -> list[str]:
        """The worst response per problem (the first sample with the lowest score)."""
        i = self.scores.argmin(1)
        return [rs[int(k)] for rs, k in zip(self.responses, i)]


def sample_scored(model: Any, problems: T.Problems, *, n: int = 8, seed: int = 0) -> Samples:
    """``n`` samples per problem from ``model`` at temperature 1 (``torch.Generator().manual_seed(seed)``),
    scored by the verifier."""
    check_int("n", n, 1)
    check_int("seed", seed, 0)
    resp = generate(model, problems.prompts, n=n, generator=torch.Generator().manual_seed(seed))
    return Samples(problems, resp, _scores(resp, problems))


@dataclass
class PrefData:
    """The result of :func:`make_pairs`.

    ``pairs[s]``: scenario ``s`` (1-4) as a list of ``{"prompt", "chosen", "rejected"}`` text dicts (no EOS:
    :func:`prefdyn.probes.tokenize_pairs` appends it), the format :mod:`prefdyn.probes` takes;
    ``problems[s]`` the problems behind them (same order); ``policy``/``other`` the graded samples of
    every prompt; ``test`` held-out in-distribution problems, ``ood`` out-of-distribution problems;
    ``meta`` the settings and the fractions of prompts kept."""

    pairs: dict[int, list[dict[str, str]]]
    problems: dict[int, T.Problems]
    policy: Samples
    other: Samples
    test: T.Problems
    ood: T.Problems
    meta: dict = field(default_factory=dict)


def make_pairs(policy: Any, other: Any, *, n_prompts: int = 512, n: int = 8, seed: int = 0, digits: int = 3,
               shared: bool = True, n_test: int = 500, n_ood: int = 500) -> PrefData:
    """The preference pairs of the four scenarios of 000 Table 4 (module docstring) from ``n_prompts``
    training-split prompts, ``n`` samples per prompt from ``policy`` and from ``other``."""
    check_int("n_prompts", n_prompts, 1)
    check_int("n", n, 2)
    check_int("seed", seed, 0)
    check_int("digits", digits, 1, 8)
    check_bool("shared", shared)
    check_int("n_test", n_test, 1)
    check_int("n_ood", n_ood, 1)
    probs = T.sample_problems(n_prompts, digits, split="train", seed=seed)
    pol = sample_scored(policy, probs, n=n, seed=seed + 1)
    oth = sample_scored(other, probs, n=n, seed=seed + 2)
    right, wrong = (pol.scores == 1).any(1), (pol.scores < 1).any(1)
    other_wrong = (oth.scores < 1).any(1)
    own = {1: right & wrong, 2: wrong, 3: right & other_wrong, 4: other_wrong}
    common = right & wrong & other_wrong
    texts = {"policy": (pol.best(), pol.worst()), "reference": (probs.answers("worked"), None),
             "other": (None, oth.worst())}
    pairs, kept_problems = {}, {}
    for s, (c_src, r_src) in SCENARIOS.items():
        keep = (common if shared else own[s]).nonzero().squeeze(1)
        chosen, rejected = texts[c_src][0], texts[r_src][1]
        pairs[s] = [{"prompt": probs.prompts[i], "chosen": chosen[i], "rejected": rejected[i]}
                    for i in keep.tolist()]
        kept_problems[s] = probs.select(keep)
    meta = {
        "n_prompts": n_prompts, "n_samples": n, "temperature": 1.0, "seed": seed, "digits": digits,
        "shared": shared, "reference_style": "worked",
        "frac_all_correct": float((~wrong).double().mean()), "frac_all_wrong": float((~right).double().mean()),
        "frac_other_all_correct": float((~other_wrong).double().mean()),
        "frac_kept_shared": float(common.double().mean()),
        "frac_kept_own": {s: float(m.double().mean()) for s, m in own.items()},
        "n_pairs": {s: len(p) for s, p in pairs.items()},
        "policy_sample_accuracy": float((pol.scores == 1).double().mean()),
        "other_sample_accuracy": float((oth.scores == 1).double().mean()),
    }
    test = T.sample_problems(n_test, digits, split="test", seed=seed + 3)
    ood = T.sample_problems(n_ood, digits + 1, split="any", seed=seed + 4)
    return PrefData(pairs, kept_problems, pol, oth, test, ood, meta)
