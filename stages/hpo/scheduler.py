"""Runs the trials handed to it as small fold tasks on a few threads, oldest trial first.

A trial is split into tasks "boost fold i up to the next checkpoint". Whichever thread is free
takes the pending task of the oldest trial, so a long trial is worked on by every core instead
of holding one core while the other waits for the next trial to be asked. When the last fold
of a trial reaches a checkpoint, that thread reports the mean validation MSE to the trial's
pruner and either stops the trial or queues its next tasks.

Results do not depend on which thread ran what: each booster is advanced by one thread at a
time with a fixed thread count, samples rows and columns from (seed, round) rather than from
the thread's generator, and each trial prunes against its own fixed snapshot.
"""

from __future__ import annotations

import datetime
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial, TrialState

from hpo.cv import CVResult, CVTrial, Fold
from hpo.xgb_params import N_ROUNDS

# The error of a trial that was running when its process died or was interrupted.
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial's evaluation produced; the main thread turns it into records."""

    number: int
    params: dict[str, Any]
    state: TrialState
    result: CVResult | None
    reported: dict[int, float]  # step (boosting rounds) -> mean validation MSE told to Optuna
    error: str | None
    started_at: float
    finished_at: float

    @property
    def value(self) -> float | None:
        if self.state == TrialState.COMPLETE and self.result is not None:
            return self.result.mean_mse
        return None

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form, to save a finished trial in the study until it is told."""
        data = asdict(self)
        data["state"] = self.state.name
        data["reported"] = list(self.reported.items())
        if self.result is not None:
            data["result"]["curve"] = list(self.result.curve.items())
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialOutcome:
        result = data["result"]
        if result is not None:
            result = CVResult(**{**result, "curve": {int(k): v for k, v in result["curve"]}})
        return cls(
            **{
                **data,
                "state": TrialState[data["state"]],
                "result": result,
                "reported": {int(step): value for step, value in data["reported"]},
            }
        )

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TrialOutcome:
        """Rebuild the outcome of a trial already told, from what the study stored."""
        result = None
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            result = CVResult(
                curve=dict(trial.intermediate_values),
                fold_mse=trial.user_attrs.get("fold_mse", []),
                fold_r2=trial.user_attrs.get("fold_r2", []),
                stopped_early=trial.state == TrialState.PRUNED,
            )
        return cls(
            trial.number,
            trial.params,
            trial.state,
            result,
            dict(trial.intermediate_values),
            trial.user_attrs.get("error"),
            _timestamp(trial.datetime_start),
            _timestamp(trial.datetime_complete),
        )

    @classmethod
    def interrupted(cls, trial: FrozenTrial | optuna.Trial) -> TrialOutcome:
        started = _timestamp(getattr(trial, "datetime_start", None))
        return cls(
            trial.number, trial.params, TrialState.FAIL, None, {}, INTERRUPTED, started, time.time()
        )


@dataclass
class _Job:
    number: int
    params: dict[str, Any]
    cv: CVTrial
    snapshot: Sequence[FrozenTrial]
    future: Future[TrialOutcome]
    started_at: float
    folds_to_go: int = 0
    reported: dict[int, float] = field(default_factory=dict)
    probe: optuna.Trial | None = None


class FoldScheduler:
    def __init__(
        self,
        n_threads: int,
        folds: list[Fold],
        make_pruner: Callable[[], BasePruner],
        booster_params: Callable[[dict[str, Any]], dict[str, Any]],
        report_interval: int,
        fault_hook: Callable[[int], None],
    ) -> None:
        self._folds = folds
        self._make_pruner = make_pruner
        self._booster_params = booster_params
        self._report_interval = report_interval
        self._fault_hook = fault_hook
        # (trial number, fold, tie-breaker, job): the oldest trial's tasks come first
        self._tasks: queue.PriorityQueue[tuple[int, int, int, _Job | None]] = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"fold-worker-{i}", daemon=True)
            for i in range(n_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, number: int, params: dict[str, Any], snapshot: Sequence[FrozenTrial]
    ) -> Future[TrialOutcome]:
        """Queue a trial; it prunes against `snapshot` (the trials complete when it was asked)."""
        future: Future[TrialOutcome] = Future()
        started = time.time()
        try:
            self._fault_hook(number)
            cv = CVTrial(
                self._booster_params(params), params[N_ROUNDS], self._folds, self._report_interval
            )
        except Exception as exc:  # a failing trial is recorded, the study goes on
            future.set_result(_failed(number, params, exc, {}, started))
            return future
        job = _Job(number, dict(params), cv, snapshot, future, started)
        self._queue_checkpoint(job)
        return future

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the threads; with cancel, unfinished trials end with InterruptedError."""
        if cancel:
            self._cancel.set()
        for _ in self._threads:
            self._tasks.put((2**62, 0, next(self._order), None))
        for thread in self._threads:
            thread.join()

    def _queue_checkpoint(self, job: _Job) -> None:
        job.folds_to_go = len(self._folds)
        for fold_index in range(len(self._folds)):
            self._tasks.put((job.number, fold_index, next(self._order), job))

    def _work(self) -> None:
        while True:
            _, fold_index, _, job = self._tasks.get()
            if job is None:
                return
            if job.future.done():
                continue  # another fold of this trial already failed it
            if self._cancel.is_set():
                self._finish(job, InterruptedError("tuning was interrupted"))
                continue
            try:
                job.cv.advance(fold_index)
                with self._lock:
                    job.folds_to_go -= 1
                    last_fold = job.folds_to_go == 0
                if last_fold:
                    self._at_checkpoint(job)
            except Exception as exc:  # a failing trial is recorded, the study goes on
                failed = _failed(job.number, job.params, exc, job.reported, job.started_at)
                self._finish(job, failed)
            except BaseException as exc:  # never leave a future unresolved: the loop waits
                self._finish(job, exc)
                raise

    def _at_checkpoint(self, job: _Job) -> None:
        """All folds are at the checkpoint: report, then stop, finish or go on."""
        step = job.cv.checkpoint
        value = job.cv.checkpoint_mse()
        pruned = False
        if step % self._report_interval == 0:
            job.reported[step] = value
            probe = job.probe or self._open_probe(job)
            probe.report(value, step)
            pruned = probe.should_prune()
        if pruned or job.cv.is_last_checkpoint:
            state = TrialState.PRUNED if pruned else TrialState.COMPLETE
            outcome = TrialOutcome(
                job.number,
                job.params,
                state,
                job.cv.result(stopped_early=pruned),
                job.reported,
                None,
                job.started_at,
                time.time(),
            )
            self._finish(job, outcome)
        else:
            job.cv.next_checkpoint()
            self._queue_checkpoint(job)

    def _open_probe(self, job: _Job) -> optuna.Trial:
        """The trial's own in-memory study, holding only its snapshot, judged by the pruner."""
        study = optuna.create_study(direction="minimize", pruner=self._make_pruner())
        study.add_trials(
            [
                optuna.trial.create_trial(value=t.value, intermediate_values=t.intermediate_values)
                for t in job.snapshot
            ]
        )
        job.probe = study.ask()
        return job.probe

    def _finish(self, job: _Job, outcome: TrialOutcome | BaseException) -> None:
        """Resolve the trial's future once, whichever of its fold tasks gets here first."""
        with self._lock:
            if job.future.done():
                return
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)


def _timestamp(moment: datetime.datetime | None) -> float:
    return moment.timestamp() if moment is not None else time.time()


def _failed(
    number: int, params: dict[str, Any], exc: Exception, reported: dict[int, float], started: float
) -> TrialOutcome:
    # XGBoost appends a native stack trace; the first part says what went wrong.
    message = " ".join(str(exc).split(" Stack trace:")[0].split())
    error = f"{type(exc).__name__}: {message}"
    return TrialOutcome(
        number, params, TrialState.FAIL, None, dict(reported), error, started, time.time()
    )
