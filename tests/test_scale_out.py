"""Scale-out against the real services: where trials run and where results are kept never
changes what a study finds, and a lost worker, a lost scheduler or a bad setting loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import mlflow
import mlflow.xgboost
import optuna
import pytest
from conftest import REPO, commit, dvc, make_project, run, subprocess_env, tiered, trial_records
from distributed import Client, LocalCluster
from mlflow.tracking import MlflowClient
from services import PostgresServer, dask_cluster, free_port

# Trials of a second or two: long enough for a kill to land mid-trial, with pruning at work.
SCALE = {
    "tune": {
        "n_trials": 8,
        "search_space": {
            "n_estimators": {"low": 60, "high": 160},
            "max_depth": {"low": 5, "high": 8},
        },
    }
}
N_TRIALS = SCALE["tune"]["n_trials"]
EXPERIMENT = "xgboost-california-housing"
WORKERS_ENV = {"PYTHONPATH": str(REPO / "stages")}


def _assert_same_results(project: Path, reference: Path) -> None:
    assert trial_records(project) == trial_records(reference)
    for name in ("model.ubj", "metrics.json"):
        ours = (project / "outputs" / name).read_bytes()
        assert ours == (reference / "outputs" / name).read_bytes(), name


def _local_runs(project: Path) -> list:
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _finished_trials(project: Path) -> int:
    db = project / "outputs/optuna_store.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            (count,) = connection.execute(
                "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
            ).fetchone()
    except sqlite3.Error:
        return 0  # tables not created yet
    return count


def _start(project: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=project, env=subprocess_env(env), start_new_session=True,
        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_until(condition, process: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"exited before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run on local threads (no environment settings): what every other place must give."""
    project = make_project(tmp_path_factory.mktemp("scale") / "local", SCALE)
    dvc(project, "repro")
    states = {record[1] for record in trial_records(project)}
    assert {"COMPLETE", "PRUNED"} <= states, "the configuration should exercise pruning"
    return project


@pytest.mark.parametrize("n_workers", [pytest.param(1, marks=pytest.mark.exhaustive), 3])
def test_a_local_cluster_gives_the_same_trials(
    reference: Path, tmp_path: Path, n_workers: int
) -> None:
    """The tune stage only: what follows it runs in-process from the same best params, as the
    CLI-cluster test below checks down to the model's bytes."""
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    ) as cluster:
        cluster.wait_for_workers(n_workers)
        project = make_project(tmp_path / "p", SCALE)
        dvc(project, "repro", "tune", env={"DASK_SCHEDULER_ADDRESS": cluster.scheduler_address})
    assert trial_records(project) == trial_records(reference)
    trial_runs = [r for r in _local_runs(project) if "optuna.trial_number" in r.data.tags]
    assert len(trial_runs) == N_TRIALS
    for trial_run in trial_runs:
        assert trial_run.data.tags["hpo.executor"] == "dask"
        assert trial_run.data.tags["hpo.workers"] == str(n_workers)


def test_cli_cluster_postgres_and_mlflow_server_give_the_same_results(
    reference: Path,
    tmp_path: Path,
    postgres: PostgresServer,
    mlflow_server_url: str,
    dask_cluster_address: str,
) -> None:
    """Trials on `dask worker` processes, the study in PostgreSQL, the runs on `mlflow server`."""
    storage = postgres.create_database("scale_out_study")
    env = {
        "DASK_SCHEDULER_ADDRESS": dask_cluster_address,
        "OPTUNA_STORAGE": storage,
        "MLFLOW_TRACKING_URI": mlflow_server_url,
    }
    project = make_project(tmp_path / "p", SCALE)
    done = dvc(project, "repro", env=env)
    _assert_same_results(project, reference)
    assert not (project / "outputs/mlflow.db").exists(), "runs went to the server only"

    # The study lives in PostgreSQL; outputs/optuna_study.db is its copy.
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    shared = optuna.load_study(study_name=summary["study_name"], storage=storage)
    assert [(t.number, t.state.name, t.value) for t in shared.trials] == [
        (*record[:2], record[3]) for record in trial_records(project)
    ]

    # Parent, trial and final-model runs, metrics, artifacts and the model version on the server.
    client = MlflowClient(mlflow_server_url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "optuna.study_name" in r.data.tags]
    trial_runs = [r for r in runs if "optuna.trial_number" in r.data.tags]
    (final,) = [r for r in runs if r.info.run_name.startswith("final-model ")]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_cv_mse"] == summary["best_cv_mse"]
    assert len(trial_runs) == N_TRIALS
    assert {r.data.tags["hpo.executor"] for r in trial_runs} == {"dask"}
    metrics = json.loads((project / "outputs/metrics.json").read_text())
    assert final.data.metrics["test_rmse"] == pytest.approx(metrics["test_rmse"])
    fetched = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="tune_summary.json",
        dst_path=str(tmp_path / "fetched"),
        tracking_uri=mlflow_server_url,
    )
    assert json.loads(Path(fetched).read_text())["study_name"] == summary["study_name"]
    model_info = json.loads((project / "outputs/model_info.json").read_text())
    version = client.get_model_version(
        model_info["registered_model"], str(model_info["registered_model_version"])
    )
    assert version.run_id == final.info.run_id
    mlflow.set_tracking_uri(mlflow_server_url)
    loaded = mlflow.xgboost.load_model(model_info["model_uri"])
    assert loaded.save_raw("ubj") == (project / "outputs/model.ubj").read_bytes()

    # The database password appears nowhere, as typed or URL-quoted: output, files, MLflow
    # params, tags, artifacts.
    secrets = {postgres.password, quote(postgres.password, safe="")}
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    for path in (project / "outputs").rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s.encode() in path.read_bytes()], path
    for logged in runs:
        values = [*logged.data.params.values(), *logged.data.tags.values()]
        assert not [v for v in values for s in secrets if s in v], logged.info.run_name
    artifacts = Path(
        mlflow.artifacts.download_artifacts(
            run_id=final.info.run_id,
            dst_path=str(tmp_path / "model"),
            tracking_uri=mlflow_server_url,
        )
    )
    for path in artifacts.rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s.encode() in path.read_bytes()], path


