"""Small language models made here, their arithmetic task and the preference data of 000 Sec. 5 / Table 4.

- :mod:`.task` - the task as text (fixed-width ``a+b=`` prompts, plain and worked answers), the character
  tokenizer and the rule-based verifier (000's GPT-4 grading, 000 Table 5);
- :mod:`.models` - the two GPT-2 models (the policy and the "other LLM" of 000 Table 4): specs,
  reproducible training (``scripts/make_models.py``), offline loading, seeded sampling;
- :mod:`.prefdata` - accuracy, on-policy sampling (8 per prompt) graded by the verifier, and the
  preference pairs of the four scenarios of 000 Table 4 in the format of :mod:`prefdyn.probes`;
- :mod:`.reward` - a reward model on the same pairs ("the same transformer with a scalar head", 000 Sec. 4),
  its Bradley-Terry training, DPO's implicit-reward accuracy, and the two compared over training (000
  Fig. 4, Fig. 11);
- :mod:`.rl` - rule-based scores of responses (``correct``, ``digits``, ``format``, ``total``), RLOO with a KL
  penalty on them, and DPO against RLOO on pairs scored by the same rules (000 Sec. 5.2.1 / Table 3).

``transformers`` is imported only when a model or tokenizer is built or loaded.
"""

from . import models, prefdata, reward, rl, task
from .models import *  # noqa: F401,F403
from .prefdata import *  # noqa: F401,F403
from .reward import *  # noqa: F401,F403
from .rl import *  # noqa: F401,F403
from .task import *  # noqa: F401,F403

__all__ = [*task.__all__, *models.__all__, *prefdata.__all__, *reward.__all__, *rl.__all__]
