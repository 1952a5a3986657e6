"""The driver: parallel Optuna trials whose sequence depends on neither timing, budget nor crashes.
Only the main thread touches the study, following the ask/tell protocol of docs/design.md (the
history each trial sees: view.py). It walks the stored trials in number order: a finished one is
replayed, a running one (left by a stopped run) evaluated again or told from its saved outcome
(PENDING_ATTR); only past the end are new trials asked."""

from __future__ import annotations

import contextlib
import copy
import datetime
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import PipelineError
from hpo.protocol.view import ProtocolView, SamplerFactory
from hpo.protocol.writes import CLOCK_ATTR, PENDING_ATTR, TrialWriter
from hpo.search.trial import (
    ERROR_ATTR,
    FOLD_SCORES_ATTR,
    RUNG_PREFIX,
    PrunerEvidence,
    TrialOutcome,
    TrialTask,
)

log = logging.getLogger(__name__)
# Seconds between checks while waiting for workers or for a stop request.
POLL_S = 0.5
# Seconds an interrupted driver gives its writer to store the trials that finished.
STOP_FLUSH_S = 3.0


class TuningInterruptedError(Exception):
    """A stop was requested (Ctrl-C, SIGTERM)."""


class TrialExecutor(Protocol):
    """What runs the trials (hpo.execution): a future of each task's outcome."""

    tags: dict[str, str]  # where the trials run, for the MLflow runs

    def submit(self, task: TrialTask) -> Future[TrialOutcome]: ...

    def shutdown(self, cancel: bool = False) -> None:
        """Release the workers; with cancel, unfinished trials end as soon as possible."""


@dataclass(frozen=True)
class TuneClock:
    """The study's tuning time when a trial was told, over all its sessions: wall time, and the
    main thread's (sampling, building tasks) as wall and as CPU time."""

    wall_s: float = 0.0
    main_s: float = 0.0
    main_cpu_s: float = 0.0

    @classmethod
    def of(cls, trial: FrozenTrial) -> TuneClock:
        return cls(**trial.user_attrs.get(CLOCK_ATTR, {}))

    def latest(self, other: TuneClock) -> TuneClock:
        return TuneClock(*map(max, vars(self).values(), vars(other).values()))


@dataclass
class Progress:
    """The study's first trials in number order, as far as the protocol has told them."""

    n_trials: int
    metric: str
    direction: str
    trials: list[FrozenTrial] = field(default_factory=list)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_number: int | None = None
    told_this_session: int = 0
    main_thread_seconds: float = 0.0
    main_thread_cpu_seconds: float = 0.0

    @contextlib.contextmanager
    def main_thread_work(self) -> Iterator[None]:
        """Account a block of sampler and driver work to the main thread's time."""
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
            maximize = self.direction == "maximize"
            if best is None or (trial.value > best.value if maximize else trial.value < best.value):
                self.best_number = trial.number
        elif trial.state == TrialState.PRUNED:
            self.pruned += 1
        elif trial.state == TrialState.FAIL:
            self.failed += 1

    def budget_left(self, n_in_flight: int) -> bool:
        """Whether one more trial may be asked beside `n_in_flight` asked and not yet told;
        failed trials do not use up the budget, but an always-failing objective must end."""
        return max(self.finished, self.failed) + n_in_flight < self.n_trials

    def line(self, trial: FrozenTrial) -> str:
        value = "" if trial.value is None else f" {self.metric}={trial.value:.5f}"
        best = self.best_trial
        best_text = "-" if best is None else f"{best.value:.5f} (trial {best.number})"
        return (
            f"trial {trial.number:>3} {trial.state.name:<8}{value:<18} | done {self.finished}/"
            f"{self.n_trials}, pruned {self.pruned}, failed {self.failed} | best {best_text}"
        )