def test_a_worker_killed_mid_tune_changes_nothing(reference: Path, tmp_path: Path) -> None:
    """SIGKILL a worker while it runs a trial: Dask reruns the task, the results are the same."""
    with dask_cluster(2, 1, env=WORKERS_ENV, log_dir=tmp_path) as cluster:
        project = make_project(tmp_path / "p", SCALE)
        process = _start(
            project, ["-m", "dvc", "repro", "tune"], {"DASK_SCHEDULER_ADDRESS": cluster.address}
        )
        victim = cluster.workers[0]
        with Client(cluster.address, timeout="20s") as client:
            address = victim.address(client)

            def victim_is_mid_trial() -> bool:
                return _finished_trials(project) >= 1 and bool(client.processing()[address])

            _wait_until(victim_is_mid_trial, process, "a trial on the first worker")
            os.kill(victim.pid, signal.SIGKILL)
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
    assert trial_records(project) == trial_records(reference), "a trial was lost or changed"


def test_losing_the_scheduler_stops_with_one_line_and_resumes_locally(
    reference: Path, tmp_path: Path
) -> None:
    with dask_cluster(1, 1, env=WORKERS_ENV, log_dir=tmp_path) as cluster:
        project = make_project(tmp_path / "p", SCALE)
        dvc(project, "repro", "prepare")
        env = {"DASK_SCHEDULER_ADDRESS": cluster.address}
        process = _start(project, ["stages/tune.py"], env)
        _wait_until(lambda: _finished_trials(project) >= 2, process, "two finished trials")
        os.kill(cluster.scheduler_pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "DASK_SCHEDULER_ADDRESS" in errors[0]
    assert "Traceback" not in stderr
    kept = {r[0]: r for r in _records_of_db(project) if r[1] in ("COMPLETE", "PRUNED")}
    assert len(kept) >= 2

    dvc(project, "repro", "tune")  # the variable unset: the study resumes on local threads

    after = {r[0]: r for r in trial_records(project)}
    for number, record in kept.items():
        assert after[number] == record, f"trial {number} was recomputed"
    # The trials lost with the scheduler were evaluated again, locally, with the same results.
    assert trial_records(project) == trial_records(reference)


def _records_of_db(project: Path) -> list[tuple]:
    """Trial records straight from the study store, when tune has not finished."""
    storage = f"sqlite:///{project / 'outputs/optuna_store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    return [
        (t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials
    ]


def _bad_settings(password: str) -> list[tuple[str, str]]:
    closed = free_port()
    return [
        ("DASK_SCHEDULER_ADDRESS", "not an address"),
        ("DASK_SCHEDULER_ADDRESS", f"tcp://127.0.0.1:{closed}"),
        ("OPTUNA_STORAGE", "postgresql//missing-colon"),
        ("OPTUNA_STORAGE", f"postgresql+psycopg://hpo:{password}@127.0.0.1:{closed}/study"),
        ("MLFLOW_TRACKING_URI", "ftp://127.0.0.1/runs"),
        ("MLFLOW_TRACKING_URI", f"http://hpo:{password}@127.0.0.1:{closed}"),
        ("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{closed}"),
    ]


PASSWORD = "pw-Secret-42"
BAD_CASES = tiered(
    [
        pytest.param(stage, variable, value, id=f"{stage}-{variable}-{index}")
        for index, (variable, value) in enumerate(_bad_settings(PASSWORD))
        for stage in ("tune", "train_best", "evaluate")
        if stage == "tune" or variable == "MLFLOW_TRACKING_URI"  # the others read only MLflow's
    ],
    # one malformed value of each variable, and a password-carrying unreachable server
    {"tune-DASK_SCHEDULER_ADDRESS-0", "tune-OPTUNA_STORAGE-2", "tune-MLFLOW_TRACKING_URI-5"},
)


@pytest.mark.parametrize(("stage", "variable", "value"), BAD_CASES)
def test_a_bad_setting_gives_one_line_and_writes_nothing(
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_stage,
    stage: str,
    variable: str,
    value: str,
) -> None:
    def files() -> dict[Path, int]:
        return {
            p.relative_to(reference): p.stat().st_mtime_ns
            for p in reference.rglob("*")
            if ".git" not in p.parts and p.is_file()
        }

    before = files()
    monkeypatch.setenv(variable, value)
    done = run_stage(stage, reference)
    assert done.one_error().startswith(f"error: {variable}")
    assert PASSWORD not in done.stdout + done.stderr
    assert files() == before, "a bad setting wrote or changed files"


def test_a_dvc_remote_gives_a_teammate_the_results_without_recomputing(
    reference: Path, tmp_path: Path
) -> None:
    author = tmp_path / "author"
    shutil.copytree(reference, author, symlinks=True)
    dvc(author, "remote", "add", "-d", "shared", str(tmp_path / "remote"))
    commit(author, "results and remote")
    dvc(author, "push")
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(author), str(clone))
    dvc(clone, "pull")
    assert dvc(clone, "status").stdout.strip() == "Data and pipelines are up to date."
    repro = dvc(clone, "repro")
    assert "Running stage" not in repro.stdout, repro.stdout
    _assert_same_results(clone, reference)
