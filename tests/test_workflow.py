"""The publishing workflow deploys only what passed the README's test command, and the licence agrees.

``.github/workflows/pages.yml`` is read as YAML and checked against the files it must agree with: the
README's test command (read from the README, not repeated here), the Python of ``environment.yml``, the
torch pin of ``requirements.lock``, the Makefile's browser variable; ``LICENSE`` is checked against
pyproject's ``license``. Each check runs once on the real files and once on a broken copy, so that a
check that could never fail would show.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pages.yml"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: A pinned major version (``@v7``, or ``@v7.0.1``) or a full commit SHA; never a branch such as ``@main``.
PINNED = re.compile(r"^[\w.-]+/[\w./-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$")
#: The first line of each licence's canonical text, by SPDX identifier.
LICENSE_FIRST_LINE = {"MIT": "MIT License", "Apache-2.0": "Apache License", "BSD-3-Clause": "BSD 3-Clause License"}


def readme_test_command() -> str:
    """The test command as the README's section "The two commands" gives it: the command of its code block
    that runs the tests (its comment dropped)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    found = [c for c in commands if c and "test" in c.split()]
    assert len(found) == 1, f"expected one test command in the README's code block, found {found}"
    return found[0]


def load_workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _needs(job: dict) -> list[str]:
    needs = job.get("needs", [])
    return [needs] if isinstance(needs, str) else list(needs)


def _uses(step: dict) -> str:
    return step.get("uses", "").split("@", 1)[0]


def deploy_problems(wf: dict, command: str) -> list[str]:
    """What lets an untested site reach GitHub Pages: no job runs ``command``, the deploy job does not need
    it, the uploaded site is not built after the test (in that job, or in a job that needs it), or a step
    runs on after a failure."""
    jobs = wf["jobs"]
    testers = [name for name, job in jobs.items()
               if any(str(s.get("run", "")).strip() == command for s in job.get("steps", []))]
    if len(testers) != 1:
        return [f"expected one job whose step runs exactly {command!r}, found {testers}"]
    tester = testers[0]
    problems = []
    deployers = [n for n, j in jobs.items() if any(_uses(s) == "actions/deploy-pages" for s in j.get("steps", []))]
    if not deployers:
        problems.append("no job deploys with actions/deploy-pages")
    for name in deployers:
        if tester not in _needs(jobs[name]):
            problems.append(f"job {name!r} deploys without needing {tester!r} (needs: {_needs(jobs[name])})")
    for name, job in jobs.items():
        steps = job.get("steps", [])
        for i, step in enumerate(steps):
            if _uses(step) != "actions/upload-pages-artifact":
                continue
            ran_before = any(str(s.get("run", "")).strip() == command for s in steps[:i])
            if not (ran_before or tester in _needs(job)):
                problems.append(f"job {name!r} uploads the site neither after {command!r} nor needing {tester!r}")
    for name in {tester, *deployers}:
        job = jobs[name]
        if job.get("continue-on-error") or job.get("if"):
            problems.append(f"job {name!r} has continue-on-error or an if: it may run or pass after a failure")
        for step in job.get("steps", []):
            if step.get("continue-on-error") or re.search(r"always\(\)|failure\(\)", str(step.get("if", ""))):
                problems.append(f"a step of {name!r} goes on after a failure: {step}")
    return problems


def unpinned_actions(wf: dict) -> list[str]:
    """Every ``uses:`` of every job that does not name a pinned version."""
    return [s["uses"] for job in wf["jobs"].values() for s in job.get("steps", [])
            if "uses" in s and not PINNED.match(s["uses"])]


def test_readme_names_one_test_command():
    assert readme_test_command().startswith("make ")


def test_deploy_needs_the_job_that_runs_the_readme_test_command():
    assert deploy_problems(load_workflow(), readme_test_command()) == []


