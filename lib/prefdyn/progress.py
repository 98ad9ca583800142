"""Progress bars that never end up in an executed chapter.

Chapters are compared literally by nbval, so a progress bar (which prints timings) must not reach a stored
output. ``bar`` is tqdm, switched by the environment variable ``PREFDYN_PROGRESS``:

- ``PREFDYN_PROGRESS=0``: silent. The chapter runner and the test suite set it for every kernel they start;
- ``PREFDYN_PROGRESS=1``: always shown;
- unset: shown only when standard error is a terminal (so scripts and pipes stay quiet).
"""

from __future__ import annotations

import os
import sys

from tqdm.std import tqdm  # not tqdm.auto: its notebook bar needs ipywidgets and warns inside kernels

ENV = "PREFDYN_PROGRESS"


def enabled() -> bool:
    """Whether progress bars are shown now (see the module docstring)."""
    value = os.environ.get(ENV)
    if value is not None:
        return value.strip().lower() not in ("0", "false", "no", "off", "")
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar(iterable=None, total=None, desc=None, **kwargs):
    """A tqdm progress bar, disabled unless :func:`enabled` (never inside an executed chapter)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, total=total, desc=desc, disable=not enabled(), **kwargs)
