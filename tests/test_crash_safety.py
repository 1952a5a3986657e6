"""Killed, interrupted, failing and doubled-up tune runs lose no finished work, and end with
the trials of a run that nothing disturbed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import SLOW, dvc, make_project, subprocess_env, tiered, trial_records
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

N_TRIALS = SLOW["tune"]["n_trials"]


@dataclass(frozen=True)
class StudyStorage:
    """Where the study lives: the store outputs/optuna_store.db, or a PostgreSQL database."""

    env: dict[str, str]
    database_url: str | None = None

    def url(self, project: Path) -> str:
        return self.database_url or f"sqlite:///{project / 'outputs/optuna_store.db'}"


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> StudyStorage:
    """The study store each test is parametrized with (indirect): "sqlite" or "postgresql"."""
    if request.param == "sqlite":
        return StudyStorage({})
    server = request.getfixturevalue("postgres")
    url = server.create_database(f"crash_{uuid.uuid4().hex[:8]}")
    return StudyStorage({"OPTUNA_STORAGE": url}, url)


def _study(project: Path, storage: StudyStorage | None = None) -> optuna.Study:
    url = (storage or StudyStorage({})).url(project)
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url)


def _finished_count(project: Path, storage: StudyStorage) -> int:
    url = storage.url(project)
    if url.startswith("sqlite") and not (project / "outputs/optuna_store.db").exists():
        return 0
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                sqlalchemy.text("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')")
            ).scalar_one()
    except sqlalchemy.exc.SQLAlchemyError:
        return 0  # tables not created yet
    finally:
        engine.dispose()


def _start(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a command in its own process group (a signal to the group reaches dvc's child)."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=project, env=subprocess_env(env), start_new_session=True,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_for_finished_trials(
    project: Path, process: subprocess.Popen, count: int, storage: StudyStorage | None = None
) -> None:
    deadline = time.monotonic() + 300
    while _finished_count(project, storage or StudyStorage({})) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "tuning did not progress"
        time.sleep(0.2)


def _mlflow_runs(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    experiment = client.get_experiment_by_name("xgboost-california-housing")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _assert_undisturbed(
    project: Path, undisturbed: list[tuple], storage: StudyStorage | None = None
) -> None:
    """The study and the DVC output hold the undisturbed trials; one MLflow run per trial."""
    study = _study(project, storage)
    assert _records(study) == undisturbed
    assert trial_records(project) == undisturbed
    runs = _mlflow_runs(project)
    assert not [r for r in runs if r.info.status == "RUNNING"], "orphan RUNNING MLflow runs"
    children = [r for r in runs if "optuna.trial_number" in r.data.tags]
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [t.number for t in study.trials]


def _stores(default: str) -> pytest.MarkDecorator:
    """Both study stores; the default tier tries the given one."""
    stores = [pytest.param(name, id=name) for name in ("sqlite", "postgresql")]
    return pytest.mark.parametrize("storage", tiered(stores, {default}), indirect=True)


# The default tier kills `dvc repro` in tests/test_storage_faults.py, with the same checks.
@pytest.mark.exhaustive
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"], indirect=True)
def test_sigkill_mid_tune_keeps_finished_trials_and_resumes(
    tmp_path: Path, storage: StudyStorage, undisturbed: list[tuple]
) -> None:
    project = make_project(tmp_path / "p", SLOW)
    process = _start(project, "-m", "dvc", "repro", env=storage.env)
    _wait_for_finished_trials(project, process, 3, storage)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {
        t.number: (t.value, t.datetime_complete)
        for t in _study(project, storage).trials
        if t.state.is_finished()
    }
    assert len(before) >= 3

    dvc(project, "repro", "tune", env=storage.env)

    after = {t.number: (t.value, t.datetime_complete) for t in _study(project, storage).trials}
    for number, record in before.items():
        assert after[number] == record, f"trial {number} was recomputed"
    _assert_undisturbed(project, undisturbed, storage)
    counts = json.loads((project / "outputs/tune_summary.json").read_text())["n_trials"]
    assert counts["complete"] + counts["pruned"] == N_TRIALS


def test_sigint_stops_cleanly_and_the_next_repro_resumes(
    tmp_path: Path, undisturbed: list[tuple]
) -> None:
    project = make_project(tmp_path / "p", SLOW)
    process = _start(project, "-m", "dvc", "repro")
    _wait_for_finished_trials(project, process, 2)
    interrupted_at = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - interrupted_at < 15
    assert process.returncode != 0
    assert "tuning interrupted" in stderr
    assert "Traceback" not in stderr
    finished = [t for t in _study(project).trials if t.state.is_finished()]
    assert len(finished) >= 2
    parents = [r for r in _mlflow_runs(project) if "optuna.study_name" in r.data.tags]
    assert [p.info.status for p in parents] == ["KILLED"]

    dvc(project, "repro", "tune")
    _assert_undisturbed(project, undisturbed)


@_stores(default="postgresql")
def test_a_second_tune_process_on_a_held_study_stops_with_one_line(
    tmp_path: Path, storage: StudyStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One process runs a study at a time: a second one waits a bounded time, then says who
    holds it, in one line, and writes nothing; once the holder is gone it runs."""
    from hpo.storage import studies

    project = make_project(tmp_path / "p")
    dvc(project, "repro", "prepare")
    monkeypatch.chdir(project)
    for name, value in storage.env.items():
        monkeypatch.setenv(name, value)
    name = _study_name(project)
    with studies.hold_study(studies.storage_url_from_environment(), name) as holder:
        started = time.monotonic()
        done = _start(project, "stages/tune.py", env=storage.env)
        _, stderr = done.communicate(timeout=120)
        waited = time.monotonic() - started
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, stderr
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    assert f"study {name} is being tuned by {holder}" in errors[0]
    assert studies.HOLD_TIMEOUT_S <= waited < studies.HOLD_TIMEOUT_S + 30
    assert not (project / "outputs/tune_summary.json").exists()
    dvc(project, "repro", "tune", env=storage.env)  # the holder is gone: it runs
    assert len(trial_records(project)) == 6


