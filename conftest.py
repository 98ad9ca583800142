"""Root pytest configuration, shared by the unit tests (tests/) and nbval's re-execution of book/*.ipynb.

Kernels started by nbval inherit this process's environment, so setting it here, before any kernel starts,
keeps executed chapters quiet and harmless:

- ``PREFDYN_PROGRESS=0``: no progress bars in outputs (they would make nbval flaky);
- ``PREFDYN_RESULTS_DIR``: a temporary folder, so re-executing a chapter never rewrites book/data/*.json.
"""

import os
import tempfile


def pytest_configure(config):
    os.environ["PREFDYN_PROGRESS"] = "0"
    os.environ.setdefault("PREFDYN_RESULTS_DIR", tempfile.mkdtemp(prefix="prefdyn-test-results-"))
