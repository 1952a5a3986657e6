"""The benchmarks' scratch projects: the tests' scaffold (tests/conftest.py `make_project`) on
the shipped params, overridden by dotted key, commands timed in them, and where their files are.

A key that does not exist is an error: a benchmark never runs silently on other settings than
it says.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "stages"))

from conftest import commit, make_project  # noqa: E402
from conftest import run as run_checked  # noqa: E402

from hpo import paths  # noqa: E402

__all__ = ["commit", "dvc", "make_scratch_project", "project_path", "run", "set_params"]


def set_params(project: Path, overrides: dict[str, Any]) -> None:
    """Set params by dotted key, e.g. {"tune.n_trials": 150}; every key must already exist."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        section = params
        for key in parents:
            section = section[key]
        if leaf not in section:
            raise KeyError(f"params.yaml has no {dotted}")
        section[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def make_scratch_project(destination: Path, overrides: dict[str, Any] | None = None) -> Path:
    """This repository's pipeline in `destination`, shipped params set by dotted key, committed."""
    make_project(destination, tiny=False)
    set_params(destination, overrides or {})
    commit(destination, "scratch project")
    return destination


def run(project: Path, *args: str) -> float:
    """Run a command in the project (this Python's tools first on PATH); its wall seconds."""
    started = time.perf_counter()
    run_checked(project, *args)
    return time.perf_counter() - started


def dvc(project: Path, *args: str) -> float:
    return run(project, sys.executable, "-m", "dvc", *args)


def project_path(project: Path, name: str) -> Path:
    """dvc.yaml's path `name` in `project`, as hpo.paths gives it to the stages (e.g. TRAIN)."""
    with contextlib.chdir(project):
        return project / getattr(paths, name)
