"""Fixtures that run the real pipeline (`dvc repro`) in a throw-away copy of the repository."""

from __future__ import annotations

import atexit
import functools
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml
from filelock import FileLock

from hpo.search.trial import PrunerEvidence

# Real PostgreSQL, MLflow server and Dask fixtures (tests/services.py).
pytest_plugins = ["services"]

REPO = Path(__file__).resolve().parents[1]
# What a run needs: code, data, pipeline definition. Outputs and caches are left behind.
PROJECT_FILES = [
    "dvc.yaml",
    "params.yaml",
    "stages",
    "data",
    "notebooks",
    ".dvcignore",
    ".gitignore",
]
# The plots page's custom Vega templates and HTML template, copied after `dvc init` makes .dvc/.
DVC_DIR_FILES = ["plots", "plots_page.html"]


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def space(family: str, dimensions: dict[str, Any]) -> dict[str, Any]:
    """Params overrides for the search space of `family`."""
    return {"model": {"families": {family: {"search_space": dimensions}}}}


# A few seconds per trial instead of minutes: small rounds, 2 folds, a handful of trials.
TINY_PARAMS: dict[str, Any] = {
    "tune": {
        "n_trials": 6,
        "cv_folds": 2,
        "sampler": {"n_startup_trials": 3},
        # The median rule: it prunes on two folds, which the Wilcoxon pruner cannot.
        "pruner": {
            "name": "median",
            "n_startup_trials": 1,
            "n_warmup_steps": 10,
            "interval_steps": 10,
        },
    },
    **deep_update(
        space("xgboost", {"n_estimators": {"low": 20, "high": 60}, "max_depth": {"high": 5}}),
        space("lightgbm", {"n_estimators": {"low": 20, "high": 60}, "num_leaves": {"high": 32}}),
    ),
}


# Two hyperparameters beyond the shipped seven, one categorical, in the shared tiny run: the
# space is params.yaml's alone, and every stage takes them without a line of code changed.
GROWN_SPACE: dict[str, Any] = space(
    "xgboost",
    {
        "reg_lambda": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
        "grow_policy": {"type": "categorical", "choices": ["depthwise", "lossguide"]},
    },
)


def tiered(cases: list[Any], default: set[str]) -> list[Any]:
    """`cases` (pytest.param's with ids) with all but the `default` ids marked exhaustive: the
    default tier checks a few cases of a kind, `pytest -m exhaustive` every other one."""
    ids = {case.id for case in cases}
    assert default <= ids, f"no such cases: {default - ids}"
    return [
        case
        if case.id in default
        else pytest.param(*case.values, marks=[*case.marks, pytest.mark.exhaustive], id=case.id)
        for case in cases
    ]


def write_params(project: Path, overrides: dict[str, Any]) -> None:
    path = project / "params.yaml"
    params = deep_update(yaml.safe_load(path.read_text()), overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


# Where trials run and results go: set by each test explicitly, never inherited. (MLflow's
# `set_tracking_uri` in a test writes MLFLOW_TRACKING_URI into this process's environment.)
BACKEND_VARIABLES = ("DASK_SCHEDULER_ADDRESS", "OPTUNA_STORAGE", "MLFLOW_TRACKING_URI")


@pytest.fixture(autouse=True)
def _no_backend_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with the default backends, and takes back what MLflow set in it."""
    for name in BACKEND_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with this interpreter first on PATH, the backend settings unset."""
    env = {k: v for k, v in os.environ.items() if k not in BACKEND_VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**env, **(extra or {})}


def run(
    project: Path, *args: str, check: bool = True, **kwargs: Any
) -> subprocess.CompletedProcess:
    """Run a command in the project with this interpreter's environment first on PATH."""
    env = subprocess_env(kwargs.pop("env", {}))
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, **kwargs)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


@dataclass(frozen=True)
class StageRun:
    exit_code: int
    stdout: str
    stderr: str

    def one_error(self) -> str:
        """The run's only line, after checking it is a stage's one-line error: exit code 2, one
        `error:` line, no traceback (a notice of a long wait may come before it)."""
        assert self.exit_code == 2, self.stderr
        assert "Traceback" not in self.stderr, self.stderr
        lines = [line for line in self.stderr.splitlines() if not line.startswith("waiting for ")]
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: "), self.stderr
        return lines[0]


