"""The driver's writes - its trials in the study and their MLflow runs - applied in order, off
the driver's thread.

The driver decides everything a trial is (its number, params and outcome); the stores only
keep it. So the driver hands each write to a writer and goes on sampling. `StudyWriter`
applies writes where it is called (tests, in-memory studies); `WriteBehind` runs the same
`StudyWriter` in a child process, whose storage and MLflow work take neither the driver's
thread nor its GIL. The child writes every command it received, even after the driver is
killed (it reads until the pipe closes), and stops at the first error, which the driver
reports as one line.

The study may move on under a write when another tune process shares it. A trial that another
process created first is reported back as taken; a write to a trial this writer did not create
or claim, or a tell of a trial already finished (a process that took it over told it), is
dropped, its MLflow run included.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from typing import Any, Protocol

import optuna
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.engine import make_url

from hpo.errors import PipelineError, skip_exit_collection
from hpo.redaction import redact, scrub, secrets_of
from hpo.storage import tracking, trial_rows
from hpo.storage.settings import STORAGE_VAR, TRACKING_VAR
from hpo.storage.studies import close_storage, open_storage_url, study_lock
from hpo.storage.study_run import StudyRun
from hpo.trial.evaluation import TrialOutcome

# Trial user attributes: who runs the trial, and its outcome while it waits for its turn.
OWNER_ATTR = "owner"
PENDING_ATTR = "pending_outcome"
# Seconds the child process gets to start before the driver gives up on it.
START_TIMEOUT_S = 60


class TrialRecorder(Protocol):
    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None: ...

    def recorded_numbers(self) -> set[int]:
        """Trial numbers that already have a record (after a crash, some may not)."""
        ...


class TrialWriter(Protocol):
    """What the driver writes while it runs the study; every call returns at once."""

    def create(self, number: int, template: FrozenTrial) -> None:
        """Trial `number`, running, as `template` describes it."""

    def claim(self, number: int, owner: dict[str, Any]) -> None:
        """Take over trial `number`, left running by a process that died."""

    def save_pending(self, number: int, outcome: TrialOutcome) -> None:
        """Keep a finished trial's outcome in the study until its turn to be told."""

    def tell(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        """Store the finished `trial` over its running version, then record it in MLflow."""

    def taken(self) -> list[int]:
        """Trials found created by another process since the last call; raises the writer's
        error as a PipelineError (a lost database, a failing tracking server)."""

    def flush(self, timeout: float | None = None) -> bool:
        """Whether every write so far was applied within `timeout` seconds (None: wait)."""

    def close(self) -> None: ...


@dataclass
class StudyWriter:
    """Writes applied in the calling thread: a trial is created, and told, in one transaction
    under the study lock (trial_rows), then recorded."""

    storage: RDBStorage
    study_id: int
    recorder: TrialRecorder
    lock: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    _ids: dict[int, int] = field(default_factory=dict, init=False)  # ours: number -> trial id
    _taken: list[int] = field(default_factory=list, init=False)

    @classmethod
    def of(
        cls,
        study: optuna.Study,
        recorder: TrialRecorder,
        lock: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    ) -> StudyWriter:
        storage = study._storage  # Optuna has no public accessor for it, nor for its backend
        storage = getattr(storage, "_backend", storage)
        if not isinstance(storage, RDBStorage):
            raise TypeError("the study writer needs a study in SQLite or PostgreSQL")
        return cls(storage, study._study_id, recorder, lock)

    def create(self, number: int, template: FrozenTrial) -> None:
        with self.lock():
            if trial_rows.trial_id_of(self.storage, self.study_id, number) is not None:
                self._taken.append(number)
                return
            self._ids[number] = trial_rows.create_running(
                self.storage, self.study_id, number, template
            )

    def claim(self, number: int, owner: dict[str, Any]) -> None:
        trial_id = trial_rows.trial_id_of(self.storage, self.study_id, number)
        self.storage.set_trial_user_attr(trial_id, OWNER_ATTR, owner)
        self._ids[number] = trial_id

    def save_pending(self, number: int, outcome: TrialOutcome) -> None:
        if number in self._ids:
            self.storage.set_trial_user_attr(self._ids[number], PENDING_ATTR, outcome.to_json())

    def tell(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        trial_id = self._ids.get(trial.number)
        if trial_id is None:
            return
        with self.lock():
            told = trial_rows.finish(self.storage, trial_id, trial)
        if told:
            self.recorder.record(trial, outcome)

    def taken(self) -> list[int]:
        taken, self._taken = self._taken, []
        return taken

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class WriterConfig:
    """What the child process needs to open the same stores as the driver."""

    storage_url: str  # with its password: it travels over a local socket only
    study_name: str
    tracking_uri: str
    experiment_id: str
    run_id: str
    tags: dict[str, str]


class WriteBehind:
    """A `StudyWriter` in a child process, fed over a local socket.

    The process starts at once and imports its libraries (seconds) while the driver reaches
    its services; `configure` then names the stores. The driver's thread only pickles a
    command and queues it; a sender thread writes it to the socket, so a child that is slow or
    stuck on a service never blocks the driver (which can then always stop within seconds).
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        stages = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [stages, os.environ.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, "-m", "hpo.storage.writer", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env={**_patient(os.environ), "PYTHONPATH": path},
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        self._connection = Connection(ours.detach())
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_queued, name="writer-feed", daemon=True)
        self._sender.start()
        self._taken: list[int] = []
        self._flushes = self._flushed = 0
        self._error: str | None = None

    def configure(self, config: WriterConfig) -> None:
        """The stores to write to: the first thing the child reads."""
        self._send(config)

    def create(self, number: int, template: FrozenTrial) -> None:
        self._send(("create", number, template))

    def claim(self, number: int, owner: dict[str, Any]) -> None:
        self._send(("claim", number, owner))

    def save_pending(self, number: int, outcome: TrialOutcome) -> None:
        self._send(("save_pending", number, outcome))

    def tell(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        self._send(("tell", trial, outcome))

    def taken(self) -> list[int]:
        self._receive(timeout=0)
        taken, self._taken = self._taken, []
        return taken

    def flush(self, timeout: float | None = None) -> bool:
        """Whether every write so far was applied within `timeout` seconds (None: wait)."""
        if self._flushed == self._flushes:
            self._flushes += 1
            self._send(("flush",))
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._flushed < self._flushes:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._receive(timeout=left)
        return True

    def close(self) -> None:
        """Let the child write what it has and exit; it goes on if the driver does not wait."""
        self._outbox.put(None)

    def wait(self, timeout: float) -> bool:
        """Whether the child process ended within `timeout` seconds (after `close`)."""
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._sender.join()
        self._connection.close()
        return True

    def _send(self, command: Any) -> None:
        self._raise_error()
        self._outbox.put(ForkingPickler.dumps(command))

    def _send_queued(self) -> None:
        """The sender thread: write queued commands until `close`, then end the child's input
        (its last messages can still be read)."""
        with contextlib.suppress(OSError):  # the child ended: `_receive` reports why
            while (payload := self._outbox.get()) is not None:
                self._connection.send_bytes(payload)
            with socket.socket(fileno=os.dup(self._connection.fileno())) as ours:
                ours.shutdown(socket.SHUT_WR)

    def _receive(self, timeout: float | None) -> None:
        """Take the child's messages that arrive within `timeout` seconds (0: those there)."""
        connection = self._connection
        try:
            while connection.poll(timeout):
                kind, value = connection.recv()
                if kind == "taken":
                    self._taken.append(value)
                elif kind == "flushed":
                    self._flushed += 1
                elif kind == "error":
                    self._error = value
                timeout = 0
        except (EOFError, OSError):
            self._error = self._error or "the study writer process ended unexpectedly"
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise PipelineError(self._error)


def _patient(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The environment without the MLflow retry bounds this process set (tracking)."""
    return {name: value for name, value in env.items() if name not in tracking.BOUNDED_HERE}


def _serve(connection: Connection, config: WriterConfig) -> None:
    """The child process: apply commands in order until the driver closes the pipe."""
    storage = open_storage_url(make_url(config.storage_url))
    try:
        study_id = storage.get_study_id_from_name(config.study_name)
        client = MlflowClient(config.tracking_uri)
        recorder = StudyRun(client, config.experiment_id, config.run_id, config.tags)
        writer = StudyWriter(storage, study_id, recorder, lambda: study_lock(storage))
        for command in _commands(connection):
            name, *args = command
            if name == "flush":
                connection.send(("flushed", None))
                continue
            getattr(writer, name)(*args)
            for number in writer.taken():
                connection.send(("taken", number))
    finally:
        close_storage(storage)


def _commands(connection: Connection) -> Iterator[tuple[Any, ...]]:
    with contextlib.suppress(EOFError):
        while True:
            yield connection.recv()


def _failure(exc: BaseException, config: WriterConfig) -> str:
    """One line for the driver: which store failed, and that nothing finished is lost."""
    reason = " ".join(str(exc).split("\n")[0].split())[:300] or type(exc).__name__
    if isinstance(exc, (MlflowException, requests.RequestException)):
        return (
            f"{TRACKING_VAR} {redact(config.tracking_uri)}: recording a trial failed ({reason}); "
            "the study keeps every finished trial and `dvc repro` records the missing runs"
        )
    return (
        f"{STORAGE_VAR} {redact(config.storage_url)}: the study store failed ({reason}); finished "
        "trials are kept and `dvc repro` resumes once it is back"
    )


if __name__ == "__main__":
    atexit.register(skip_exit_collection)
    # Ctrl-C and SIGTERM reach the whole process group: the driver decides when to stop, and
    # this process ends when the driver closes the pipe, after writing what it was sent.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    channel = Connection(int(sys.argv[1]))
    try:
        config: WriterConfig = channel.recv()
    except EOFError:  # the driver stopped before it reached its stores
        sys.exit(0)
    try:
        _serve(channel, config)
    except Exception as exc:  # the driver shows it as one line, its secrets masked
        with contextlib.suppress(OSError):
            secrets = secrets_of(config.storage_url)
            channel.send(("error", scrub(_failure(exc, config), secrets)))
        sys.exit(1)