@pytest.mark.parametrize("breakage", ["no-needs", "other-command", "upload-first", "deploy-always", "test-may-fail"])
def test_deploy_check_catches_an_untested_deploy(breakage):
    wf = copy.deepcopy(load_workflow())
    command = readme_test_command()
    jobs = wf["jobs"]
    tester = next(n for n, j in jobs.items() if any(str(s.get("run", "")).strip() == command for s in j["steps"]))
    deployer = next(n for n, j in jobs.items() if any(_uses(s) == "actions/deploy-pages" for s in j["steps"]))
    steps = jobs[tester]["steps"]
    if breakage == "no-needs":
        jobs[deployer].pop("needs")
    elif breakage == "other-command":
        next(s for s in steps if str(s.get("run", "")).strip() == command)["run"] = command + " PYTEST_ARGS=-x"
    elif breakage == "upload-first":                  # the uploaded site is not the one built after the test
        upload = next(s for s in steps if _uses(s) == "actions/upload-pages-artifact")
        steps.remove(upload)
        steps.insert(0, upload)
    elif breakage == "deploy-always":                 # deploys even when the tests failed
        jobs[deployer]["if"] = "${{ always() }}"
    else:                                             # a failed test lets the job go on and succeed
        next(s for s in steps if str(s.get("run", "")).strip() == command)["continue-on-error"] = True
    assert deploy_problems(wf, command) != []


def test_every_action_is_pinned_to_a_major_version():
    wf = load_workflow()
    assert [s for job in wf["jobs"].values() for s in job["steps"] if "uses" in s], "the workflow uses no action"
    assert unpinned_actions(wf) == []
    broken = copy.deepcopy(wf)
    step = next(s for job in broken["jobs"].values() for s in job["steps"] if "uses" in s)
    step["uses"] = step["uses"].split("@")[0] + "@main"
    assert unpinned_actions(broken) == [step["uses"]]


def test_python_is_the_one_of_the_lock():
    """The workflow's Python is the one ``environment.yml`` (the conda route to the same lock) names."""
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pinned = [d.split("=", 1)[1] for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    versions = [s["with"]["python-version"] for job in load_workflow()["jobs"].values() for s in job["steps"]
                if _uses(s) == "actions/setup-python"]
    assert pinned and versions and all(str(v) == pinned[0] for v in versions), (pinned, versions)


def test_torch_installs_as_the_cpu_build():
    """The lock pins torch without a local label and names no index, so the job that installs it must give pip
    PyTorch's CPU index (else PyPI's CUDA build of the same version is installed)."""
    lock = (ROOT / "requirements.lock").read_text()
    pin = re.search(r"^torch==(\S+)", lock, re.M)
    assert pin, "requirements.lock pins no torch"
    if "+cpu" in pin.group(1) or CPU_INDEX in lock:
        return
    command = readme_test_command()
    for job in load_workflow()["jobs"].values():
        if any(str(s.get("run", "")).strip() == command for s in job["steps"]):
            env = job.get("env", {})
            assert CPU_INDEX in (env.get("PIP_EXTRA_INDEX_URL", "") + env.get("PIP_INDEX_URL", "")), env


def test_browser_comes_through_the_makefile_variable():
    """The job sets the Makefile's browser variable (so ``make chromium`` does not try apt-get on the runner)."""
    makefile = (ROOT / "Makefile").read_text()
    var = re.search(r"PREFDYN_CHROMIUM=\$\((\w+)\)", makefile).group(1)
    assert re.search(rf"^{var} \?=", makefile, re.M), f"the Makefile's {var} is not overridable from the environment"
    command = readme_test_command()
    for job in load_workflow()["jobs"].values():
        if any(str(s.get("run", "")).strip() == command for s in job["steps"]):
            assert str(job.get("env", {}).get(var, "")).startswith("/"), job.get("env")


def test_license_file_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spdx = project["license"]
    assert isinstance(spdx, str), f"pyproject's license is not an SPDX expression: {spdx!r}"
    lines = (ROOT / "LICENSE").read_text().splitlines()
    assert lines[0] == LICENSE_FIRST_LINE[spdx], (spdx, lines[0])
    assert "Copyright (c) 2026 The prefdyn authors" in lines


def test_readme_cpu_install_matches_the_lock_and_pyproject():
    """The README's install without the lock pins the lock's torch from the CPU index and names extras that
    pyproject declares."""
    text = (ROOT / "README.md").read_text()
    torch_cmd = re.search(r"^python -m venv \.venv && \.venv/bin/pip install (.+)$", text, re.M)
    project_cmd = re.search(r'^\.venv/bin/pip install -e "\.\[([\w,]+)\]"$', text, re.M)
    assert torch_cmd and project_cmd, "the README's install without the lock is missing"
    lock_torch = re.search(r"^torch==(\S+)", (ROOT / "requirements.lock").read_text(), re.M).group(1)
    assert torch_cmd.group(1).split() == ["--index-url", CPU_INDEX, f"torch=={lock_torch.split('+')[0]}"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(project_cmd.group(1).split(",")) <= set(extras), (project_cmd.group(1), sorted(extras))