@dataclass
class _Slot:
    """A trial until its turn to be told: evaluated (`future`), or found finished (`stored`)."""

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
    metric: str
    n_trials: int
    window: int  # parallel_trials + lookahead
    make_sampler: SamplerFactory
    make_task: Callable[[int, dict[str, Any], PrunerEvidence], TrialTask]
    executor: TrialExecutor
    writer: TrialWriter
    first: list[dict[str, Any]] = field(default_factory=list)  # values of the first trials
    fault_hook: Callable[[int], None] = lambda _number: None
    # Set by Ctrl-C or SIGTERM (hpo.waits.StopSignal); checked every POLL_S, between tells.
    stop: threading.Event = field(default_factory=threading.Event)
    _lines: deque[tuple[int, str]] = field(default_factory=deque, init=False)
    _clock_base: TuneClock = field(default_factory=TuneClock, init=False)
    _started: float = field(default=0.0, init=False)

    def run(self) -> Progress:
        """Walk the protocol until n_trials trials are COMPLETE or PRUNED; return that prefix."""
        stored = self.study.get_trials(deepcopy=False)
        for trial in stored:
            self._clock_base = self._clock_base.latest(TuneClock.of(trial))
        if stored:
            log.info(f"study {self.study.study_name}: {len(stored)} trials stored")
        direction = self.study.direction.name.lower()
        view = ProtocolView(
            self.distributions, self.make_sampler, self.window, direction, self.first
        )
        progress = Progress(self.n_trials, self.metric, direction)
        self._started = time.perf_counter()
        in_flight: deque[_Slot] = deque()
        try:
            while True:
                if self.stop.is_set():
                    raise TuningInterruptedError
                while len(in_flight) < self.window and progress.budget_left(len(in_flight)):
                    with progress.main_thread_work():
                        in_flight.append(self._open(view, stored))
                self._show_stored()
                if not in_flight:
                    break
                if not self._wait_for_head(in_flight, progress):
                    continue
                head = in_flight.popleft()
                if head.stored is None:
                    with progress.main_thread_work():
                        head.stored = self._tell(head, progress)
                    progress.told_this_session += 1
                view.tell(head.stored)
                progress.add(head.stored)
                if head.future is not None:
                    self._lines.append((head.number, progress.line(head.stored)))
            while not self.writer.flush(POLL_S):
                self._show_stored()
                if self.stop.is_set():
                    raise TuningInterruptedError
            self._show_stored()
        except BaseException:
            self.executor.shutdown(cancel=True)
            self._keep_after_interrupt(in_flight, progress)
            raise
        self.executor.shutdown()
        if progress.finished < self.n_trials:
            log.warning(
                f"warning: only {progress.finished} of {self.n_trials} trials finished; "
                f"{progress.failed} failed (asking stops after n_trials failures)"
            )
        if progress.complete == 0:
            errors = [t.user_attrs.get(ERROR_ATTR) for t in progress.trials]
            last = next((f"; the last: {e.splitlines()[0]}" for e in reversed(errors) if e), "")
            raise PipelineError(
                f"no trial completed ({progress.pruned} pruned, {progress.failed} failed){last}; "
                "every trial's error is in the study and in MLflow"
            )
        return progress

    def _open(self, view: ProtocolView, stored: list[FrozenTrial]) -> _Slot:
        """The next trial in number order: replayed, resumed or asked."""
        number = view.n_trials
        if number < len(stored):
            trial = stored[number]
            view.add_running(trial)
            if trial.state.is_finished():
                return _Slot(number, stored=trial)
            saved = trial.user_attrs.get(PENDING_ATTR)
            if saved is not None:
                log.info(f"trial {number} was left running by a stopped run: telling its result")
                future: Future[TrialOutcome] = Future()
                future.set_result(TrialOutcome.from_json(saved))
                return _Slot(number, trial, future, saved=True)
            log.info(f"trial {number} was left running by a stopped run: evaluating it again")
            return self._submit(number, trial, view)
        running = view.sample()
        running.number = number
        self.writer.create(number, running)
        return self._submit(number, running, view)

    def _submit(self, number: int, running: FrozenTrial, view: ProtocolView) -> _Slot:
        task = self.make_task(number, running.params, view.evidence_for(number))
        try:
            self.fault_hook(number)
        except Exception as exc:  # the test hook's failing trial never reaches the executor
            failed: Future[TrialOutcome] = Future()
            failed.set_result(TrialOutcome.failed(task, exc))
            return _Slot(number, running, failed)
        return _Slot(number, running, self.executor.submit(task))

    def _wait_for_head(self, in_flight: deque[_Slot], progress: Progress) -> bool:
        """Wait a little for the oldest trial; save any trial that finished out of turn."""
        if not in_flight[0].ready():
            running = [s.future for s in in_flight if s.future is not None and not s.future.done()]
            wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
        for slot in list(in_flight)[1:]:
            if slot.future is not None and slot.future.done() and not slot.saved:
                if slot.future.exception() is None:
                    with progress.main_thread_work():
                        self.writer.save_pending(slot.number, slot.future.result())
                slot.saved = True
        return in_flight[0].ready()

    def _show_stored(self) -> None:
        """A progress line for each trial the writer has stored, not before."""
        stored = self.writer.stored()
        last = stored[-1] if stored else -1
        while self._lines and self._lines[0][0] <= last:
            log.info(self._lines.popleft()[1])

    def _tell(self, slot: _Slot, progress: Progress) -> FrozenTrial:
        """The slot's trial as told (the study will hold exactly this), handed to the writer."""
        outcome = slot.future.result()
        told = copy.deepcopy(slot.running)
        attrs: dict[str, Any] = {}
        if outcome.result is not None and outcome.state == TrialState.COMPLETE:
            attrs[FOLD_SCORES_ATTR] = outcome.result.fold_scores
        if outcome.error is not None:
            attrs[ERROR_ATTR] = outcome.error
        clock = TuneClock(
            self._clock_base.wall_s + time.perf_counter() - self._started,
            self._clock_base.main_s + progress.main_thread_seconds,
            self._clock_base.main_cpu_s + progress.main_thread_cpu_seconds,
        )
        attrs[CLOCK_ATTR] = {k: round(v, 3) for k, v in vars(clock).items()}
        told.user_attrs = {**told.user_attrs, **attrs}
        rungs = {f"{RUNG_PREFIX}{i}": value for i, value in enumerate(outcome.rungs)}
        told.system_attrs = {**told.system_attrs, **rungs}
        told.state = outcome.state
        told.intermediate_values = {**told.intermediate_values, **outcome.reported}
        told.value = _told_value(outcome.state, outcome.value, told.intermediate_values)
        told.datetime_complete = datetime.datetime.now()
        self.writer.tell(told, outcome)
        return told

    def _keep_after_interrupt(self, in_flight: deque[_Slot], progress: Progress) -> None:
        """Tell what finished; leave the rest running, for the next run to evaluate again."""
        for slot in in_flight:
            future = slot.future
            done = slot.stored is None and future is not None and future.done()
            if done and not future.cancelled() and future.exception() is None:
                with contextlib.suppress(Exception):  # never mask the interrupt
                    self._tell(slot, progress)
        with contextlib.suppress(Exception):
            self.writer.flush(STOP_FLUSH_S)
            self._show_stored()


def _told_value(
    state: TrialState, value: float | None, intermediate: dict[int, float]
) -> float | None:
    """The value Optuna's `study.tell` stores: a pruned trial takes its last reported value."""
    if state == TrialState.PRUNED and intermediate:
        last = intermediate[max(intermediate)]
        return None if math.isnan(last) else last
    return value if state == TrialState.COMPLETE else None


def summarize(study_name: str, progress: Progress) -> dict[str, Any]:
    """The outcome of the study's first trials as the tune stage writes it (tune_summary.json)."""
    best, clock = progress.best_trial, progress.clock
    counts = dict(complete=progress.complete, pruned=progress.pruned, failed=progress.failed)
    return {
        "study_name": study_name,
        "metric": progress.metric,
        "trial_budget": progress.n_trials,
        "best_trial_number": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "n_trials": counts,
        "optimization_time_seconds": clock.wall_s,
        "main_thread_seconds": clock.main_s,
        "main_thread_cpu_seconds": clock.main_cpu_s,
    }
