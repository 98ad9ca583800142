"""Small language models made here, their arithmetic task and the preference data of 000 Sec. 5 / Table 4.

- :mod:`.task` - the task as text (fixed-width ``a+b=`` prompts, plain and worked answers), the character
  tokenizer and the rule-based verifier (000's GPT-4 grading, 000 Table 5);
- :mod:`.models` - the two GPT-2 models (the policy and the "other LLM" of 000 Table 4): specs,
  reproducible training (``scripts/make_models.py``), offline loading, seeded sampling;
- :mod:`.prefdata` - accuracy, on-policy sampling (8 per prompt) graded by the verifier, and the
  preference pairs of the four scenarios of 000 Table 4 in the format of :mod:`prefdyn.probes`.

``transformers`` is imported only when a model or tokenizer is built or loaded.
"""

from . import models, prefdata, task
from .models import *  # noqa: F401,F403
from .prefdata import *  # noqa: F401,F403
from .task import *  # noqa: F401,F403

__all__ = [*task.__all__, *models.__all__, *prefdata.__all__]
