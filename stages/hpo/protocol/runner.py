"""Parallel Optuna trials whose sequence depends on neither timing, budget nor crashes.

Optuna's own `n_jobs` lets each thread ask the sampler whenever it is free, so what the
sampler and the pruner see depends on which trial happened to finish first. Here the main
thread is the only one that touches the study, and it follows a fixed protocol:

* trials are asked in number order, each with a sampler seeded by (seed + trial number);
* at most `window = parallel_trials + lookahead` trials are asked and not yet told; trial k is
  asked only after trial k - window has been told, and trials are told in number order;
* trial k's sampler sees trials 0..k-window finished and the later ones running, and its
  pruner compares it with the complete trials among 0..k-window (view.py).

So trial k is a function of the settings and of k alone. Two runs with the same params give
the same trials whatever executes them (local threads or a Dask cluster of any size only
change how fast trials come back); a study of N trials is the first N trials of any longer
one, so raising `n_trials` runs only the new trials and lowering it runs none; and a run that
was killed continues exactly as if it had not been.

The driver walks the study in number order and, for each place, takes what the storage
held when it started: a finished trial is replayed into the protocol without being evaluated;
a trial that another live tune process runs is waited for; a trial whose process died is
taken over and evaluated again with the same params (or told from its saved outcome); only
past the end of the stored trials are new trials asked. The driver never waits for a store:
it hands its writes to a `TrialWriter` (hpo.storage.writer), which applies them in order in a
child process. A trial that finishes before its turn to be told is saved at once in the study
(user attribute `pending_outcome`), so a killed run loses no finished work. Each asked trial
carries its owner (host, pid, start time), and the writer creates it under the study lock
only if no other process did: a trial another process asked first is left to that process and
waited for, so processes sharing a study never run a trial twice. No library offers this:
Optuna's samplers read the live storage, and its `RetryFailedTrialCallback` re-asks failed
trials under new numbers.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
import psutil
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import PipelineError
from hpo.protocol.view import ProtocolView, SamplerFactory, running_trial
from hpo.storage.writer import (
    OWNER_ATTR,
    PENDING_ATTR,
    StudyWriter,
    TrialRecorder,
    TrialWriter,
)
from hpo.trial.evaluation import PrunerEvidence, TrialOutcome, TrialTask
from hpo.waits import announced

# (trial number, sampled params, completed trials for its pruner) -> the task to evaluate
TaskFactory = Callable[[int, dict[str, Any], PrunerEvidence], TrialTask]

# Trial user attribute: the study's tuning time when the trial was told, summed over the
# sessions before it: wall time, and the main thread's time (sampling, building tasks,
# handing writes to the writer process) - its wall time (which includes waiting for a core
# that XGBoost holds) and its CPU time (what it takes away from the fits). A study of N
# trials took the clock of its last trial, however long the study has grown since.
CLOCK_ATTR = "tune_clock"
# Study user attribute: the tune processes running the study now, so that the last one to
# finish, and only that one, writes the stage's outputs and closes the MLflow study run.
SESSIONS_ATTR = "tune_sessions"
# Seconds between checks while waiting for workers, for another process's trials or for a
# stop request.
POLL_S = 0.5
# Seconds an interrupted driver gives its writer to store the trials that finished.
STOP_FLUSH_S = 3.0


class TuningInterruptedError(Exception):
    """A stop was requested (Ctrl-C, SIGTERM); raised only between storage operations."""


class TrialExecutor(Protocol):
    """What runs the trials (hpo.execution): a future of each task's outcome."""

    tags: dict[str, str]  # where the trials run, for the MLflow runs

    def submit(self, task: TrialTask) -> Future[TrialOutcome]: ...

    def shutdown(self, cancel: bool = False) -> None:
        """Release the workers; with cancel, unfinished trials end as soon as possible."""
        ...


