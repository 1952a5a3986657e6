"""The local executor: trials as small fold tasks on a few threads, oldest trial first.
A task boosts one fold of a `TrialEvaluation` to its next checkpoint; a free thread takes the
oldest trial's, so a long trial is worked on by every core instead of leaving one idle while
the in-order window holds back the next ask (benchmarks/bench_executors.py compares whole-trial
tasks). Results do not depend on which thread ran what (hpo.search.evaluation)."""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass

from hpo.models import available_cores
from hpo.search.evaluation import FoldPool, TrainingData, TrialEvaluation, fold_pool
from hpo.search.trial import TrialOutcome, TrialTask


@dataclass
class _Job:
    evaluation: TrialEvaluation
    future: Future[TrialOutcome]
    folds_to_go: int = 0
    running: int = 0  # fold tasks being advanced right now
    released: bool = False  # its folds are back in the pool


class FoldScheduler:
    """A `concurrent.futures`-style executor of trial tasks over `n_threads` threads."""

    def __init__(
        self, n_threads: int, data: TrainingData, pool: FoldPool, nthread_per_fit: int
    ) -> None:
        # The pool's own data may be another study's with the same folds (another pruner).
        self._pool, self._data, self._nthread = pool, data, nthread_per_fit
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

    def submit(self, task: TrialTask) -> Future[TrialOutcome]:
        future: Future[TrialOutcome] = Future()
        folds = self._pool.take()
        try:
            evaluation = TrialEvaluation(task, self._data, folds, self._nthread)
        except Exception as exc:  # e.g. XGBoost rejects a booster param: the trial fails
            self._pool.give_back(folds)
            future.set_result(TrialOutcome.failed(task, exc))
            return future
        self._queue_stage(_Job(evaluation, future))
        return future

    def shutdown(self, cancel: bool = False) -> None:
        """Stop the threads; with cancel, unfinished trials end with InterruptedError."""
        if cancel:
            self._cancel.set()
        for _ in self._threads:
            self._tasks.put((2**62, 0, next(self._order), None))
        for thread in self._threads:
            thread.join()

    def _queue_stage(self, job: _Job) -> None:
        stage = job.evaluation.stage_folds()
        job.folds_to_go = len(stage)
        number = job.evaluation.task.number
        for fold_index in stage:
            self._tasks.put((number, fold_index, next(self._order), job))

    def _work(self) -> None:
        while True:
            _, fold_index, _, job = self._tasks.get()
            if job is None:
                return
            with self._lock:
                if job.future.done():
                    continue  # another fold of this trial already failed it
                job.running += 1
            try:
                self._advance(job, fold_index)
            finally:
                with self._lock:
                    job.running -= 1
                    release = job.future.done() and job.running == 0 and not job.released
                    job.released |= release
                if release:
                    self._pool.give_back(job.evaluation.folds)

    def _advance(self, job: _Job, fold_index: int) -> None:
        """Boost one fold to the checkpoint; the stage's last fold reports and queues the next."""
        if self._cancel.is_set():
            self._finish(job, InterruptedError("tuning was interrupted"))
            return
        try:
            job.evaluation.advance(fold_index)
            with self._lock:
                job.folds_to_go -= 1
                last_fold = job.folds_to_go == 0
            if last_fold:
                outcome = job.evaluation.at_stage_end()
                if outcome is None:
                    self._queue_stage(job)
                else:
                    self._finish(job, outcome)
        except Exception as exc:  # a failing trial is recorded, the study goes on
            self._finish(job, job.evaluation.failed(exc))
        except BaseException as exc:  # never leave a future unresolved: the loop waits
            self._finish(job, exc)
            raise

    def _finish(self, job: _Job, outcome: TrialOutcome | BaseException) -> None:
        """Resolve the trial's future once, whichever of its fold tasks gets here first."""
        with self._lock:
            if job.future.done():
                return
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)


class LocalExecutor:
    """`parallel_trials` threads in this process, each fit on cores // parallel_trials cores
    (at least 1): parallel fits must not oversubscribe the cores."""

    def __init__(self, data: TrainingData, parallel_trials: int) -> None:
        nthread = max(1, available_cores() // parallel_trials)
        self._scheduler = FoldScheduler(parallel_trials, data, fold_pool(data), nthread)
        self.tags = {"hpo.executor": "local-threads", "hpo.workers": str(parallel_trials)}

    def submit(self, task: TrialTask) -> Future[TrialOutcome]:
        return self._scheduler.submit(task)

    def shutdown(self, cancel: bool = False) -> None:
        self._scheduler.shutdown(cancel=cancel)
