"""Scale-out against the real services: where trials run and where results are kept never
changes what a study finds, and a lost worker, a lost scheduler or a bad setting loses nothing.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import (
    GROWN_SPACE,
    REPO,
    SLOW,
    TINY_PARAMS,
    commit,
    dvc,
    make_project,
    run,
    subprocess_env,
    tiered,
    trial_records,
)
from distributed import Client, LocalCluster
from mlflow.tracking import MlflowClient
from recipes import documented_settings, site
from services import dask_cluster, free_port

from hpo.redaction import secrets_of

# The tiny run's params (conftest): what local threads gave is what every other place must give.
SCALE = GROWN_SPACE
N_TRIALS = TINY_PARAMS["tune"]["n_trials"]
EXPERIMENT = "xgboost-california-housing"
WORKERS_ENV = {"PYTHONPATH": str(REPO / "stages")}


def _assert_same_results(project: Path, reference: Path) -> None:
    assert trial_records(project) == trial_records(reference)
    for name in ("model/model.ubj", "metrics.json"):
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
def reference(tiny_run: Path) -> Path:
    """The run on local threads (no environment settings): what every other place must give."""
    states = {record[1] for record in trial_records(tiny_run)}
    assert {"COMPLETE", "PRUNED"} <= states, "the configuration should exercise pruning"
    return tiny_run


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


@pytest.mark.exhaustive  # the team recipes below run the same CLI cluster, over TLS
def test_the_one_machine_recipe_gives_the_same_results(reference: Path, tmp_path: Path) -> None:
    """docs/cluster.md's `dask scheduler` and `dask worker` processes on one machine, as written."""
    with site(tmp_path / "home") as here:
        project = make_project(tmp_path / "p", SCALE)
        here.run("one-machine", cwd=project)
    _assert_same_results(project, reference)


def test_a_worker_killed_mid_tune_changes_nothing(slow_run: Path, tmp_path: Path) -> None:
    """SIGKILL a worker while it runs a trial: Dask reruns the task, the results are the same."""
    with dask_cluster(2, 1, env=WORKERS_ENV, log_dir=tmp_path) as cluster:
        project = make_project(tmp_path / "p", SLOW)
        process = _start(
            project, ["-m", "dvc", "repro", "tune"], {"DASK_SCHEDULER_ADDRESS": cluster.address}
        )
        victim = cluster.workers[0]
        with Client(cluster.address, timeout="20s") as client:
            address = victim.address(client)

            def victim_is_mid_trial() -> bool:
                return bool(client.processing()[address])

            _wait_until(victim_is_mid_trial, process, "a trial on the first worker")
            os.kill(victim.pid, signal.SIGKILL)
            _, stderr = process.communicate(timeout=600)
            assert process.returncode == 0, stderr
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 1
    assert trial_records(project) == trial_records(slow_run), "a trial was lost or changed"


def test_losing_the_scheduler_stops_with_one_line_and_resumes_locally(
    slow_run: Path, tmp_path: Path
) -> None:
    with dask_cluster(1, 1, env=WORKERS_ENV, log_dir=tmp_path) as cluster:
        project = make_project(tmp_path / "p", SLOW)
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
    assert trial_records(project) == trial_records(slow_run)


def _records_of_db(project: Path) -> list[tuple]:
    """Trial records straight from the study store, when tune has not finished."""
    storage = f"sqlite:///{project / 'outputs/optuna_store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    return [
        (t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials
    ]


# docs/cluster.md's "When a setting is wrong", row by row: tune for every row, train_best and
# evaluate (which read only MLflow's) for the MLFLOW_TRACKING_URI rows.
DOCUMENTED = documented_settings("alone")
BAD_CASES = tiered(
    [
        pytest.param(stage, variables, printed, id=f"{stage} {' '.join(variables.values())}")
        for variables, printed in DOCUMENTED
        for stage in ("tune", "train_best", "evaluate")
        if stage == "tune" or set(variables) == {"MLFLOW_TRACKING_URI"}
    ],
    # on tune, the rows whose setting carries a secret; on evaluate, an unreachable server
    {
        f"tune {value}"
        for variables, _printed in DOCUMENTED
        for value in variables.values()
        if secrets_of(value)
    }
    | {"evaluate http://127.0.0.1:CLOSED/?token=s3cr3t-t0ken"},
)


@pytest.mark.parametrize(("stage", "variables", "printed"), BAD_CASES)
def test_a_bad_setting_gives_the_documented_line_and_writes_nothing(
    reference: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_stage,
    stage: str,
    variables: dict[str, str],
    printed: str,
) -> None:
    def files() -> dict[Path, int]:
        return {
            p.relative_to(reference): p.stat().st_mtime_ns
            for p in reference.rglob("*")
            if ".git" not in p.parts and p.is_file()
        }

    closed = str(free_port())
    gc.collect()  # closes an earlier test's unreferenced SQLite engines, and their -wal files
    before = files()
    for name, value in variables.items():
        monkeypatch.setenv(name, value.replace("CLOSED", closed))
    done = run_stage(stage, reference)
    assert done.one_error() == printed.replace("CLOSED", closed)
    assert not _secrets_shown(variables, done.stdout + done.stderr)
    assert files() == before, "a bad setting wrote or changed files"


def _secrets_shown(variables: dict[str, str], text: str) -> set[str]:
    secrets = {s for value in variables.values() for s in secrets_of(value) if len(s) >= 4}
    if "MLFLOW_TRACKING_PASSWORD" in variables:
        secrets.add(variables["MLFLOW_TRACKING_PASSWORD"])
    return {secret for secret in secrets if secret in text}


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
