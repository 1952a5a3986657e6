"""The study's MLflow runs on a real SQLite store: the store made whole before it is used, the
experiment's name, parent run, child runs, their tags, and the final model registered once.

Each test runs in a project root of its own (a folder with dvc.yaml, where hpo.paths finds
outputs/mlflow.db and outputs/mlruns), as every stage does.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from conftest import REPO
from mlflow.tracking import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from hpo.errors import PipelineError
from hpo.search.trial import TrialOutcome
from hpo.tracking import mlflow as tracking
from hpo.tracking.served import as_input, model_config, served_frame
from hpo.tracking.study_run import STUDY_RUN_ID_ATTR, StudyRun

EXPERIMENT = "xgboost-california-housing"
METRIC = "mse"
PARAMS = {"tune": {"n_trials": 2}}
TAGS = {"params_hash": "0123456789abcdef", "mlflow.source.git.commit": "f" * 40}
DB, ARTIFACTS = Path("outputs/mlflow.db"), Path("outputs/mlruns")


def _objective(trial: optuna.Trial) -> float:
    """What the runner stores for a completed 2-fold trial (hpo.protocol.runner)."""
    score = trial.suggest_float("x", 0.2, 1)
    trial.report(score, 10)
    trial.set_user_attr("fold_scores", [score, score])
    return score


@pytest.fixture
def study() -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    study.optimize(_objective, n_trials=2)
    return study


def _project(directory: Path) -> Path:
    """A project root: dvc.yaml, which names the store's paths (hpo.paths)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "dvc.yaml", directory / "dvc.yaml")
    return directory


@pytest.fixture
def new_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project root without a store, as the working directory."""
    monkeypatch.chdir(_project(tmp_path / "project"))
    return tmp_path / "project"


@pytest.fixture(scope="module")
def made_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose store `connect` made, once per module: a copy takes milliseconds, a new
    store its migrations' second."""
    made = _project(tmp_path_factory.mktemp("made") / "project")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(made)
        tracking.connect(EXPERIMENT)
    return made


