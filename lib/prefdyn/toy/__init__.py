"""The toy model of 000 Sec. 3.2: a batched, GPU-capable trainer in which the 3D-properties can be watched.

000 Sec. 3.2.1 builds a discrete space of 4 prompts x 10 responses. A policy maps a one-hot prompt to a
categorical distribution over the responses. Step 1 (SFT) fits the policy to hand-specified output
probabilities; step 2 runs DPO on preference pairs whose chosen response is the prompt's optimal one and
whose rejected response is drawn from the rejected block. This module implements that set-up for any
loss of :mod:`prefdyn.losses`, and trains many seeds *and* configurations (losses, loss parameters,
initial distributions, learning rates) at once: every tensor carries a leading member dimension ``M``.

Reading of the paper's set-up (000 Sec. 3.2.1, Fig. 1), where the text leaves room
---------------------------------------------------------------------------------------
- Response space. With ``P`` prompts, ``n_rejected`` rejected and ``n_unseen`` unseen responses,
  ``R = P + n_rejected + n_unseen``; indices ``0..P-1`` are the chosen block (response ``p`` is optimal for
  prompt ``p``, "response 1 is optimal for prompt 1"), then the rejected block, then the unseen block.
  Defaults 4 / 4 / 2 give the paper's 4 x 10.
- Roles relative to one prompt ``x`` (what the records measure):
  *chosen* = the optimal response ``x``; *rejected* = the rejected block (every rejected response occurs
  with every prompt, since rejected responses are drawn at random per pair); *unseen* = the unseen block,
  responses that never occur in any pair ("the final 2 dimensions to unseen responses not present in the
  preference dataset"); *other* = the other prompts' optimal responses. These are in the data, but never
  paired with ``x``. The paper does not say how to count them; we keep them apart from "unseen" and
  record them separately, so the dispersion we report (unseen mass) is the paper's narrow reading, and
  the mass on *other* is shown next to it.
- pi(rejected) in the records is the likelihood of *one* rejected response (the mean over the rejected block),
  the quantity the paper sets to 0.12 in Sec. 3.2.2; the summed rejected mass is recorded as well.
- The data. "Optimally chosen responses and randomly selected rejected responses": at every step each
  prompt gets ``pairs_per_prompt`` pairs, chosen = its optimal response, rejected drawn uniformly (with
  replacement) from the rejected block, fresh at every step (an infinite stream of pairs, i.e. SGD over
  the pair distribution rather than epochs over a fixed finite set). The draw depends only on
  (seed, step, prompt, slot), so every configuration trained with the same seed sees the same pairs
  (common random numbers: differences between losses are not sampling noise).
- The initial distribution of Sec. 3.2.2, "the likelihood of each chosen and rejected response at 0.12":
  every response of the chosen and rejected blocks at 0.12 (including the other prompts' optimal
  responses), the remaining 0.04 shared by the 2 unseen responses (see :func:`initial_distribution`).
- The scenarios of Fig. 3 / Table 4: "on-policy" = high initial probability, "off-policy" = low, for the
  chosen and the rejected block separately (see :data:`SCENARIOS`, :func:`scenario_distribution`). The
  paper gives no numbers for the toy scenarios; ours are parameters.
- The MLP ("a three-layer MLP that processes a one-hot vector"): three linear layers,
  one-hot(P) -> H -> H -> R, with an activation (ReLU by default) between them, initialised like
  ``torch.nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases). Hidden width,
  activation, optimiser, learning rate and step counts are not given in the paper; they are parameters
  here. SFT (step 1) minimises the cross-entropy to the target probabilities (= KL + const) with Adam; the
  reference policy pi_0 of the preference losses is the policy *after* SFT (its actual probabilities).
- The tabular-logit policy (one free logit per prompt and response) is the contrast case: for any loss
  of the log-probs of the pair, the logit gradient is ``g+ (e+ - pi) + g- (e- - pi)``; for DPO-like losses
  ``g+ = -g-`` so the ``pi`` terms cancel and the logits of responses outside the pair never move.
  Dispersion in the MLP therefore comes from shared parameters, not from the loss alone.

Gradients in probability space
------------------------------
Every step records dl/dpi+ and dl/dpi- per pair from the same backward pass that trains the policy:
``torch.autograd.grad`` gives the gradient of the loss with respect to the gathered log-probs of the pairs
(any loss, the book's or your own, is differentiated by autograd), and the policy's written-out backward
pass (:meth:`prefdyn.toy.policy.BatchedPolicy.logits_and_vjp`, tested against autograd) carries it to the
parameters; then dl/dpi = (dl/dlog pi) / pi (000 Sec. 3.1). For DPO the ratio
|dl/dpi-| / |dl/dpi+| = pi+/pi- (000 Corollary 1); the tests check this and compare the recorded
gradients with :func:`prefdyn.losses.logprob_grads` when it exists.

Batched ensembles
-----------------
Every layer is one leaf tensor with a leading member dimension ``[M, ...]``, and the forward pass is
``torch.baddbmm`` over members. The optimisers here (:class:`BatchedAdam`,
:class:`BatchedSGD`) are elementwise with a per-member learning rate, so members never interact: a member
trained in a batch equals the same member trained alone (to float rounding, tested). Losses are evaluated
once per configuration group on a contiguous slice of members; everything else is one computation.

Randomness is counter-based (a 32-bit integer hash of seed, stream and index, :func:`counter_uniform`):
a member's initial weights and its pairs depend only on its seed, never on the batch it is trained in.

Modules
-------
- :mod:`prefdyn.toy.space`     the prompt x response space, SFT targets, scenarios, the pairs;
- :mod:`prefdyn.toy.rng`       counter-based randomness;
- :mod:`prefdyn.toy.policy`    the batched tabular and MLP policies;
- :mod:`prefdyn.toy.optim`     batched Adam and SGD;
- :mod:`prefdyn.toy.train`     SFT, :class:`ToyConfig`, :func:`run_grid`, :func:`train`;
- :mod:`prefdyn.toy.verdicts`  the 3D-properties, phases, scenario claims and Prop. 1 from the summaries.

What a run records and its summaries over seeds are :mod:`prefdyn.records` and :mod:`prefdyn.stats`
(shared with :mod:`prefdyn.rlhf`); figure helpers are in :mod:`prefdyn.plotting`, the benchmark in
:mod:`prefdyn.bench`. The names below are re-exported here, so ``prefdyn.toy.train(...)`` works.

Seed paper: ``shared/seeds/000_5df0dc2126a6b6d8.txt`` (000), Sec. 3.2, Figs. 1-3, Prop. 1, App. B, D.
"""