@dataclass(frozen=True)
class TuneClock:
    wall_s: float = 0.0
    main_s: float = 0.0
    main_cpu_s: float = 0.0

    @classmethod
    def of(cls, trial: FrozenTrial) -> TuneClock:
        return cls(**trial.user_attrs.get(CLOCK_ATTR, {}))

    def latest(self, other: TuneClock) -> TuneClock:
        return TuneClock(
            max(self.wall_s, other.wall_s),
            max(self.main_s, other.main_s),
            max(self.main_cpu_s, other.main_cpu_s),
        )


@dataclass
class Progress:
    """The study's first trials in number order, as far as the protocol has told them."""

    n_trials: int
    trials: list[FrozenTrial] = field(default_factory=list)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_number: int | None = None
    told_this_session: int = 0
    last_session: bool = True  # no other tune process was running the study at the end
    main_thread_seconds: float = 0.0
    main_thread_cpu_seconds: float = 0.0

    @contextlib.contextmanager
    def main_thread_work(self) -> Iterator[None]:
        """Account a block of sampler, storage and MLflow work to the main thread's time."""
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.main_thread_seconds += time.perf_counter() - wall
            self.main_thread_cpu_seconds += time.thread_time() - cpu

    @property
    def finished(self) -> int:
        """Trials that use up the budget: failed ones do not."""
        return self.complete + self.pruned

    @property
    def best_trial(self) -> FrozenTrial | None:
        return None if self.best_number is None else self.trials[self.best_number]

    @property
    def clock(self) -> TuneClock:
        """The study's tuning time when the last of these trials was told."""
        latest = TuneClock()
        for trial in self.trials:
            latest = latest.latest(TuneClock.of(trial))
        return latest

    def add(self, trial: FrozenTrial) -> None:
        assert trial.number == len(self.trials), "trials are added in number order"
        self.trials.append(trial)
        if trial.state == TrialState.COMPLETE:
            self.complete += 1
            best = self.best_trial
            if best is None or trial.value < best.value:
                self.best_number = trial.number
        elif trial.state == TrialState.PRUNED:
            self.pruned += 1
        elif trial.state == TrialState.FAIL:
            self.failed += 1

    def budget_left(self, n_in_flight: int) -> bool:
        """Whether one more trial may be asked beside `n_in_flight` asked and not yet told.

        Failed trials do not use up the budget, but an always-failing objective must end.
        """
        return max(self.finished, self.failed) + n_in_flight < self.n_trials

    def line(self, trial: FrozenTrial) -> str:
        value = "" if trial.value is None else f" mse={trial.value:.5f}"
        best = self.best_trial
        best_text = "-" if best is None else f"{best.value:.5f} (trial {best.number})"
        return (
            f"trial {trial.number:>3} {trial.state.name:<8}{value:<16} | done {self.finished}/"
            f"{self.n_trials}, pruned {self.pruned}, failed {self.failed} | best {best_text}"
        )


@dataclass
class _Slot:
    """A trial between its place in the protocol and its turn to be told.

    Ours when `future` is set (`running` is then the trial as created); finished when
    `stored` is; otherwise another live process runs it and the slot waits for its result in
    the storage.
    """

    number: int
    running: FrozenTrial | None = None
    future: Future[TrialOutcome] | None = None
    stored: FrozenTrial | None = None
    saved: bool = False  # its outcome is in PENDING_ATTR

    def ready(self) -> bool:
        return self.stored is not None or (self.future is not None and self.future.done())