@pytest.fixture
def project(made_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the made store's project, as the working directory."""
    monkeypatch.chdir(shutil.copytree(made_store, tmp_path / "project"))
    return tmp_path / "project"


def _open(client: MlflowClient, experiment_id: str, study: optuna.Study) -> StudyRun:
    return StudyRun.open(client, experiment_id, study, METRIC, PARAMS, TAGS)


def test_the_experiment_is_named_after_the_family_and_the_data_file() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert tracking.names(params["model"]["family"], params["data"]["path"]) == EXPERIMENT
    assert tracking.names("lightgbm", "/data/Sales 2024 (v2).parquet") == "lightgbm-sales-2024-v2"
    assert tracking.names("xgboost", "data/churn.csv") == "xgboost-churn"


def test_a_new_store_holds_the_named_experiment(new_project: Path) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    assert client.get_experiment(experiment_id).name == EXPERIMENT
    assert client.tracking_uri == f"sqlite:///{(new_project / DB).resolve()}"
    assert sorted(p.name for p in (new_project / "outputs").glob("mlflow.db.partial*")) == []
    _, same_id = tracking.connect(EXPERIMENT)
    assert same_id == experiment_id
    other, other_id = tracking.connect("lightgbm-california-housing")  # one store, two families
    assert other_id != experiment_id
    assert other.get_experiment(other_id).artifact_location == ARTIFACTS.as_posix()


def _block_the_artifact_root(project: Path) -> Callable[[], None]:
    """A file where the artifact folder goes: the store is made, the experiment's step fails."""
    blocker = project / ARTIFACTS
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    return blocker.unlink


def test_a_failed_first_creation_leaves_no_store_and_names_the_file_at_fault(
    new_project: Path,
) -> None:
    _block_the_artifact_root(new_project)
    with pytest.raises(PipelineError) as raised:
        tracking.connect(EXPERIMENT)
    assert str(raised.value).startswith(f"{ARTIFACTS}: ")
    assert "\n" not in str(raised.value)
    left = {p.name for p in (new_project / "outputs").iterdir()} - {"mlflow.db.lock", "mlruns"}
    assert left == set()  # no store, no file of its making
    assert not (new_project / DB).exists()


def test_the_next_connect_after_a_failed_creation_makes_the_store(new_project: Path) -> None:
    unblock = _block_the_artifact_root(new_project)
    with pytest.raises(PipelineError):
        tracking.connect(EXPERIMENT)
    unblock()
    stale = new_project / f"{DB}.partial-0123456789ab"  # as a killed creation leaves it
    stale.write_bytes(b"half a store")

    client, experiment_id = tracking.connect(EXPERIMENT)

    assert client.get_experiment(experiment_id).name == EXPERIMENT
    assert not stale.exists()
    with sqlite3.connect(f"file:{new_project / DB}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT name FROM experiments").fetchall() == [
            ("Default",),
            (EXPERIMENT,),
        ]


def test_a_resumed_study_reopens_its_parent_run(project: Path, study: optuna.Study) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    first = _open(client, experiment_id, study).run_id
    client.set_terminated(first, "KILLED")
    again = _open(client, experiment_id, study).run_id
    assert again == first
    assert client.get_run(first).info.status == "RUNNING"


@pytest.mark.parametrize(("error", "status"), [(KeyboardInterrupt, "KILLED"), (OSError, "FAILED")])
def test_the_study_run_ends_killed_or_failed_with_its_block(
    project: Path, study: optuna.Study, error: type[BaseException], status: str
) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    run = _open(client, experiment_id, study)
    with pytest.raises(error), run.failing_on_error(KeyboardInterrupt):
        raise error
    assert client.get_run(run.run_id).info.status == status


@pytest.mark.parametrize("how", ["store deleted", "run deleted"])
def test_a_lost_parent_run_is_replaced(
    project: Path, made_store: Path, monkeypatch: pytest.MonkeyPatch, study: optuna.Study, how: str
) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    lost = _open(client, experiment_id, study).run_id
    if how == "store deleted":  # the study db was kept, mlflow.db was not: a store without it
        monkeypatch.chdir(shutil.copytree(made_store, project.parent / "new"))
        client, experiment_id = tracking.connect(EXPERIMENT)
    else:
        client.delete_run(lost)

    run = _open(client, experiment_id, study)

    assert run.run_id != lost
    assert study.user_attrs[STUDY_RUN_ID_ATTR] == run.run_id
    assert client.get_run(run.run_id).info.status == "RUNNING"
    assert run.recorded_numbers() == set()  # so the runner records every trial again
    # (end to end: tests/test_pipeline_e2e.py::test_a_lost_mlflow_store_is_rebuilt_from_the_study)


def test_child_runs_carry_the_provenance_tags_and_the_metric(
    project: Path, study: optuna.Study
) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    study_run = _open(client, experiment_id, study)
    for trial in study.trials:
        study_run.record(trial, TrialOutcome.from_frozen(trial))
    assert study_run.recorded_numbers() == {0, 1}
    parent = study_run.run_id
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert len(runs) == 2
    for run in runs:
        assert run.data.tags.items() >= TAGS.items()
        assert run.data.tags["optuna.state"] == TrialState.COMPLETE.name
        assert run.info.status == "FINISHED"
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        assert run.data.metrics[f"cv_{METRIC}"] == pytest.approx(trial.value)
        assert run.data.metrics[f"fold_1_{METRIC}"] == pytest.approx(trial.value)
        curve = client.get_metric_history(run.info.run_id, f"cv_{METRIC}_curve")
        assert [(m.step, m.value) for m in curve] == [(10, pytest.approx(trial.value))]


def test_a_failed_trial_s_run_is_failed_with_its_error(project: Path, study: optuna.Study) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    study_run = _open(client, experiment_id, study)
    failed = optuna.trial.create_trial(
        state=TrialState.FAIL, params={"x": 1.0}, distributions={"x": FloatDistribution(0, 2)},
        user_attrs={"error": "RuntimeError: injected fault in trial 2"},
    )  # fmt: skip
    failed.number = 2
    study_run.record(failed, TrialOutcome.from_frozen(failed))
    (run,) = client.search_runs([experiment_id], "tags.optuna.trial_number = '2'")
    assert run.info.status == "FAILED"
    assert run.data.tags["optuna.state"] == "FAIL"
    assert run.data.tags["error"] == "RuntimeError: injected fault in trial 2"
    assert f"cv_{METRIC}" not in run.data.metrics


def test_a_finished_study_run_keeps_the_time_of_its_last_trial(
    project: Path, study: optuna.Study
) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    study_run = _open(client, experiment_id, study)
    summary = {
        "best_value": study.best_value,
        "trial_budget": 2,
        "n_trials": {"complete": 2, "pruned": 0, "failed": 0},
        "optimization_time_seconds": 1.5,
    }
    study_run.finish(summary, finished_at=1_700_000_000.25)
    run = client.get_run(study_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.end_time == 1_700_000_000_250
    assert run.data.metrics[f"best_cv_{METRIC}"] == pytest.approx(study.best_value)
    assert run.data.metrics["trials_complete"] == 2


def test_the_artifact_root_stays_relative_wherever_the_project_is(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Guards the one write into MLflow's own table: fails if its schema or resolution moves."""
    client, experiment_id = tracking.connect(EXPERIMENT)
    assert client.get_experiment(experiment_id).artifact_location == ARTIFACTS.as_posix()
    run = client.create_run(experiment_id)
    client.log_text(run.info.run_id, "hello", "note.txt")
    assert run.info.artifact_uri.startswith(f"{ARTIFACTS.as_posix()}/")
    moved = shutil.copytree(project / "outputs", tmp_path / "elsewhere" / "outputs")
    monkeypatch.chdir(moved.parent)
    client = MlflowClient(f"sqlite:///{moved / 'mlflow.db'}")
    assert client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path))
    assert (tmp_path / "note.txt").read_text() == "hello"


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            "ALTER TABLE experiments RENAME COLUMN artifact_location TO root", id="column-renamed"
        ),
        pytest.param("DELETE FROM experiments WHERE name != 'Default'", id="row-gone"),
    ],
)
def test_an_unknown_store_schema_stops_with_one_line(project: Path, change: str) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    with sqlite3.connect(project / DB) as connection:
        connection.execute(change)
    with pytest.raises(PipelineError, match="store schema is not the one") as raised:
        tracking._make_artifact_location_relative(client.tracking_uri, experiment_id)
    assert str(raised.value).startswith(f"{DB}: ")
    assert "\n" not in str(raised.value)


