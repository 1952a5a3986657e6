"""The study's MLflow runs on a real SQLite store: parent run, child runs, their tags."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import optuna
import pandas as pd
import pytest
import xgboost as xgb
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo.errors import PipelineError
from hpo.storage import tracking
from hpo.storage.study_run import STUDY_RUN_ID_ATTR, StudyRun
from hpo.trial.evaluation import TrialOutcome

PARAMS = {"tune": {"n_trials": 2}}
TAGS = {"params_hash": "0123456789abcdef", "mlflow.source.git.commit": "f" * 40}


def _objective(trial: optuna.Trial) -> float:
    """What the runner stores for a completed 2-fold trial."""
    mse = trial.suggest_float("x", 0.2, 1)
    trial.report(mse, 10)
    trial.set_user_attr("fold_mse", [mse, mse])
    trial.set_user_attr("fold_r2", [0.8, 0.8])
    return mse


@pytest.fixture
def study() -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    study.optimize(_objective, n_trials=2)
    return study


def _store(directory: Path) -> tuple[MlflowClient, str]:
    return tracking.connect(directory / "mlflow.db", directory / "mlruns")


def test_a_resumed_study_reopens_its_parent_run(tmp_path: Path, study: optuna.Study) -> None:
    client, experiment_id = _store(tmp_path)
    first = StudyRun.open(client, experiment_id, study, PARAMS, TAGS).run_id
    client.set_terminated(first, "KILLED")
    again = StudyRun.open(client, experiment_id, study, PARAMS, TAGS).run_id
    assert again == first
    assert client.get_run(first).info.status == "RUNNING"


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "KILLED"), (OSError, "FAILED")])
def test_the_study_run_ends_killed_or_failed_with_its_block(
    tmp_path: Path, study: optuna.Study, error: type[BaseException], status: str
) -> None:
    client, experiment_id = _store(tmp_path)
    run = StudyRun.open(client, experiment_id, study, PARAMS, TAGS)
    with pytest.raises(error), run.failing_on_error(KeyboardInterrupt):
        raise error
    assert client.get_run(run.run_id).info.status == status


@pytest.mark.parametrize("how", ["store deleted", "run deleted"])
def test_a_lost_parent_run_is_replaced(tmp_path: Path, study: optuna.Study, how: str) -> None:
    client, experiment_id = _store(tmp_path / "old")
    lost = StudyRun.open(client, experiment_id, study, PARAMS, TAGS).run_id
    if how == "store deleted":  # the study db was kept, mlflow.db was not
        client, experiment_id = _store(tmp_path / "new")
    else:
        client.delete_run(lost)

    run = StudyRun.open(client, experiment_id, study, PARAMS, TAGS)

    assert run.run_id != lost
    assert study.user_attrs[STUDY_RUN_ID_ATTR] == run.run_id
    assert client.get_run(run.run_id).info.status == "RUNNING"
    assert run.recorded_numbers() == set()  # so the runner records every trial again
    # (end to end: tests/test_pipeline_e2e.py::test_a_lost_mlflow_store_is_rebuilt_from_the_study)


def test_child_runs_carry_the_provenance_tags(tmp_path: Path, study: optuna.Study) -> None:
    client, experiment_id = _store(tmp_path)
    study_run = StudyRun.open(client, experiment_id, study, PARAMS, TAGS)
    for trial in study.trials:
        study_run.record(trial, TrialOutcome.from_frozen(trial))
    assert study_run.recorded_numbers() == {0, 1}
    parent = study_run.run_id
    for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'"):
        assert run.data.tags.items() >= TAGS.items()
        assert run.data.tags["optuna.state"] == TrialState.COMPLETE.name
        assert run.info.status == "FINISHED"


def test_the_artifact_root_stays_relative_wherever_the_project_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the one write into MLflow's own table: fails if its schema or resolution moves."""
    monkeypatch.chdir(tmp_path)
    client, experiment_id = tracking.connect(Path("outputs/mlflow.db"), Path("outputs/mlruns"))
    assert client.get_experiment(experiment_id).artifact_location == "outputs/mlruns"
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert run.info.artifact_uri.startswith("outputs/mlruns/")
    moved = shutil.copytree(tmp_path / "outputs", tmp_path / "elsewhere" / "outputs")
    monkeypatch.chdir(moved.parent)
    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    assert client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
    assert (tmp_path / "note.txt").read_text() == "hello"


def test_an_unknown_store_schema_stops_with_one_line(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    tracking.connect(db, tmp_path / "mlruns")
    with sqlite3.connect(db) as connection:
        connection.execute("ALTER TABLE experiments RENAME COLUMN artifact_location TO root")
    with pytest.raises(PipelineError, match="store schema is not the one"):
        tracking._make_artifact_location_relative(db, "0", tmp_path / "mlruns")


def test_the_experiment_opens_on_its_training_runs_in_new_and_old_stores(tmp_path: Path) -> None:
    client, experiment_id = _store(tmp_path)
    kind = client.get_experiment(experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")  # a store made before
    client, experiment_id = _store(tmp_path)
    kind = client.get_experiment(experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"


def test_the_same_model_is_registered_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the artifact root is relative to the project root
    client, experiment_id = tracking.connect(Path("outputs/mlflow.db"), Path("outputs/mlruns"))
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    y = [0.0, 1.0, 2.0, 3.0]

    def refit(rounds: int) -> dict:
        booster = xgb.train({"seed": 0}, xgb.DMatrix(x, y), num_boost_round=rounds)
        return tracking.log_final_model(client, experiment_id, booster, x, {"a": 1}, "r", "s")

    first, again, other = refit(2), refit(2), refit(3)
    assert again == first  # the same bytes: the same run and version
    assert other["registered_model_version"] == first["registered_model_version"] + 1
    version = client.get_model_version("xgboost-california-housing", "2")
    assert "study s" in version.description
    assert client.get_run(other["mlflow_run_id"]).info.run_name == "final-model s"
