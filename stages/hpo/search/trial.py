"""A trial as it travels: the task the driver sends out, and the outcome that comes back; both
small and picklable (a local thread, a Dask worker, an outcome saved until its turn to be told)."""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.errors import native_message

# Trial user attributes a told trial keeps: each fold's final score, a failed trial's error.
FOLD_SCORES_ATTR, ERROR_ATTR = "fold_scores", "error"


# The system attribute Optuna's successive halving writes for each rung a trial passes.
RUNG_PREFIX = "completed_rung_"


def rung_values(system_attrs: dict[str, Any]) -> list[float]:
    """The value a trial had at each rung it passed, rung 0 first."""
    values = []
    while (key := f"{RUNG_PREFIX}{len(values)}") in system_attrs:
        values.append(system_attrs[key])
    return values


@dataclass(frozen=True)
class PrunerEvidence:
    """The finished trials a trial's pruner compares against: values (NaN for a pruned trial),
    curves and rungs, each as one matrix (a row per trial, NaN where a trial has nothing), which
    pickles as one copy where a dict per trial cost milliseconds per task at thousands of trials.
    The pruners read NaN as nothing reported, as the rebuilt trials leave it out."""

    steps: tuple[int, ...]
    values: np.ndarray  # (trials,)
    curves: np.ndarray  # (trials, steps)
    rungs: np.ndarray  # (trials, rungs)

    def trials(self) -> list[FrozenTrial]:
        """The finished trials again, as the pruner reads them."""
        trials = []
        for value, row, rungs in zip(self.values, self.curves, self.rungs, strict=True):
            pairs = zip(self.steps, row, strict=True)
            curve = {step: float(x) for step, x in pairs if not math.isnan(x)}
            passed = {f"{RUNG_PREFIX}{i}": float(x) for i, x in enumerate(rungs) if x == x}
            state = TrialState.PRUNED if math.isnan(value) else TrialState.COMPLETE
            trials.append(optuna.trial.create_trial(
                state=state, value=None if math.isnan(value) else float(value),
                intermediate_values=curve, system_attrs=passed,
            ))  # fmt: skip
        return trials


@dataclass(frozen=True)
class TrialTask:
    """Everything a trial's evaluation needs besides the training data."""

    number: int
    params: dict[str, Any]  # the sampled values, as the study holds them
    evidence: PrunerEvidence  # the complete trials its pruner compares against


@dataclass(frozen=True)
class CVResult:
    curve: dict[int, float]  # boosting rounds -> mean validation score, at each checkpoint
    fold_scores: list[float]  # final score of each fold; empty when stopped early
    stopped_early: bool

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_scores))


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial's evaluation produced; the driver turns it into study and MLflow records."""

    number: int
    params: dict[str, Any]
    state: TrialState
    result: CVResult | None
    reported: dict[int, float]  # step (boosting rounds) -> mean validation score told to Optuna
    error: str | None
    started_at: float
    finished_at: float
    rungs: tuple[float, ...] = ()  # its value at each successive-halving rung it passed

    @property
    def value(self) -> float | None:
        if self.state == TrialState.COMPLETE and self.result is not None:
            return self.result.mean
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
        return cls(**{**data, "state": TrialState[data["state"]], "result": result,
                      "reported": {int(k): v for k, v in data["reported"]},
                      "rungs": tuple(data.get("rungs", ()))})  # fmt: skip

    @classmethod
    def from_frozen(cls, trial: FrozenTrial) -> TrialOutcome:
        """The outcome of a trial already told, rebuilt from what the study stored."""
        result = None
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            scores = trial.user_attrs.get(FOLD_SCORES_ATTR, [])
            pruned = trial.state == TrialState.PRUNED
            result = CVResult(dict(trial.intermediate_values), scores, pruned)
        rungs = tuple(rung_values(trial.system_attrs))
        return cls(trial.number, trial.params, trial.state, result, dict(trial.intermediate_values),
                   trial.user_attrs.get(ERROR_ATTR), _timestamp(trial.datetime_start),
                   _timestamp(trial.datetime_complete), rungs)  # fmt: skip

    @classmethod
    def failed(
        cls, task: TrialTask, exc: BaseException, reported: dict[int, float] | None = None,
        started: float | None = None,
    ) -> TrialOutcome:  # fmt: skip
        message = native_message(str(exc))
        started_at = time.time() if started is None else started
        return cls(task.number, task.params, TrialState.FAIL, None, dict(reported or {}),
                   f"{type(exc).__name__}: {message}", started_at, time.time())  # fmt: skip


def _timestamp(moment: datetime.datetime | None) -> float:
    return moment.timestamp() if moment is not None else time.time()