@pytest.fixture
def run_stage(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[[str, Path], StageRun]:
    """Run stages/<stage>.py as `python stages/<stage>.py` would, with `directory` as the working
    directory, in this process: a new interpreter per case would spend most of its time
    importing. The one way the tests run a stage for an error case."""

    def run_in(stage: str, directory: Path) -> StageRun:
        monkeypatch.chdir(directory)
        capsys.readouterr()  # what came before is not this run's
        handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            runpy.run_path(str(REPO / "stages" / f"{stage}.py"), run_name="__main__")
            exit_code = 0
        except SystemExit as exc:
            exit_code = int(exc.code or 0)
        finally:  # tune installs its own handlers
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        captured = capsys.readouterr()
        return StageRun(exit_code, captured.out, captured.err)

    return run_in


def dvc(project: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return run(project, sys.executable, "-m", "dvc", *args, **kwargs)


def make_project(
    destination: Path, overrides: dict[str, Any] | None = None, tiny: bool = True
) -> Path:
    """A git + DVC project with the repository's code and the given params overrides, on top
    of TINY_PARAMS unless `tiny` is false. The one scaffold of the tests, docs/ui_check.py and
    the benchmarks (benchmarks/scratch_project.py)."""
    shutil.copytree(_project_template(), destination, symlinks=True, dirs_exist_ok=True)
    base = yaml.safe_load(yaml.safe_dump(TINY_PARAMS)) if tiny else {}
    write_params(destination, deep_update(base, overrides or {}))
    commit(destination, "project under test")
    return destination


@functools.cache
def _project_template() -> Path:
    """The repository's files in a fresh git + DVC project, made once per test session: git
    and DVC take seconds to initialise, a copy takes milliseconds."""
    template = Path(tempfile.mkdtemp(prefix="hpo-project-template-"))
    atexit.register(shutil.rmtree, template, ignore_errors=True)
    for name in PROJECT_FILES:
        source, target = REPO / name, template / name
        if source.is_dir():
            ignored = shutil.ignore_patterns("__pycache__", "prepared", "*.egg-info")
            shutil.copytree(source, target, ignore=ignored, symlinks=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    run(template, "git", "init", "-q")
    run(template, "git", "config", "user.email", "ci@example.invalid")
    run(template, "git", "config", "user.name", "CI")
    dvc(template, "init", "-q")
    dvc(template, "config", "core.analytics", "false")
    for name in DVC_DIR_FILES:
        source, target = REPO / ".dvc" / name, template / ".dvc" / name
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True)
        else:
            shutil.copy2(source, target)
    dvc(template, "config", "plots.html_template", "plots_page.html")
    commit(template, "the repository's pipeline")
    return template


def commit(project: Path, message: str) -> None:
    run(project, "git", "add", "-A")
    run(project, "git", "commit", "-qm", message, "--allow-empty")


def shared_run(
    request: pytest.FixtureRequest,
    factory: pytest.TempPathFactory,
    name: str,
    overrides: dict[str, Any],
    *targets: str,
) -> Path:
    """A project of `overrides` after `dvc repro [targets]`, made once per test run by whichever
    pytest-xdist worker needs it first (the other waits on the lock), and copied for each
    caller: checks that run commands in it never race with a worker copying it."""
    shared = factory.getbasetemp()
    if hasattr(request.config, "workerinput"):  # an xdist worker: its base is inside the run's
        shared = shared.parent
    built, done = shared / name / "project", shared / name / "done"
    with FileLock(shared / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(built.parent, ignore_errors=True)  # what a failed attempt left
            make_project(built, overrides)
            dvc(built, "repro", *targets)
            done.touch()
    return shutil.copytree(built, factory.mktemp(name) / "project", symlinks=True)


@pytest.fixture(scope="session")
def tiny_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One full `dvc repro` of the tiny configuration, shared by the read-only checks."""
    return shared_run(request, tmp_path_factory, "tiny-run", GROWN_SPACE)


# Trials of a few seconds each, so that a signal or a fault lands in the middle of tuning.
SLOW = deep_update(
    {"tune": {"n_trials": 12, "pruner": {"n_startup_trials": 20}}},  # no pruning: full trials
    space(
        "xgboost",
        {
            "n_estimators": {"low": 100, "high": 150},
            "max_depth": {"low": 8, "high": 9},
            # Little pruning inside a tree: a large gamma or min_child_weight makes fits fast.
            "gamma": {"low": 0.0, "high": 0.001},
            "min_child_weight": {"low": 1.0, "high": 1.5},
        },
    ),
)


@pytest.fixture(scope="session")
def slow_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SLOW study tuned once without interruption: what every disturbed run must end with."""
    return shared_run(request, tmp_path_factory, "slow-run", SLOW, "tune")


@pytest.fixture
def undisturbed(slow_run: Path) -> list[tuple]:
    return trial_records(slow_run)


def trial_records(project: Path) -> list[tuple]:
    """Every trial of the run's study, read from the DVC output outputs/optuna_study.db."""
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    study = optuna.load_study(
        study_name=summary["study_name"],
        storage=f"sqlite:///{project / 'outputs/optuna_study.db'}",
    )
    return [
        (t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials
    ]


def evidence_of(trials: list[tuple[float, dict[int, float]]]) -> PrunerEvidence:
    """Pruner evidence from (objective value, {step: intermediate value}) pairs."""
    steps = tuple(dict.fromkeys(step for _value, curve in trials for step in curve))
    curves = np.full((len(trials), len(steps)), np.nan)
    for row, (_value, curve) in enumerate(trials):
        curves[row, [steps.index(step) for step in curve]] = list(curve.values())
    values = np.array([value for value, _curve in trials], dtype=float)
    return PrunerEvidence(steps, values, curves, np.empty((len(trials), 0)))