def test_the_experiment_opens_on_its_training_runs_in_new_and_old_stores(project: Path) -> None:
    client, experiment_id = tracking.connect(EXPERIMENT)
    kind = client.get_experiment(experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    client.delete_experiment_tag(experiment_id, "mlflow.experimentKind")  # a store made before
    client, experiment_id = tracking.connect(EXPERIMENT)
    kind = client.get_experiment(experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"


def test_the_same_model_is_registered_once(project: Path) -> None:
    """train_best's call, on a real booster saved where the stage saves it."""
    client, experiment_id = tracking.connect(EXPERIMENT)
    x = pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1.0, 0.0, 1.0, 0.0]})
    y = [0.0, 1.0, 2.0, 3.0]
    config = model_config("xgboost", "regression", [], x)
    model_file = project / "outputs/model/model.ubj"
    model_file.parent.mkdir(parents=True)

    def refit(rounds: int) -> dict:
        booster = xgb.train({"seed": 0}, xgb.DMatrix(x, y), num_boost_round=rounds)
        booster.save_model(model_file)
        example = (as_input(config, x), served_frame(config, booster.inplace_predict(x)))
        served = (config, ["mlflow", "numpy", "pandas", "scipy", "xgboost-cpu"])
        return tracking.log_final_model(
            client, experiment_id, model_file, served, example, {"a": 1}, "r", "s"
        )

    first, again, other = refit(2), refit(2), refit(3)
    assert again == first  # the same bytes: the same run and version
    assert first["registered_model"] == EXPERIMENT
    assert other["registered_model_version"] == first["registered_model_version"] + 1
    version = client.get_model_version(EXPERIMENT, "2")
    assert "study s" in version.description
    assert (
        version.tags[tracking.MODEL_DIGEST_TAG]
        != client.get_model_version(EXPERIMENT, "1").tags[tracking.MODEL_DIGEST_TAG]
    )
    final = client.get_run(other["mlflow_run_id"])
    assert final.info.run_name == "final-model s"
    assert final.data.tags["study_parent_run_id"] == "r"
