"""Same params, same results, with 2 parallel trials; and DVC reruns only what changed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import optuna
import pytest
from conftest import (
    GROWN_SPACE,
    TINY_PARAMS,
    commit,
    dvc,
    make_project,
    tiered,
    trial_records,
    write_params,
)

STAGES = ("prepare", "tune", "train_best", "evaluate", "plot")
N_TRIALS = TINY_PARAMS["tune"]["n_trials"]


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def twin_runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent runs of the same params (2 parallel trials), each in its own fresh
    project: the shared tiny run, and this module's own."""
    twin = make_project(tmp_path_factory.mktemp("twin") / "b", GROWN_SPACE)
    dvc(twin, "repro")
    return tiny_run, twin


def test_two_runs_give_identical_trials(twin_runs: tuple[Path, Path]) -> None:
    first, second = (trial_records(p) for p in twin_runs)
    assert first == second
    states = {record[1] for record in first}
    assert "PRUNED" in states, "the tiny config should exercise pruning"
    assert "COMPLETE" in states


def test_two_runs_give_identical_model_and_metrics(twin_runs: tuple[Path, Path]) -> None:
    first, second = twin_runs
    model_a = (first / "outputs/model/model.ubj").read_bytes()
    assert model_a == (second / "outputs/model/model.ubj").read_bytes()
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
    metrics_file = project / "outputs/metrics.json"
    shutil.copy2(second / "outputs/metrics.json", metrics_file)
    assert dvc(project, "metrics", "diff", "--json").stdout.strip() in ("{}", "")
    # The same command does see a difference, when there is one.
    changed = json.loads(metrics_file.read_text())
    changed["test_rmse"] += 1e-6
    metrics_file.write_text(json.dumps(changed))
    assert "test_rmse" in dvc(project, "metrics", "diff", "--json").stdout


@pytest.fixture(scope="module")
def rerun_project(twin_runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of a finished run, to change one thing at a time."""
    return shutil.copytree(twin_runs[0], tmp_path_factory.mktemp("rerun") / "p", symlinks=True)


# Run in this order on the same project: each change starts from the previous, finished state.
CHANGES = [
    ("nothing", None, set()),
    ("plot param", {"plot": {"importance_seed": 7}}, {"plot"}),
    # Every stage depends on the whole library (dvc.yaml lists it once); tune then resumes its
    # study without evaluating a trial (test_only_code_that_shapes_trials_renames_the_study).
    ("library module", "stages/hpo/figures.py", {*STAGES}),
    ("stage script", "stages/evaluate.py", {"evaluate"}),
    ("tune.n_trials", {"tune": {"n_trials": 9}}, {"tune", "train_best", "evaluate", "plot"}),
    ("split", {"prepare": {"test_size": 0.25}},
     {"prepare", "tune", "train_best", "evaluate", "plot"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "change", "expected"),
    tiered(
        [pytest.param(*change, id=change[0]) for change in CHANGES],
        {"nothing", "plot param", "stage script"},
    ),
)
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


def _finished_at(project: Path) -> dict[int, object]:
    """When each trial in the project's study store finished."""
    storage = f"sqlite:///{project / 'outputs/optuna_store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return {
        t.number: t.datetime_complete
        for t in optuna.load_study(study_name=name, storage=storage).trials
    }


def test_only_code_that_shapes_trials_renames_the_study(
    twin_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    project = shutil.copytree(twin_runs[1], tmp_path / "p", symlinks=True)
    name = json.loads((project / "outputs/tune_summary.json").read_text())["study_name"]
    finished_at = _finished_at(project)
    for module in (
        "stages/hpo/tracking/study_run.py",
        "stages/hpo/models/lightgbm.py",
        "stages/tune.py",
    ):
        (project / module).write_text((project / module).read_text() + "\n# an edit\n")
    assert "tune" in _ran_stages(dvc(project, "repro").stdout)
    assert json.loads((project / "outputs/tune_summary.json").read_text())["study_name"] == name
    assert _finished_at(project) == finished_at, "the finished study was resumed, not rerun"

    model = project / "stages/hpo/models/xgboost.py"
    model.write_text(model.read_text() + "\n# an edit\n")
    dvc(project, "repro", "tune")
    assert json.loads((project / "outputs/tune_summary.json").read_text())["study_name"] != name
