"""Parallel Optuna trials whose sequence does not depend on timing, and that survive crashes.

Optuna's own `n_jobs` lets each thread ask the sampler whenever it is free, so what the
sampler and the pruner see depends on which trial happened to finish first. Here the main
thread is the only one that touches the study, and it follows a fixed protocol:

* trials are asked in number order, each with a sampler seeded by (seed + trial number);
* at most `window = parallel_trials + lookahead` trials are asked and not yet told; trial k is
  asked only after trial k - window has been told, and trials are told in number order;
* a trial prunes against a snapshot of the trials that were complete when it was asked, not
  against whatever completes meanwhile.

So the sampler's and pruner's inputs for trial k are a function of trials 0..k-window alone,
and two runs with the same params produce the same trials, whatever executes them: local
threads or a Dask cluster of any size (executors.py) only change how fast trials come back.

Crash safety: a trial that finishes before its turn to be told is saved at once in the study
(user attribute `pending_outcome`), so a killed run loses no finished work. The next run tells
such trials from what was saved and closes trials whose process is gone as FAIL
("interrupted"); those do not use up the budget. Each asked trial carries its owner
(host, pid), so a second tune process on the same study is not mistaken for a dead one, and
the budget check and ask happen under a file lock, so the trial count stays exact.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import PipelineError
from hpo.evaluation import TrialOutcome, TrialTask
from hpo.executors import TrialExecutor

SamplerFactory = Callable[[int], optuna.samplers.BaseSampler]
# (trial number, sampled params, completed trials for its pruner) -> the task to evaluate
TaskFactory = Callable[[int, dict[str, Any], list[FrozenTrial]], TrialTask]

# Trial user attributes: who runs the trial, and its outcome while it waits for its turn.
OWNER_ATTR = "owner"
PENDING_ATTR = "pending_outcome"
# Study user attributes, summed over the sessions that ran trials (a resumed study adds up):
# wall time, and the main thread's time in the sampler, the study storage and MLflow: its wall
# time (which includes waiting for a core that XGBoost holds) and its CPU time (what it takes
# away from the fits).
OPTIMIZATION_TIME_ATTR = "optimization_time_seconds"
MAIN_THREAD_TIME_ATTR = "main_thread_seconds"
MAIN_THREAD_CPU_ATTR = "main_thread_cpu_seconds"
# Seconds between checks while waiting for workers, for another process's trials or for a
# stop request.
POLL_S = 0.5


class TuningInterruptedError(Exception):
    """A stop was requested (Ctrl-C, SIGTERM); raised only between storage operations."""


class TrialRecorder(Protocol):
    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None: ...

    def recorded_numbers(self) -> set[int]:
        """Trial numbers that already have a record (after a crash, some may not)."""
        ...


@dataclass
class Progress:
    """Counts by final state, and the best value so far."""

    n_trials: int
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    best_value: float | None = None
    best_number: int | None = None
    told_this_session: int = 0
    failed_this_session: int = 0
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

    def add(self, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE:
            self.complete += 1
            if self.best_value is None or trial.value < self.best_value:
                self.best_value, self.best_number = trial.value, trial.number
        elif trial.state == TrialState.PRUNED:
            self.pruned += 1
        elif trial.state == TrialState.FAIL:
            self.failed += 1

    def line(self, trial: FrozenTrial) -> str:
        value = "" if trial.value is None else f" mse={trial.value:.5f}"
        best = "-"
        if self.best_value is not None:
            best = f"{self.best_value:.5f} (trial {self.best_number})"
        return (
            f"trial {trial.number:>3} {trial.state.name:<8}{value:<16} | done {self.finished}/"
            f"{self.n_trials}, pruned {self.pruned}, failed {self.failed} | best {best}"
        )


@dataclass
class _InFlight:
    trial: optuna.Trial
    future: Future[TrialOutcome]
    saved: bool = False  # its outcome is in PENDING_ATTR


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
    ask_lock: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    fault_hook: Callable[[int], None] = lambda _number: None
    log: Callable[[str], None] = print
    # Set from a signal handler. Checked at safe points only: a KeyboardInterrupt raised in the
    # middle of a SQLite transaction would leave the database locked for the cleanup.
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> Progress:
        """Run trials until n_trials are COMPLETE or PRUNED; resume what the study holds."""
        with self.ask_lock():
            self._recover_orphans()
            self._record_missing()
        progress = self._progress_from_storage()
        if progress.finished:
            self.log(f"resuming study {self.study.study_name}: {progress.finished} trials done")
        started = time.perf_counter()
        window = self.parallel_trials + self.lookahead
        in_flight: deque[_InFlight] = deque()
        try:
            while True:
                if self.stop.is_set():
                    raise TuningInterruptedError
                while len(in_flight) < window:
                    with progress.main_thread_work(), self.ask_lock():
                        asked = self._ask_within_budget(progress, len(in_flight))
                    if asked is None:
                        break
                    trial, completed = asked
                    in_flight.append(_InFlight(trial, self._submit(trial, completed)))
                if not in_flight:
                    if not self._others_running():
                        break
                    time.sleep(POLL_S)  # another process owns the remaining trials
                    with self.ask_lock():
                        self._recover_orphans()
                    continue
                if not self._wait_for_head(in_flight, progress):
                    continue
                # Told while still in flight: if telling fails, the interrupt path retries it.
                head = in_flight[0]
                # Under the lock: another process's recovery must not record it twice.
                with progress.main_thread_work(), self.ask_lock():
                    frozen = self._tell(head.trial, head.future.result())
                in_flight.popleft()
                progress.add(frozen)
                progress.told_this_session += 1
                progress.failed_this_session += frozen.state == TrialState.FAIL
                self.log(progress.line(frozen))
        except BaseException:
            self.executor.shutdown(cancel=True)
            self._close_after_interrupt(in_flight)
            raise
        self.executor.shutdown()
        if progress.told_this_session:
            with self.ask_lock():  # read-modify-write: another process may add its own time
                self._add_time(OPTIMIZATION_TIME_ATTR, time.perf_counter() - started)
                self._add_time(MAIN_THREAD_TIME_ATTR, progress.main_thread_seconds)
                self._add_time(MAIN_THREAD_CPU_ATTR, progress.main_thread_cpu_seconds)
        progress = self._progress_from_storage()
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

    def _progress_from_storage(self) -> Progress:
        progress = Progress(self.n_trials)
        for trial in self.study.get_trials(deepcopy=False):
            progress.add(trial)
        return progress

    def _ask_within_budget(
        self, progress: Progress, n_in_flight: int
    ) -> tuple[optuna.Trial, list[FrozenTrial]] | None:
        """Ask the next trial unless finished + running trials (of any process) fill the budget.

        Returns the trial and the completed trials its pruner may compare against.
        """
        # Failed trials do not use up the budget, but an always-failing objective must end.
        if progress.failed_this_session + n_in_flight >= self.n_trials:
            return None
        trials = self.study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        used = sum(
            states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        )
        if used >= self.n_trials:
            return None
        snapshot = [t for t in trials if t.state == TrialState.COMPLETE]
        self.study.sampler = self.make_sampler(len(trials))
        trial = self.study.ask(self.distributions)
        trial.set_user_attr(OWNER_ATTR, _this_process())
        return trial, snapshot

    def _submit(self, trial: optuna.Trial, completed: list[FrozenTrial]) -> Future[TrialOutcome]:
        task = self.make_task(trial.number, trial.params, completed)
        try:
            self.fault_hook(trial.number)
        except Exception as exc:  # the test hook's failing trial never reaches the executor
            failed: Future[TrialOutcome] = Future()
            failed.set_result(TrialOutcome.failed(task, exc))
            return failed
        return self.executor.submit(task)

    def _wait_for_head(self, in_flight: deque[_InFlight], progress: Progress) -> bool:
        """Wait a little for the oldest trial; save any trial that finished out of turn."""
        running = [item.future for item in in_flight if not item.future.done()]
        if running and not in_flight[0].future.done():
            wait(running, timeout=POLL_S, return_when=FIRST_COMPLETED)
        for item in list(in_flight)[1:]:
            if item.future.done() and not item.saved and item.future.exception() is None:
                with progress.main_thread_work():
                    item.trial.set_user_attr(PENDING_ATTR, item.future.result().to_json())
                item.saved = True
        return in_flight[0].future.done()

    def _tell(self, trial: optuna.Trial, outcome: TrialOutcome) -> FrozenTrial:
        for step, value in outcome.reported.items():
            trial.report(value, step)
        if outcome.result is not None and outcome.state == TrialState.COMPLETE:
            trial.set_user_attr("fold_mse", outcome.result.fold_mse)
            trial.set_user_attr("fold_r2", outcome.result.fold_r2)
        if outcome.error is not None:
            trial.set_user_attr("error", outcome.error)
        frozen = self.study.tell(trial, outcome.value, state=outcome.state)
        self.recorder.record(frozen, outcome)
        return frozen

    def _close_after_interrupt(self, in_flight: deque[_InFlight]) -> None:
        """Tell what finished, in order; close the rest as interrupted, in Optuna and MLflow.

        A trial already told (its record may have failed) is left alone: the next run's
        `_record_missing` writes a missing record. A finished trial that cannot be told now
        is saved in PENDING_ATTR, for the next run's `_recover_orphans`.
        """
        running = {item.trial.number for item in in_flight}
        with contextlib.suppress(Exception):
            running = self._running_numbers()
        for item in in_flight:
            if item.trial.number not in running:
                continue
            future = item.future
            finished = future.done() and not future.cancelled() and future.exception() is None
            outcome = future.result() if finished else TrialOutcome.interrupted(item.trial)
            try:
                with self.ask_lock():
                    self._tell(item.trial, outcome)
            except Exception:  # never mask the interrupt; keep a finished result for the next run
                if finished and not item.saved:
                    with contextlib.suppress(Exception):
                        item.trial.set_user_attr(PENDING_ATTR, outcome.to_json())

    def _recover_orphans(self) -> None:
        """Trials left RUNNING by a dead process: tell the saved outcome, or close as FAIL."""
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _is_alive(frozen.user_attrs.get(OWNER_ATTR)):
                continue
            trial = optuna.Trial(self.study, frozen._trial_id)
            saved = frozen.user_attrs.get(PENDING_ATTR)
            outcome = TrialOutcome.from_json(saved) if saved else TrialOutcome.interrupted(frozen)
            self._tell(trial, outcome)
            how = "recovered its saved result" if saved else "marked FAIL (interrupted)"
            self.log(f"trial {frozen.number} was left running by a stopped run: {how}")

    def _record_missing(self) -> None:
        """Record finished trials whose record was lost (killed between tell and record)."""
        recorded = self.recorder.recorded_numbers()
        for trial in self.study.get_trials(deepcopy=False):
            if trial.state.is_finished() and trial.number not in recorded:
                self.recorder.record(trial, TrialOutcome.from_frozen(trial))
                self.log(f"trial {trial.number} had no MLflow run: recorded it")

    def _others_running(self) -> bool:
        return bool(self._running_numbers())

    def _running_numbers(self) -> set[int]:
        return {
            t.number for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        }

    def _add_time(self, attr: str, seconds: float) -> None:
        previous = self.study.user_attrs.get(attr, 0.0)
        self.study.set_user_attr(attr, round(previous + seconds, 3))


def _this_process() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": _start_time(os.getpid())}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in (...) may hold spaces


def _is_alive(owner: dict[str, Any] | None) -> bool:
    """Whether the process that asked a trial still runs (on this host; SQLite is local).

    A container restarted with the same hostname often gets the same pid again: the start
    time (and our own pid, which cannot own a trial of an earlier run) tells them apart.
    """
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return owner.get("started") is None or owner.get("started") == _start_time(pid)


def summarize(study: optuna.Study, progress: Progress) -> dict[str, Any]:
    """The study's outcome as the tune stage writes it (tune_summary.json)."""
    best = study.best_trial
    return {
        "study_name": study.study_name,
        "best_trial_number": best.number,
        "best_cv_mse": best.value,
        "best_params": best.params,
        "n_trials": {
            "complete": progress.complete,
            "pruned": progress.pruned,
            "failed": progress.failed,
        },
        "optimization_time_seconds": study.user_attrs.get(OPTIMIZATION_TIME_ATTR, 0.0),
        "main_thread_seconds": study.user_attrs.get(MAIN_THREAD_TIME_ATTR, 0.0),
        "main_thread_cpu_seconds": study.user_attrs.get(MAIN_THREAD_CPU_ATTR, 0.0),
    }


def injected_faults(spec: str) -> Callable[[int], None]:
    """Test hook: a comma-separated list of trial numbers (or "all") whose objective raises.

    Set through the environment variable HPO_INJECT_FAULT_TRIALS by the tests, so that the
    failure path runs the real code without editing it.
    """
    numbers = {int(part) for part in spec.split(",") if part.strip() and part.strip() != "all"}
    fail_all = spec.strip() == "all"

    def hook(number: int) -> None:
        if fail_all or number in numbers:
            raise RuntimeError(f"injected fault in trial {number}")

    return hook
