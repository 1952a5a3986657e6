"""Same params, same results, with 2 parallel trials; and DVC reruns only what changed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import commit, dvc, make_project, run, trial_records, write_params
from mlflow.tracking import MlflowClient

PARALLEL = {"tune": {"parallel_trials": 2, "n_trials": 8}}


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent runs of the same params, each in its own fresh project."""
    root = tmp_path_factory.mktemp("twins")
    projects = (make_project(root / "a", PARALLEL), make_project(root / "b", PARALLEL))
    for project in projects:
        dvc(project, "repro")
    return projects


def test_two_runs_give_identical_trials(twin_runs: tuple[Path, Path]) -> None:
    first, second = (trial_records(p) for p in twin_runs)
    assert first == second
    states = {record[1] for record in first}
    assert "PRUNED" in states, "the tiny config should exercise pruning"
    assert "COMPLETE" in states


def test_two_runs_give_identical_model_and_metrics(twin_runs: tuple[Path, Path]) -> None:
    first, second = twin_runs
    model_a = (first / "outputs/model.ubj").read_bytes()
    assert model_a == (second / "outputs/model.ubj").read_bytes()
    metrics = [json.loads((p / "outputs/metrics.json").read_text()) for p in twin_runs]
    assert metrics[0] == metrics[1]
    results = [json.loads((p / "outputs/results.json").read_text()) for p in twin_runs]
    assert results[0]["best_params"] == results[1]["best_params"]


def test_metrics_diff_between_reproduced_runs_is_empty(
    twin_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = twin_runs
    project = shutil.copytree(first, tmp_path / "a", symlinks=True)
    commit(project, "reference run")
    shutil.copy2(second / "outputs/metrics.json", project / "outputs/metrics.json")
    assert "test_rmse" in dvc(project, "metrics", "show", "--json").stdout  # metrics are there
    assert dvc(project, "metrics", "diff", "--json").stdout.strip() in ("{}", "")


@pytest.fixture(scope="module")
def rerun_project(twin_runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a finished run, to change one thing at a time."""
    return shutil.copytree(twin_runs[0], tmp_path_factory.mktemp("rerun") / "p", symlinks=True)


# Run in this order on the same project: each change starts from the previous, finished state.
CHANGES = [
    ("nothing", None, set()),
    ("plot param", {"plot": {"importance_seed": 7}}, {"plot"}),
    ("library module used by plot only", "stages/hpo/plots.py", {"plot"}),
    ("library module used by train_best and evaluate", "stages/hpo/model.py",
     {"train_best", "evaluate"}),
    ("tune.n_trials", {"tune": {"n_trials": 9}}, {"tune", "train_best", "evaluate", "plot"}),
    ("split", {"prepare": {"test_size": 0.25}},
     {"prepare", "tune", "train_best", "evaluate", "plot"}),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change", "expected"), CHANGES, ids=[c[0] for c in CHANGES])
def test_repro_reruns_exactly_what_changed(
    rerun_project: Path, what: str, change: dict | str | None, expected: set[str]
) -> None:
    if isinstance(change, dict):
        write_params(rerun_project, change)
    elif isinstance(change, str):
        module = rerun_project / change
        module.write_text(module.read_text() + "\n# an edit\n")
    ran = _ran_stages(dvc(rerun_project, "repro").stdout)
    assert ran == expected, f"after changing {what}"


def test_dvc_experiment_runs_and_is_traceable_in_mlflow(tmp_path: Path) -> None:
    project = make_project(tmp_path / "exp")
    dvc(project, "exp", "run", "-S", "tune.n_trials=4", "--name", "four-trials")
    table = dvc(project, "exp", "show", "--json").stdout
    assert "four-trials" in table
    assert "test_rmse" in table
    results = json.loads((project / "outputs/results.json").read_text())
    assert results["trials"]["complete"] + results["trials"]["pruned"] == 4
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    study_run = client.get_run(results["mlflow"]["study_run_id"])
    model_run = client.get_run(results["mlflow"]["model_run_id"])
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    for mlflow_run in (study_run, model_run):
        assert mlflow_run.data.tags["dvc_exp_name"] == "four-trials"
        assert mlflow_run.data.tags["mlflow.source.git.commit"] == head
        assert len(mlflow_run.data.tags["params_hash"]) == 16