from .optim import OPTIMIZERS, BatchedAdam, BatchedSGD, make_optimizer
from .policy import (ACTIVATIONS, POLICIES, BatchedPolicy, MLPPolicy, TabularPolicy, as_seeds, log_softmax_responses,
                     make_policy)
from .rng import counter_uniform, hash_keys
from .space import (READINGS, SCENARIO_LABELS, SCENARIOS, ToySpec, check_pairable, initial_distribution, other_probability,
                    resolve_init, sample_rejected, scenario_distribution)
from .sensitivity import FACTORS, SENSITIVITY_KEYS, Variant, scenario_sensitivity, scenario_variants
from .train import (ToyConfig, ToyRun, feature_overlap, first_step_transfer, logit_change, output_change, run_grid,
                    sft, train)
from .verdicts import (EXTREMES, PHASE_CHECKS, PROP1_SIGNS, SCENARIO_CLAIMS, THREE_D_LABELS, falls_further,
                       matched_beta_table, matched_removal, matched_removal_reading, phase_checks, prop1_series, prop1_test, removed_by,
                       scenario_claims, three_d)

__all__ = [
    "ToySpec", "check_pairable", "READINGS", "other_probability", "SCENARIOS", "SCENARIO_LABELS", "initial_distribution", "scenario_distribution", "resolve_init",
    "sample_rejected", "counter_uniform", "hash_keys",
    "BatchedPolicy", "TabularPolicy", "MLPPolicy", "POLICIES", "ACTIVATIONS", "make_policy", "as_seeds",
    "log_softmax_responses", "BatchedAdam", "BatchedSGD", "OPTIMIZERS", "make_optimizer",
    "sft", "ToyConfig", "ToyRun", "run_grid", "train", "output_change", "feature_overlap", "logit_change", "first_step_transfer",
    "Variant", "FACTORS", "SENSITIVITY_KEYS", "scenario_variants", "scenario_sensitivity",
    "three_d", "THREE_D_LABELS", "removed_by", "PHASE_CHECKS", "phase_checks", "EXTREMES", "SCENARIO_CLAIMS",
    "scenario_claims", "PROP1_SIGNS", "prop1_test", "prop1_series", "matched_removal", "matched_removal_reading",
    "matched_beta_table", "falls_further",
]