def _study_name(project: Path) -> str:
    """The name tune gives the project's study (its identity: params, data, code)."""
    import hashlib

    from hpo.config import load_params
    from hpo.session import study_name

    train = hashlib.sha256((project / "data/prepared/train.parquet").read_bytes()).hexdigest()
    return study_name(load_params(project / "params.yaml"), train)


def _records(study: optuna.Study) -> list[tuple]:
    """As conftest.trial_records gives them."""
    return [
        (t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials
    ]


# The default tier: the runner records failures (tests/test_tuning.py), and a FAIL trial's
# MLflow run (tests/test_tracking.py); this runs the whole pipeline through them.
@pytest.mark.exhaustive
def test_failing_trials_are_recorded_and_the_pipeline_goes_on(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    dvc(project, "repro", env={"HPO_INJECT_FAULT_TRIALS": "1,3"})
    results = json.loads((project / "outputs/results.json").read_text())
    assert results["trials"]["failed"] == 2
    failed = _study(project).get_trials(states=(TrialState.FAIL,))
    assert [t.number for t in failed] == [1, 3]
    runs = {r.data.tags.get("optuna.trial_number"): r for r in _mlflow_runs(project)}
    for number in ("1", "3"):
        assert runs[number].info.status == "FAILED"
        assert "injected fault" in runs[number].data.tags["error"]


def test_no_completed_trial_fails_tune_with_one_line(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    done = dvc(project, "repro", check=False, env={"HPO_INJECT_FAULT_TRIALS": "all"})
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: no trial")]
    assert len(errors) == 1
    assert "Traceback" not in done.stderr
    assert not (project / "outputs/tune_summary.json").exists()
