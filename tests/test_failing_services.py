"""Services broken for real: a study database stopped mid-run, a tracking server whose database
is gone, a scheduler that does not answer. Tune says what it waits for, ends with one line
within a minute, keeps its finished trials and resumes; Ctrl-C and SIGTERM end it within
seconds in every phase."""

from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SLOW, dvc, make_project, tiered
from services import (
    PostgresServer,
    _start_or_fail,
    dask_cluster,
    free_port,
    mlflow_server,
    postgres_server,
)
from test_crash_safety import (
    StudyStorage,
    _assert_undisturbed,
    _start,
    _study,
    _wait_for_finished_trials,
)
from test_scale_out import WORKERS_ENV

# Seconds from a stop request to the end of the process, and from a broken service to the
# one line that says so.
STOP_WITHIN_S, FAIL_WITHIN_S = 5.0, 60.0


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of the test's own, to stop and start again."""
    with contextlib.ExitStack() as stack:
        yield _start_or_fail(stack, postgres_server(tmp_path), "PostgreSQL")


@pytest.fixture
def broken_tracking_server(tmp_path: Path, own_postgres: PostgresServer) -> Iterator[str]:
    """A real `mlflow server` whose PostgreSQL database has stopped: /health still answers."""
    backend = own_postgres.create_database("mlflow")
    with contextlib.ExitStack() as stack:
        url = _start_or_fail(
            stack, mlflow_server(backend, tmp_path / "artifacts", log_dir=tmp_path), "mlflow"
        )
        own_postgres.stop()
        try:
            yield url
        finally:
            own_postgres.start()  # the server then stops at once, not after its 15-s grace


class StderrLines:
    """A process's stderr, read line by line as it comes."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str] = queue.SimpleQueue()
        threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self._queue.put(line)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            left = deadline - time.monotonic()
            assert left > 0, f"never printed {text!r}:\n{''.join(self.lines)}"
            with contextlib.suppress(queue.Empty):
                self.lines.append(self._queue.get(timeout=min(left, 0.5)))

    def rest(self) -> str:
        with contextlib.suppress(queue.Empty):
            while True:
                self.lines.append(self._queue.get(timeout=2))
        return "".join(self.lines)


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


def _prepared(tmp_path: Path, overrides: dict | None = None) -> Path:
    project = make_project(tmp_path / "p", overrides)
    dvc(project, "repro", "prepare")
    return project


@pytest.mark.exhaustive  # about a minute: MLflow's bounded retries run out
def test_a_tracking_server_whose_database_is_down_gives_one_line_within_a_minute(
    tmp_path: Path, broken_tracking_server: str, own_postgres: PostgresServer
) -> None:
    project = _prepared(tmp_path)
    started = time.monotonic()
    process = _start(project, "stages/tune.py", env={"MLFLOW_TRACKING_URI": broken_tracking_server})
    stderr = StderrLines(process)
    stderr.wait_for("waiting for the MLflow server")  # the wait is visible, not silent
    process.wait(timeout=2 * FAIL_WITHIN_S)
    elapsed = time.monotonic() - started
    error = _one_error(stderr.rest())
    assert process.returncode == 2
    assert "MLFLOW_TRACKING_URI" in error
    assert elapsed <= FAIL_WITHIN_S, f"{elapsed:.0f} s before the error"
    assert not (project / "outputs/optuna_store.db").exists()  # nothing written


def test_a_study_database_lost_mid_run_gives_one_line_and_the_run_resumes(
    tmp_path: Path,
    own_postgres: PostgresServer,
    undisturbed: list[tuple],
) -> None:
    url = own_postgres.create_database("study")
    storage = StudyStorage({"OPTUNA_STORAGE": url}, url)
    project = _prepared(tmp_path, SLOW)
    process = _start(project, "stages/tune.py", env=storage.env)
    _wait_for_finished_trials(project, process, 2, storage)
    own_postgres.stop()
    lost_at = time.monotonic()
    _, stderr = process.communicate(timeout=2 * FAIL_WITHIN_S)
    assert time.monotonic() - lost_at <= FAIL_WITHIN_S
    assert process.returncode == 2, stderr
    error = _one_error(stderr)
    assert "OPTUNA_STORAGE" in error
    assert "dvc repro" in error
    assert own_postgres.password not in stderr

    own_postgres.start()
    kept = {t.number: t.value for t in _study(project, storage).trials if t.state.is_finished()}
    assert len(kept) >= 2
    dvc(project, "repro", "tune", env=storage.env)
    after = {t.number: t.value for t in _study(project, storage).trials}
    assert all(after[number] == value for number, value in kept.items())
    _assert_undisturbed(project, undisturbed, storage)


@contextlib.contextmanager
def _phase(name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict]:
    """The environment that puts tune in phase `name`, and the line or state that shows it is
    there: {"env": ..., "line": text on stderr, or "trials": finished trials to wait for}."""
    if name == "connecting":  # nothing listens there: Dask retries the connection
        yield {"env": {"DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{free_port()}"},
               "line": "waiting for the Dask scheduler"}  # fmt: skip
    elif name == "waiting on a service":  # MLflow's retry loop in front of a broken server
        url = request.getfixturevalue("broken_tracking_server")
        yield {"env": {"MLFLOW_TRACKING_URI": url}, "line": "waiting for the MLflow server"}
    elif name == "waiting on workers":
        with dask_cluster(1, 1, env=WORKERS_ENV, log_dir=tmp_path) as cluster:
            yield {"env": {"DASK_SCHEDULER_ADDRESS": cluster.address}, "trials": 1}
    else:
        yield {"env": {}, "trials": 1}


PHASES = ["connecting", "waiting on a service", "waiting on workers", "running"]


@pytest.mark.parametrize(
    ("phase", "signum"),
    tiered(
        [
            pytest.param(phase, signum, id=f"{phase}-{signum.name}")
            for phase in PHASES
            for signum in (signal.SIGINT, signal.SIGTERM)
        ],
        {"connecting-SIGINT", "running-SIGTERM"},
    ),
)
def test_a_stop_ends_tune_within_seconds_in_every_phase(
    tmp_path: Path, request: pytest.FixtureRequest, phase: str, signum: signal.Signals
) -> None:
    project = _prepared(tmp_path, SLOW)
    with _phase(phase, tmp_path, request) as where:
        process = _start(project, "stages/tune.py", env=where["env"])
        stderr = StderrLines(process)
        if "line" in where:
            stderr.wait_for(where["line"])
        else:
            _wait_for_finished_trials(project, process, where["trials"])
        asked = time.monotonic()
        process.send_signal(signum)
        process.wait(timeout=60)
        elapsed = time.monotonic() - asked
        output = stderr.rest()
    assert elapsed <= STOP_WITHIN_S, f"{elapsed:.1f} s to stop in phase {phase}:\n{output}"
    assert process.returncode == 130, output
    assert "Traceback" not in output
