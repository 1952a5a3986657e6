"""Same params, same results, with 2 parallel trials; and DVC reruns only what changed."""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import optuna
import pytest
from conftest import commit, dvc, make_project, run, tiered, trial_records, write_params
from mlflow.tracking import MlflowClient

PARALLEL = {"tune": {"parallel_trials": 2, "n_trials": 8}}
STAGES = ("prepare", "tune", "train_best", "evaluate", "plot")


def _ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '(\w+)'", output))


@pytest.fixture(scope="module")
def twin_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two independent runs of the same params, each in its own fresh project, at the same time
    (so each also runs on a machine the other keeps busy)."""
    root = tmp_path_factory.mktemp("twins")
    projects = (make_project(root / "a", PARALLEL), make_project(root / "b", PARALLEL))
    with ThreadPoolExecutor(len(projects)) as pool:
        list(pool.map(lambda project: dvc(project, "repro"), projects))
    return projects


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


def _trial_runs(project: Path, results: dict) -> list:
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    study_run = client.get_run(results["mlflow"]["study_run_id"])
    return client.search_runs(
        [study_run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{study_run.info.run_id}'",
        max_results=1000,
    )


def test_experiments_grow_and_cut_the_study_without_recomputing_it(
    twin_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    """5 trials, then `dvc exp run -S tune.n_trials=8`: the trials and model of an 8-trial run
    from scratch, from 3 new trials. Then 3 trials and back to the committed 5: no new trial."""
    from_scratch = twin_runs[0]  # PARALLEL: 8 trials
    project = make_project(tmp_path / "exp", {"tune": {**PARALLEL["tune"], "n_trials": 5}})
    dvc(project, "repro")
    commit(project, "a 5-trial run")
    committed = trial_records(project)
    committed_model = (project / "outputs/model/model.ubj").read_bytes()
    finished_at = _finished_at(project)

    dvc(project, "exp", "run", "-S", "tune.n_trials=8", "--name", "eight-trials")
    assert trial_records(project) == trial_records(from_scratch)
    assert (project / "outputs/model/model.ubj").read_bytes() == (
        from_scratch / "outputs/model/model.ubj"
    ).read_bytes()
    grown = _finished_at(project)
    assert {n: grown[n] for n in finished_at} == finished_at, "a stored trial was recomputed"
    results = json.loads((project / "outputs/results.json").read_text())
    assert len(_trial_runs(project, results)) == len(grown)  # one MLflow run per trial, once
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    for run_id in (results["mlflow"]["study_run_id"], results["mlflow"]["model_run_id"]):
        tags = client.get_run(run_id).data.tags
        assert tags["dvc_exp_name"] == "eight-trials"
        assert tags["mlflow.source.git.commit"] == head
    assert "eight-trials" in dvc(project, "exp", "show", "--json").stdout

    done = dvc(project, "exp", "run", "-S", "tune.n_trials=3", "--name", "three-trials")
    cut = trial_records(project)
    said = f"tune.n_trials=3: the first {len(cut)} of the study's 8 stored trials; no trial"
    assert said in done.stdout + done.stderr
    finished = [i for i, record in enumerate(committed) if record[1] in ("COMPLETE", "PRUNED")]
    assert cut == committed[: finished[2] + 1]  # the first trials holding 3 finished ones
    # The study run ends when its last trial did, not when the cut study was last opened.
    last_told = max(_finished_at(project)[n] for n in range(len(cut)))
    study_run = client.get_run(results["mlflow"]["study_run_id"])
    assert study_run.info.end_time == int(last_told.timestamp() * 1000)
    assert study_run.info.run_name == results["study_name"]  # no trial count to go stale
    assert study_run.data.tags["dvc_exp_name"] == "three-trials"

    run(project, "git", "checkout", "--", "params.yaml", "dvc.lock")
    dvc(project, "repro")
    assert trial_records(project) == committed
    assert (project / "outputs/model/model.ubj").read_bytes() == committed_model
    assert _finished_at(project) == grown, "no trial ran after the 8-trial experiment"
    assert len(_trial_runs(project, results)) == len(grown)
    # The study run says what its last session ran from: outside an experiment, none. (The
    # repro above took tune's outputs from DVC's run cache, without a session.)
    dvc(project, "repro", "--force", "tune")
    assert "dvc_exp_name" not in client.get_run(study_run.info.run_id).data.tags


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