@dataclass
class StudyRunner:
    study: optuna.Study
    distributions: dict[str, BaseDistribution]
    n_trials: int
    parallel_trials: int
    lookahead: int
    make_sampler: SamplerFactory
    make_task: TaskFactory
    executor: TrialExecutor
    recorder: TrialRecorder
    # The study's and MLflow's writes during the run; by default applied in this thread.
    writer: TrialWriter | None = None
    ask_lock: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    fault_hook: Callable[[int], None] = lambda _number: None
    log: Callable[[str], None] = print
    # Set by Ctrl-C or SIGTERM (hpo.waits.StopSignal) and checked every POLL_S: the run stops
    # between asks and tells, and the writer process finishes what it was sent.
    stop: threading.Event = field(default_factory=threading.Event)
    _finished: dict[int, FrozenTrial] = field(default_factory=dict, init=False)
    _n_stored: int = field(default=0, init=False)  # trials in the storage when the run started
    _clock_base: TuneClock = field(default_factory=TuneClock, init=False)
    _started: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.writer is None:
            self.writer = StudyWriter.of(self.study, self.recorder, self.ask_lock)

    def run(self) -> Progress:
        """Walk the protocol until n_trials trials are COMPLETE or PRUNED; return that prefix."""
        with self.ask_lock():
            self._set_sessions([*self._other_sessions(), _this_process()])
            self._record_missing()
            stored = self.study.get_trials(deepcopy=False)
        self._finished = {t.number: t for t in stored if t.state.is_finished()}
        self._n_stored = len(stored)
        for trial in stored:
            self._clock_base = self._clock_base.latest(TuneClock.of(trial))
        if stored:
            self.log(f"study {self.study.study_name}: {len(stored)} trials stored")
        window = self.parallel_trials + self.lookahead
        view = ProtocolView(self.distributions, self.make_sampler, window)
        progress = Progress(self.n_trials)
        self._started = time.perf_counter()
        in_flight: deque[_Slot] = deque()
        try:
            while True:
                if self.stop.is_set():
                    raise TuningInterruptedError
                while len(in_flight) < window and progress.budget_left(len(in_flight)):
                    with progress.main_thread_work():
                        in_flight.append(self._open(view))
                if not in_flight:
                    break
                self._leave_taken(in_flight)
                if not self._wait_for_head(in_flight, view, progress):
                    continue
                head = in_flight[0]
                if head.stored is None:
                    # Told while still in flight: if telling fails, the interrupt path retries.
                    with progress.main_thread_work():
                        head.stored = self._tell(head, progress)
                    progress.told_this_session += 1
                in_flight.popleft()
                view.tell(head.stored)
                progress.add(head.stored)
                if head.future is not None:
                    self.log(progress.line(head.stored))
            with announced("the study store and MLflow to take the last trials", log=self.log):
                while not self.writer.flush(POLL_S):
                    if self.stop.is_set():
                        raise TuningInterruptedError
        except BaseException:
            self.executor.shutdown(cancel=True)
            self._keep_after_interrupt(in_flight, progress)
            with contextlib.suppress(Exception), self.ask_lock():
                self._set_sessions(self._other_sessions())
            raise
        self.executor.shutdown()
        with self.ask_lock():
            others = self._other_sessions()
            self._set_sessions(others)
        progress.last_session = not others
        if progress.finished < self.n_trials:
            self.log(
                f"warning: only {progress.finished} of {self.n_trials} trials finished; "
                f"{progress.failed} failed (asking stops after n_trials failures)"
            )
        if progress.complete == 0:
            raise PipelineError(
                f"no trial completed ({progress.pruned} pruned, {progress.failed} failed); "
                "see the trial errors in the study or in MLflow"
            )
        return progress

    def _open(self, view: ProtocolView) -> _Slot:
        """The protocol's next trial: replayed, waited for, taken over, or asked anew."""
        number = view.n_trials
        if number >= self._n_stored:
            params = view.sample()
            distributions = {name: self.distributions[name] for name in params}
            running = running_trial(params, distributions, {OWNER_ATTR: _this_process()})
            running.number = number
            self.writer.create(number, running)
            return self._submit(number, running, view)
        stored = self._stored_trial(number)
        view.add_running(stored)
        if stored.state.is_finished():
            return _Slot(number, stored=stored)
        if _is_alive(stored.user_attrs.get(OWNER_ATTR)):
            return _Slot(number)
        return self._take_over(stored, view)

    @property
    def _storage(self) -> BaseStorage:
        return self.study._storage  # Optuna has no public accessor for it

    def _stored_trial(self, number: int) -> FrozenTrial | None:
        """Trial `number` as the storage has it now (finished trials never change)."""
        if number in self._finished:
            return self._finished[number]
        storage = self._storage
        try:
            trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        except KeyError:
            return None
        trial = storage.get_trial(trial_id)
        if trial.state.is_finished():
            self._finished[number] = trial
        return trial

    def _take_over(self, stored: FrozenTrial, view: ProtocolView) -> _Slot:
        """A trial whose process died: tell its saved outcome, or evaluate it again."""
        owner = _this_process()
        self.writer.claim(stored.number, owner)
        running = _with_user_attrs(stored, {OWNER_ATTR: owner})
        saved = stored.user_attrs.get(PENDING_ATTR)
        if saved is None:
            self.log(f"trial {stored.number} was left running by a stopped run: evaluating it")
            return self._submit(stored.number, running, view)
        self.log(f"trial {stored.number} was left running by a stopped run: telling it")
        future: Future[TrialOutcome] = Future()
        future.set_result(TrialOutcome.from_json(saved))
        return _Slot(stored.number, running, future, saved=True)

    def _submit(self, number: int, running: FrozenTrial, view: ProtocolView) -> _Slot:
        task = self.make_task(number, running.params, view.completed_for(number))
        try:
            self.fault_hook(number)
        except Exception as exc:  # the test hook's failing trial never reaches the executor
            failed: Future[TrialOutcome] = Future()
            failed.set_result(TrialOutcome.failed(task, exc))
            return _Slot(number, running, failed)
        return _Slot(number, running, self.executor.submit(task))

    def _leave_taken(self, in_flight: deque[_Slot]) -> None:
        """Leave the trials that another process asked first to it: wait for its results."""
        taken = set(self.writer.taken())
        for slot in in_flight:
            if slot.number in taken and slot.stored is None:
                slot.future.cancel()
                slot.future = slot.running = None

    def _wait_for_head(
        self, in_flight: deque[_Slot], view: ProtocolView, progress: Progress
    ) -> bool:
        """Wait a little for the oldest trial; save any trial of ours that finished out of turn."""
        head = in_flight[0]
        if not head.ready():
            running = [s.future for s in in_flight if s.future is not None and not s.future.done()]
            if running:
                wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
            else:
                time.sleep(POLL_S)
        if head.future is None and head.stored is None:  # another process's trial
            with progress.main_thread_work(), self.ask_lock():
                self._poll_foreign(in_flight, view)
        for slot in list(in_flight)[1:]:
            if slot.future is not None and slot.future.done() and not slot.saved:
                if not slot.future.cancelled() and slot.future.exception() is None:
                    with progress.main_thread_work():
                        self.writer.save_pending(slot.number, slot.future.result())
                slot.saved = True
        return in_flight[0].ready()

    def _poll_foreign(self, in_flight: deque[_Slot], view: ProtocolView) -> None:
        """The head trial of another process: take its result, or take it over if it died."""
        head = in_flight[0]
        current = self._stored_trial(head.number)
        if current.state.is_finished():
            head.stored = current
        elif not _is_alive(current.user_attrs.get(OWNER_ATTR)):
            in_flight[0] = self._take_over(current, view)

    def _clock_now(self, progress: Progress) -> TuneClock:
        """The study's tuning time so far: earlier sessions' plus this one's."""
        return TuneClock(
            self._clock_base.wall_s + time.perf_counter() - self._started,
            self._clock_base.main_s + progress.main_thread_seconds,
            self._clock_base.main_cpu_s + progress.main_thread_cpu_seconds,
        )

    def _tell(self, slot: _Slot, progress: Progress) -> FrozenTrial:
        """The slot's trial as told (the study will hold exactly this), handed to the writer."""
        outcome = slot.future.result()
        attrs: dict[str, Any] = {}
        if outcome.result is not None and outcome.state == TrialState.COMPLETE:
            attrs["fold_mse"] = outcome.result.fold_mse
            attrs["fold_r2"] = outcome.result.fold_r2
        if outcome.error is not None:
            attrs["error"] = outcome.error
        clock = self._clock_now(progress)
        attrs[CLOCK_ATTR] = {k: round(v, 3) for k, v in vars(clock).items()}
        told = _with_user_attrs(slot.running, attrs)
        told.state = outcome.state
        told.intermediate_values = {**slot.running.intermediate_values, **outcome.reported}
        told.value = _told_value(outcome.state, outcome.value, told.intermediate_values)
        told.datetime_complete = datetime.datetime.now()
        self.writer.tell(told, outcome)
        return told

    def _keep_after_interrupt(self, in_flight: deque[_Slot], progress: Progress) -> None:
        """Tell what finished; leave the rest running, for the next run to evaluate again.

        A trial already told (its record may have failed) is left alone: the next run's
        `_record_missing` writes a missing record. A finished trial that cannot be told now
        is saved in PENDING_ATTR, for the next run to tell.
        """
        for slot in in_flight:
            future = slot.future
            if slot.stored is not None or future is None or not future.done():
                continue
            if future.cancelled() or future.exception() is not None:
                continue
            try:
                self._tell(slot, progress)
            except Exception:  # never mask the interrupt; keep a finished result for the next run
                if not slot.saved:
                    with contextlib.suppress(Exception):
                        self.writer.save_pending(slot.number, future.result())
        with contextlib.suppress(Exception):  # a writer that cannot catch up loses no trial:
            self.writer.flush(STOP_FLUSH_S)  # it goes on writing after the driver has stopped

    def _other_sessions(self) -> list[dict[str, Any]]:
        """The other live tune processes running this study (stopped ones are dropped)."""
        me = _this_process()
        sessions = self.study.user_attrs.get(SESSIONS_ATTR, [])
        return [s for s in sessions if s != me and _is_alive(s)]

    def _set_sessions(self, sessions: list[dict[str, Any]]) -> None:
        self.study.set_user_attr(SESSIONS_ATTR, sessions)

    def _record_missing(self) -> None:
        """Record finished trials whose record was lost (killed between tell and record)."""
        recorded = self.recorder.recorded_numbers()
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in recorded:
                self.recorder.record(trial, TrialOutcome.from_frozen(trial))
                self.log(f"trial {trial.number} had no MLflow run: recorded it")


