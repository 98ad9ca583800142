"""Fixtures shared by the tests: one offline site build per pytest session (``site``), and one torch
thread for the language-model tests (``one_thread``).

``site`` builds the book with Jupyter Book 1.x into a temporary folder, without executing anything (the
chapters in book/ are already executed), warnings as errors, nitpicky (``-W -n --keep-going``).
tests/test_site.py checks the HTML; tests/test_browser.py loads the same build in headless Chromium.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def site() -> Iterator[Path]:
    """The root of the built HTML site (the folder holding index.html).

    It lives in a folder of its own (not under pytest's numbered temporary folders, which concurrent
    pytest sessions of the same user prune), removed at the end of the session."""
    out = Path(tempfile.mkdtemp(prefix="prefdyn-site-"))
    try:
        exe = Path(sys.executable).with_name("jupyter-book")
        proc = subprocess.run([str(exe), "build", str(ROOT), "--builder", "html", "--path-output", str(out),
                               "-W", "-n", "--keep-going"], cwd=ROOT, capture_output=True, text=True,
                              timeout=1200)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
        yield out / "_build" / "html"
    finally:
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a test module (restored afterwards): on the shared 2-core machine more threads
    made the language-model tests several times slower (generation about 60x)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
