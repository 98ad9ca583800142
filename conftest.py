"""Root pytest configuration, shared by the unit tests (tests/) and nbval's re-execution of book/*.ipynb.

Kernels started by nbval inherit this process's environment, so setting it here, before any kernel starts,
keeps executed chapters quiet and harmless:

- ``PREFDYN_PROGRESS=0``: no progress bars in outputs (they would make nbval flaky);
- ``PREFDYN_RESULTS_DIR``: a temporary folder (removed at the end of the session), so re-executing a
  chapter never rewrites book/data/*.json. The JSON each re-executed chapter writes there is what
  ``tests/test_regression.py`` compares with the golden ``book/data/<id>.json`` under the chapter's
  tolerances; those comparisons are moved to the end of the session, after nbval has executed every
  chapter (a chapter nbval did not execute is executed by the comparison itself).
"""

import os
import shutil
import tempfile

_OWN_RESULTS_DIR = None


def pytest_configure(config):
    global _OWN_RESULTS_DIR
    config.addinivalue_line("markers", "after_chapters: run after nbval has executed the chapters of book/")
    os.environ["PREFDYN_PROGRESS"] = "0"
    if not os.environ.get("PREFDYN_RESULTS_DIR"):
        _OWN_RESULTS_DIR = tempfile.mkdtemp(prefix="prefdyn-test-results-")
        os.environ["PREFDYN_RESULTS_DIR"] = _OWN_RESULTS_DIR


def pytest_collection_modifyitems(session, config, items):
    """Run the golden-results comparisons last, after nbval's executions of the chapters."""
    last = [it for it in items if it.get_closest_marker("after_chapters")]
    if last:
        items[:] = [it for it in items if not it.get_closest_marker("after_chapters")] + last


def pytest_unconfigure(config):
    if _OWN_RESULTS_DIR:
        shutil.rmtree(_OWN_RESULTS_DIR, ignore_errors=True)
        os.environ.pop("PREFDYN_RESULTS_DIR", None)
