"""How one trial is evaluated, whatever runs it: k-fold CV advanced checkpoint by checkpoint.

A trial is a pure function of its `TrialTask` and the training data: it reads nothing from the
study and writes nothing anywhere, and its result does not depend on the thread count of its
fits (XGBoost's `hist` fits with `seed_per_iteration` are identical for any `nthread`). So the
same trial gives the same `TrialOutcome` on a local thread or on a Dask worker, and a task that
an executor runs twice (a worker died and the scheduler retried it) is harmless.

The pruner of a trial judges it against the snapshot in its task (the trials complete when it
was asked), not against the live study, which is what keeps pruning decisions independent of
timing.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from hpo.config import ModelParams, PrunerParams, TuneParams
from hpo.trial.model import N_ROUNDS, CVResult, CVTrial, Fold, booster_params, make_folds
from hpo.trial.space import make_pruner


@dataclass(frozen=True)
class PrunerEvidence:
    """The complete trials a trial's pruner compares against: their values, and their
    intermediate values as one matrix, a row per trial and a column per step, NaN where a
    trial reported nothing. One array pickles as one copy, where a dict per trial cost the
    driver milliseconds per task at thousands of trials. The rebuilt trials leave out NaN
    values: that changes nothing for Optuna's percentile pruners with `n_min_trials=1`
    (make_pruner's), which leave NaN out of the percentile."""

    steps: tuple[int, ...]
    values: np.ndarray  # (trials,)
    curves: np.ndarray  # (trials, steps)

    @classmethod
    def of(cls, trials: Sequence[tuple[float, dict[int, float]]]) -> PrunerEvidence:
        """From (objective value, {step: intermediate value}) pairs."""
        steps = tuple(dict.fromkeys(step for _value, curve in trials for step in curve))
        curves = np.full((len(trials), len(steps)), np.nan)
        for row, (_value, curve) in enumerate(trials):
            curves[row, [steps.index(step) for step in curve]] = list(curve.values())
        return cls(steps, np.array([value for value, _curve in trials], dtype=float), curves)

    def trials(self) -> list[FrozenTrial]:
        """The complete trials again, as the pruner reads them."""
        return [
            optuna.trial.create_trial(
                value=float(value),
                intermediate_values={
                    step: float(x)
                    for step, x in zip(self.steps, row, strict=True)
                    if not math.isnan(x)
                },
            )
            for value, row in zip(self.values, self.curves, strict=True)
        ]


@dataclass(frozen=True)
class TrialTask:
    """Everything a trial's evaluation needs besides the training data; small and picklable."""

    number: int
    params: dict[str, Any]  # the sampled values, as the study holds them
    booster_params: dict[str, Any]  # XGBoost's params for these values, without nthread
    n_rounds: int
    report_interval: int
    pruner: PrunerParams
    snapshot: PrunerEvidence

    @classmethod
    def build(
        cls,
        tune: TuneParams,
        model: ModelParams,
        number: int,
        params: dict[str, Any],
        completed: PrunerEvidence,
    ) -> TrialTask:
        """The task of trial `number`, pruned against the `completed` trials."""
        return cls(
            number=number,
            params=dict(params),
            booster_params=booster_params(model, params),
            n_rounds=params[N_ROUNDS],
            report_interval=tune.pruner.interval_steps,
            pruner=tune.pruner,
            snapshot=completed,
        )


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial's evaluation produced; the driver turns it into study and MLflow records."""

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
    def failed(
        cls,
        task: TrialTask,
        exc: BaseException,
        reported: dict[int, float] | None = None,
        started: float | None = None,
    ) -> TrialOutcome:
        # XGBoost appends a native stack trace; the first part says what went wrong.
        message = " ".join(str(exc).split(" Stack trace:")[0].split())
        error = f"{type(exc).__name__}: {message}"
        return cls(
            task.number,
            task.params,
            TrialState.FAIL,
            None,
            dict(reported or {}),
            error,
            time.time() if started is None else started,
            time.time(),
        )


@dataclass
class TrialEvaluation:
    """One trial's folds moved from checkpoint to checkpoint, with its pruner at each one.

    Drivers call `advance(i)` for every fold (each fold by one thread at a time, different folds
    possibly at once), then `at_checkpoint()`, which returns the outcome once the trial is over
    and otherwise moves every fold's target to the next checkpoint.
    """

    task: TrialTask
    folds: list[Fold]
    nthread: int
    started_at: float = field(default_factory=time.time)
    reported: dict[int, float] = field(default_factory=dict)
    _cv: CVTrial = field(init=False)
    _probe: optuna.Trial | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        params = {**self.task.booster_params, "nthread": self.nthread}
        self._cv = CVTrial(params, self.task.n_rounds, self.folds, self.task.report_interval)

    def advance(self, fold_index: int) -> None:
        self._cv.advance(fold_index)

    def at_checkpoint(self) -> TrialOutcome | None:
        """All folds are at the checkpoint: report, then stop, finish or go on."""
        step = self._cv.checkpoint
        value = self._cv.checkpoint_mse()
        pruned = False
        if step % self.task.report_interval == 0:
            self.reported[step] = value
            # A trial that trained every round is finished: pruning it would discard its result.
            if not self._cv.is_last_checkpoint:
                probe = self._probe or self._open_probe()
                probe.report(value, step)
                pruned = probe.should_prune()
        if not (pruned or self._cv.is_last_checkpoint):
            self._cv.next_checkpoint()
            return None
        return TrialOutcome(
            self.task.number,
            self.task.params,
            TrialState.PRUNED if pruned else TrialState.COMPLETE,
            self._cv.result(stopped_early=pruned),
            self.reported,
            None,
            self.started_at,
            time.time(),
        )

    def failed(self, exc: BaseException) -> TrialOutcome:
        return TrialOutcome.failed(self.task, exc, self.reported, self.started_at)

    def _open_probe(self) -> optuna.Trial:
        """The trial's own in-memory study, holding only its snapshot, judged by the pruner."""
        study = optuna.create_study(direction="minimize", pruner=make_pruner(self.task.pruner))
        study.add_trials(self.task.snapshot.trials())
        self._probe = study.ask()
        return self._probe


@dataclass(frozen=True)
class TrainingData:
    """The training split and the fold settings: sent once to each process that runs trials."""

    x: pd.DataFrame
    y: pd.Series
    n_folds: int
    seed: int
    max_bin: int
    key: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha256(pd.util.hash_pandas_object(self.x).to_numpy().tobytes())
        digest.update(pd.util.hash_pandas_object(self.y).to_numpy().tobytes())
        digest.update(f"{self.n_folds},{self.seed},{self.max_bin}".encode())
        object.__setattr__(self, "key", digest.hexdigest())


class FoldPool:
    """Fold matrices for the trials running at once: each running trial holds a set of its own.

    XGBoost does not promise that two boosters may train on one DMatrix at the same time (its
    maintainers: "XGBoost is not thread safe"; a DMatrix builds some of its formats lazily,
    on first use), so no two trials share a set, and within a trial each fold is advanced by
    one thread at a time. A set is built when no free one is left and is reused afterwards:
    as many sets as trials ever ran at once, each a few hundred kB for this data.
    """

    def __init__(self, data: TrainingData) -> None:
        self.data = data
        self._free: list[list[Fold]] = []
        self._lock = threading.Lock()
        self.built = 0

    def take(self) -> list[Fold]:
        with self._lock:
            if self._free:
                return self._free.pop()
            self.built += 1
        data = self.data
        return make_folds(data.x, data.y, data.n_folds, data.seed, data.max_bin)

    def give_back(self, folds: list[Fold]) -> None:
        with self._lock:
            self._free.append(folds)


_POOLS: dict[str, FoldPool] = {}
_POOLS_LOCK = threading.Lock()


def fold_pool(data: TrainingData) -> FoldPool:
    """This process's fold pool for `data` (one training split at a time)."""
    with _POOLS_LOCK:
        if data.key not in _POOLS:
            _POOLS.clear()
            _POOLS[data.key] = FoldPool(data)
        return _POOLS[data.key]


def evaluate_trial(task: TrialTask, data: TrainingData, nthread: int) -> TrialOutcome:
    """The whole trial in the calling thread: every fold to each checkpoint, then the pruner.

    A failing configuration is an outcome (FAIL with its error), not an exception: the study
    records it and goes on.
    """
    started = time.time()
    pool = fold_pool(data)
    folds = pool.take()
    try:
        try:
            evaluation = TrialEvaluation(task, folds, nthread, started)
        except Exception as exc:  # e.g. XGBoost rejects a booster param
            return TrialOutcome.failed(task, exc, started=started)
        try:
            while True:
                for fold_index in range(len(folds)):
                    evaluation.advance(fold_index)
                outcome = evaluation.at_checkpoint()
                if outcome is not None:
                    return outcome
        except Exception as exc:
            return evaluation.failed(exc)
    finally:
        pool.give_back(folds)


def _timestamp(moment: datetime.datetime | None) -> float:
    return moment.timestamp() if moment is not None else time.time()
