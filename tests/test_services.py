"""Smoke tests of the real services in services.py: each starts, works and leaves nothing behind.

The fixtures `postgres`, `mlflow_server_url` and `dask_cluster_address` come from services.py,
registered in conftest.py with `pytest_plugins = ["services"]`.
"""

from __future__ import annotations

import os
import urllib.request
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy
from distributed import Client
from mlflow.tracking import MlflowClient
from services import (
    HOST,
    PG_PASSWORD,
    PostgresServer,
    ServiceUnavailableError,
    dask_cluster,
    postgres_server,
    require,
)


def _alive(pid: int) -> bool:
    """Running and not a zombie waiting for init to reap it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _command_lines() -> list[str]:
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue  # exited meanwhile
    return lines


def test_require_fails_rather_than_skips() -> None:
    require(True, "anything")
    with pytest.raises(pytest.fail.Exception, match=r"PostgreSQL unavailable.*no initdb"):
        require(ServiceUnavailableError("no initdb"), "PostgreSQL")
    with pytest.raises(pytest.fail.Exception, match="dask unavailable"):
        require(False, "dask")


def test_postgres_takes_the_password_and_refuses_a_wrong_one(postgres: PostgresServer) -> None:
    name = f"db_{uuid.uuid4().hex[:8]}"
    url = postgres.create_database(name)
    assert url.startswith(f"postgresql+psycopg://hpo:s3cr3t-P%40ss%3Aw0rd%2F%25@{HOST}:")
    assert PG_PASSWORD not in repr(postgres)

    with psycopg.connect(postgres.url(name, driver=None), connect_timeout=10) as connection:
        user, address = connection.execute("SELECT current_user, inet_server_addr()").fetchone()
    assert (user, str(address)) == ("hpo", HOST)

    engine = sqlalchemy.create_engine(url)  # the URL form Optuna and MLflow take
    try:
        assert engine.url.password == PG_PASSWORD
        with engine.connect() as connection:
            assert connection.execute(sqlalchemy.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()

    wrong = postgres.url(name, driver=None).replace("s3cr3t-P%40ss", "s3cr3t-P%40sx")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=10)


def test_postgres_server_stops_and_removes_its_cluster(tmp_path: Path) -> None:
    with postgres_server(tmp_path) as server:
        cluster = server.socket_dir.parent
        postmaster = int((cluster / "data/postmaster.pid").read_text().splitlines()[0])
        assert _alive(postmaster)
    assert not _alive(postmaster)
    assert not cluster.exists()
    assert "database system is shut down" in (tmp_path / "postgres.log").read_text()


def test_mlflow_server_logs_and_serves_artifacts(
    mlflow_server_url: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    assert mlflow_server_url.startswith(f"http://{HOST}:")
    with urllib.request.urlopen(f"{mlflow_server_url}/health", timeout=10) as response:
        assert response.read() == b"OK"

    client = MlflowClient(tracking_uri=mlflow_server_url)
    experiment = client.create_experiment(f"smoke-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment).info.run_id
    client.log_param(run_id, "max_depth", 4)
    client.log_metric(run_id, "cv_mse", 0.25)
    (tmp_path / "note.txt").write_text("through the server")
    client.log_artifact(run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run_id)

    run = client.get_run(run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied, not a local path
    assert run.data.params == {"max_depth": "4"}
    assert run.data.metrics == {"cv_mse": 0.25}
    fetched = client.download_artifacts(run_id, "note.txt", str(tmp_path / "back"))
    assert Path(fetched).read_text() == "through the server"

    # The server and the database hold the password; no command line shows it.
    quoted = postgres.url("mlflow").split("//", 1)[1].split("@", 1)[0]
    assert not [line for line in _command_lines() if PG_PASSWORD in line or quoted in line]


def test_dask_cli_workers_run_tasks(dask_cluster_address: str) -> None:
    assert dask_cluster_address.startswith(f"tcp://{HOST}:")
    with Client(dask_cluster_address, timeout="30s") as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert len(workers) == 2
        assert all(address.startswith(f"tcp://{HOST}:") for address in workers)
        assert {info["nthreads"] for info in workers.values()} == {1}
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
        # The workers import this repository's library (PYTHONPATH has stages/).
        files = client.run(lambda: __import__("hpo").__file__)
        assert {Path(f).parent.parent.name for f in files.values()} == {"stages"}


def test_dask_cluster_stops_nanny_and_worker(tmp_path: Path) -> None:
    with dask_cluster(n_workers=1, nanny=True, log_dir=tmp_path) as cluster:
        (worker,) = cluster.workers
        nanny_pid, worker_pid = worker.pid, worker.worker_pid()
        assert nanny_pid != worker_pid
        assert _alive(nanny_pid)
        assert _alive(worker_pid)
        assert worker_pid != os.getpid()
    assert not _alive(nanny_pid)
    assert not _alive(worker_pid)
