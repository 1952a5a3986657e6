"""The driver's writes (hpo.protocol.writes.TrialWriter) applied in order in a child process, off
its thread and GIL. The child writes all it was sent, even after the driver is killed, and stops
at its first failure, which the driver reports as one line naming the store and the kept trials."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from optuna.trial import FrozenTrial

from hpo.errors import PipelineError, what_is_wrong
from hpo.protocol.writes import PENDING_ATTR, TrialRecorder
from hpo.search.trial import RUNG_PREFIX, TrialOutcome
from hpo.sqlite import file_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterConfig:
    """What the child process needs to open the same stores as the driver."""

    storage_url: str | None  # None: the default store; with its password (a local pipe only)
    study_name: str
    study_label: str  # how messages name each store (hpo.storage.studies.label, ...)
    tracking_uri: str
    tracking_label: str
    experiment_id: str
    run_id: str
    metric: str
    tags: dict[str, str]
    patient: tuple[str, ...]  # MLflow retry bounds the driver set, which the child drops
    files: dict[str, str]  # label -> path of each local SQLite store, watched while it writes


class WriteBehind:
    """The tune stage's TrialWriter: its child starts (and imports) at once, `configure` names the
    stores later; a sender thread feeds the pipe, so a stuck child never blocks the driver."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs,), name="hpo-writer")
        self._process.start()
        theirs.close()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_queued, name="writer-feed", daemon=True)
        self._sender.start()
        self._stored: list[int] = []
        self._flushes = self._flushed = self.kept = 0
        self._error: str | None = None
        self._closed = self._configured = False
        # How many finished trials the study holds, counted in the store when the child dies
        # (it may have stored one more than it could say); set by the session.
        self.recount: Callable[[], int] | None = None

    def configure(self, config: WriterConfig) -> None:
        self._configured = True
        self._send(config)

    def create(self, number: int, trial: FrozenTrial) -> None:
        self._send(("create", number, trial))

    def save_pending(self, number: int, outcome: TrialOutcome) -> None:
        self._send(("save_pending", number, outcome))

    def tell(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        self._send(("tell", trial, outcome))

    def stored(self) -> list[int]:
        self._receive(timeout=0)
        stored, self._stored = self._stored, []
        return stored

    def flush(self, timeout: float) -> bool:
        if self._flushed == self._flushes:
            self._flushes += 1
            self._send(("flush",))
        deadline = time.monotonic() + timeout
        while self._flushed < self._flushes:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._receive(timeout=left)
        return True

    def close(self, timeout: float) -> None:
        """Let the child apply what it was sent and exit; one still writing after `timeout` s is
        stopped (what it had not stored was never shown as done: the next run evaluates it)."""
        if self._closed:
            return
        self._closed = True
        self._outbox.put(None)
        self._process.join(timeout)
        if self._process.is_alive() and self._configured:
            log.warning(f"warning: the study writer had not stored every trial within "
                        f"{timeout:.0f} s; `dvc repro` evaluates the rest again")  # fmt: skip
            self._process.kill()
            self._process.join()
        self._connection.close()

    def _send(self, command: Any) -> None:
        self._raise_error()
        self._outbox.put(command)

    def _send_queued(self) -> None:
        """Write queued commands until `close`, then tell the child that nothing follows."""
        with contextlib.suppress(OSError):  # the child ended: `_receive` reports why
            while (command := self._outbox.get()) is not None:
                self._connection.send(command)
            self._connection.send(("stop",))

    def _receive(self, timeout: float) -> None:
        """Take the child's answers that arrive within `timeout` seconds (0: those there)."""
        try:
            while self._connection.poll(timeout):
                kind, *value = self._connection.recv()
                if kind == "stored":
                    self._stored.append(value[0])
                    self.kept = value[1]
                elif kind == "kept":
                    self.kept = value[0]
                elif kind == "flushed":
                    self._flushed += 1
                elif kind == "error":
                    self._error = value[0]
                timeout = 0
        except (EOFError, OSError):
            self._process.join(1)
            code = self._process.exitcode
            killed = code is not None and code < 0
            how = f"killed by signal {-code}" if killed else f"exit code {code}"
            if self._error is None:
                with contextlib.suppress(Exception):
                    self.kept = self.recount() if self.recount else self.kept
                self._error = (
                    f"the study writer process ended unexpectedly ({how}); the study keeps its "
                    f"finished trials ({self.kept}), and `dvc repro` resumes it"
                )
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise PipelineError(self._error)


class StoreWriter:
    """The TrialWriter applied where it is called (writer process, tests); `recorder` optional;
    `on_stored(number, kept)` hears of each trial once it is in the study, before its record."""

    def __init__(
        self,
        storage: Any,
        study_name: str,
        recorder: TrialRecorder | None = None,
        on_stored: Callable[[int, int], None] = lambda _number, _kept: None,
    ) -> None:
        self.storage, self.recorder, self.on_stored = storage, recorder, on_stored
        self.study_id = storage.get_study_id_from_name(study_name)
        trials = storage.get_all_trials(self.study_id, deepcopy=False)
        self.kept = sum(trial.state.is_finished() for trial in trials)  # finished, in the study
        self.recording: int | None = None  # the trial whose record is being written
        self._ids: dict[int, int] = {}  # trial number -> id
        self._stored: list[int] = []
        if recorder is not None:  # finished trials whose record was lost (a kill, a lost store)
            recorded = recorder.recorded_numbers()
            for trial in trials:
                if trial.state.is_finished() and trial.number not in recorded:
                    self._record(trial, TrialOutcome.from_frozen(trial))

    def create(self, number: int, trial: FrozenTrial) -> None:
        self._ids[number] = self.storage.create_new_trial(self.study_id, template_trial=trial)

    def save_pending(self, number: int, outcome: TrialOutcome) -> None:
        self.storage.set_trial_user_attr(self._id(number), PENDING_ATTR, outcome.to_json())

    def tell(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        """The finished trial over its running version, its state last (a write cut short leaves
        it running, to be evaluated again); then its record."""
        trial_id = self._id(trial.number)
        for step, value in trial.intermediate_values.items():
            self.storage.set_trial_intermediate_value(trial_id, step, value)
        for key, value in trial.user_attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)
        for key, value in trial.system_attrs.items():
            if key.startswith(RUNG_PREFIX):  # what successive halving wrote, as in a live study
                self.storage.set_trial_system_attr(trial_id, key, value)
        values = None if trial.value is None else [trial.value]
        self.storage.set_trial_state_values(trial_id, trial.state, values)
        self.kept += 1
        self._stored.append(trial.number)
        self.on_stored(trial.number, self.kept)
        self._record(trial, outcome)

    def stored(self) -> list[int]:
        stored, self._stored = self._stored, []
        return stored

    def flush(self, timeout: float) -> bool:
        return True

    def close(self, timeout: float) -> None:
        pass

    def _id(self, number: int) -> int:
        """A trial created here, or left running by a stopped run."""
        if number not in self._ids:
            self._ids[number] = self.storage.get_trial_id_from_study_id_trial_number(
                self.study_id, number
            )
        return self._ids[number]

    def _record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        if self.recorder is not None:
            self.recording = trial.number
            self.recorder.record(trial, outcome)
            self.recording = None


def _serve(connection: Connection) -> None:
    """The child process: apply commands in order until the driver closes the pipe."""
    # Ctrl-C and SIGTERM reach the whole process group: the driver decides when to stop.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    config = next(_commands(connection), None)
    if not isinstance(config, WriterConfig):  # the driver stopped before it reached its stores
        return
    from mlflow.tracking import MlflowClient
    from sqlalchemy.engine import make_url

    from hpo.storage.studies import close_storage, open_storage_url
    from hpo.tracking.study_run import StudyRun

    for name in config.patient:
        os.environ.pop(name, None)
    writer = None
    try:
        url = None if config.storage_url is None else make_url(config.storage_url)
        storage = open_storage_url(url)
        try:
            recorder = StudyRun(MlflowClient(config.tracking_uri), config.experiment_id,
                                config.run_id, config.metric, config.tags)  # fmt: skip

            def stored(number: int, kept: int) -> None:
                connection.send(("stored", number, kept))

            writer = StoreWriter(storage, config.study_name, recorder, stored)
            connection.send(("kept", writer.kept))
            files = {label: file_identity(path) for label, path in config.files.items()}
            for name, *args in _commands(connection):
                for label, identity in files.items():
                    if file_identity(config.files[label]) != identity:
                        raise VanishedError(label)
                if name == "flush":
                    connection.send(("flushed",))
                    continue
                getattr(writer, name)(*args)
        finally:
            close_storage(storage)
    except Exception as exc:  # the driver shows it as one line, its secrets masked there
        with contextlib.suppress(OSError):
            connection.send(("error", _failure(exc, config, writer)))


class VanishedError(Exception):
    """A store's file was deleted or replaced while tune ran (SQLite writes on to the old one)."""


def _failure(exc: BaseException, config: WriterConfig, writer: StoreWriter | None) -> str:
    """One line: the store at fault, what it said, and what the study keeps."""
    kept = "" if writer is None else f"; the study keeps its finished trials ({writer.kept})"
    if isinstance(exc, VanishedError):
        if str(exc) == config.study_label:
            return f"{exc}: deleted or replaced while tune ran; `dvc repro` starts the study again"
        return f"{exc}: deleted or replaced while tune ran{kept}, and `dvc repro` records them anew"
    while exc.__cause__ is not None:  # Optuna wraps the database's own error
        exc = exc.__cause__
    reason = what_is_wrong(exc)[:300]
    if writer is None or writer.recording is None:
        what, then = f"{config.study_label}: the study store failed", "resumes once it is fixed"
    else:
        what = f"{config.tracking_label}: recording trial {writer.recording} failed"
        then = "records the missing runs once it is fixed"
    return f"{what} ({reason}){kept}, and `dvc repro` {then}"


def _commands(connection: Connection) -> Any:
    """The driver's commands until it says stop, or until the pipe closes (it was killed)."""
    with contextlib.suppress(EOFError):
        while (command := connection.recv()) != ("stop",):
            yield command