def _with_user_attrs(trial: FrozenTrial, attrs: dict[str, Any]) -> FrozenTrial:
    copy = FrozenTrial(
        number=trial.number,
        state=trial.state,
        value=trial.value,
        datetime_start=trial.datetime_start,
        datetime_complete=trial.datetime_complete,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs={**trial.user_attrs, **attrs},
        system_attrs=trial.system_attrs,
        intermediate_values=dict(trial.intermediate_values),
        trial_id=trial._trial_id,
    )
    return copy


def _told_value(
    state: TrialState, value: float | None, intermediate: dict[int, float]
) -> float | None:
    """The value Optuna's `study.tell` stores: a pruned trial takes its last reported value."""
    if state == TrialState.PRUNED and intermediate:
        last = intermediate[max(intermediate)]
        return None if math.isnan(last) else last
    return value if state == TrialState.COMPLETE else None


def _this_process() -> dict[str, Any]:
    me = psutil.Process()
    return {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()}


def _is_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the process that asked a trial still runs (on this host; SQLite is local).

    A container restarted with the same hostname often gets the same pid again: the start
    time (and our own pid, which cannot own a trial of an earlier run) tells them apart.
    Another host's process cannot be seen from here, so it counts as gone (see docs/cluster.md on
    drivers on several hosts).
    """
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner["pid"])
    if pid == os.getpid():
        return False
    try:
        return owner.get("started") in (None, psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True


def summarize(study_name: str, progress: Progress) -> dict[str, Any]:
    """The outcome of the study's first trials as the tune stage writes it (tune_summary.json)."""
    best, clock = progress.best_trial, progress.clock
    return {
        "study_name": study_name,
        "trial_budget": progress.n_trials,
        "best_trial_number": best.number,
        "best_cv_mse": best.value,
        "best_params": best.params,
        "n_trials": {
            "complete": progress.complete,
            "pruned": progress.pruned,
            "failed": progress.failed,
        },
        "optimization_time_seconds": clock.wall_s,
        "main_thread_seconds": clock.main_s,
        "main_thread_cpu_seconds": clock.main_cpu_s,
    }
