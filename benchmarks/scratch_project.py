"""A scratch copy of this repository for the benchmarks, Git and DVC initialised.

Params are overridden through the parsed params.yaml by dotted key, and a key that does not
exist is an error: a benchmark never runs silently on other settings than it says.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = ["dvc.yaml", "params.yaml", "stages", "data/raw", ".dvcignore", ".gitignore"]


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
    """This repository's pipeline in `destination`, params overridden, committed."""
    for name in FILES:
        source, target = REPO / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    set_params(destination, overrides or {})
    run(destination, "git", "init", "-q")
    run(destination, "git", "config", "user.email", "bench@example.invalid")
    run(destination, "git", "config", "user.name", "bench")
    run(destination, sys.executable, "-m", "dvc", "init", "-q")
    commit(destination, "scratch project")
    return destination


def commit(project: Path, message: str) -> None:
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", message, "--allow-empty")


def run(project: Path, *args: str) -> float:
    """Run a command in the project (this Python's tools first on PATH); its wall seconds."""
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/tmp"),
    }
    started = time.perf_counter()
    done = subprocess.run(args, cwd=project, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def dvc(project: Path, *args: str) -> float:
    return run(project, sys.executable, "-m", "dvc", *args)
