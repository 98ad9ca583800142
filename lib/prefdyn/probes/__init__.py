"""LLM log-prob probes for any Hugging Face causal LM (000 Sec. 5, Fig. 10).

The toy of :mod:`prefdyn.toy` shows the 3D-properties on 10 responses; this package measures the same
quantities on a real language model:

- :mod:`.pairs` - preference pairs as token ids (:func:`tokenize_pairs` as TRL 1.16 tokenizes them,
  :func:`token_pairs` checks and truncates) and their padded batches, chosen and rejected in one forward;
- :mod:`.logprobs` - batched per-token and per-sequence log-probs (:func:`pair_logprobs`): prompt and
  padding masked, sum and per-token mean both returned, independent of padding side, batch size and
  batch composition;
- :mod:`.gradients` - the gradient probes of any loss of :mod:`prefdyn.losses` (or a user's loss):
  dl/dlog pi+-, log|dl/dpi+-| (000 Sec. 3.1), their ratio (000 Cor. 1), the per-token drift from the
  reference, per pair (:func:`gradient_probes`) and per step (:func:`probe_row`);
- :mod:`.train` - a thin preference-training loop (:func:`train_preference`) that logs them: cached
  reference log-probs, gradient accumulation, ``device="auto"``, bf16 autocast on CUDA, a progress bar,
  any local model directory (:func:`load_model`, ``device_map="auto"`` on GPUs).

- :mod:`.callback` - :class:`ThreeDCallback`, a ``transformers.TrainerCallback`` that logs the probes and
  warns of degradation and drastic drops during a TRL ``DPOTrainer`` run (imported on first use: it needs
  ``transformers``).

``python -m prefdyn.probes --help`` runs the loop from the command line on a local model directory.
``transformers`` is imported only to load a model or a tokenizer (:func:`load_model`); everything else
works on any module whose forward takes ``input_ids``/``attention_mask`` and returns ``.logits``.
"""

from . import gradients, logprobs, pairs, train
from .gradients import *  # noqa: F401,F403
from .logprobs import *  # noqa: F401,F403
from .pairs import *  # noqa: F401,F403
from .train import *  # noqa: F401,F403

__all__ = [*pairs.__all__, *logprobs.__all__, *gradients.__all__, *train.__all__, "ThreeDCallback"]


def __getattr__(name: str):
    """``ThreeDCallback`` on first use (its module imports ``transformers``; the rest of the package does not)."""
    if name == "ThreeDCallback":
        from .callback import ThreeDCallback

        return ThreeDCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
