"""How one trial is evaluated, whatever runs it: k-fold CV advanced stage by stage, the pruner
asked between stages. By default a stage is a checkpoint: all folds move to it (every
`pruner.interval_steps` rounds) before the pruner looks, so a poor trial stops after a few
rounds, not whole folds. The Wilcoxon pruner compares folds instead: a stage is one whole fold,
and the trial reports each fold's score at its index. A trial is a pure function of its
`TrialTask` and the `TrainingData`, whatever thread count or executor runs it: its pruner
judges it against the evidence in its task, not the live study (docs/design.md)."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from hpo.models import N_ROUNDS, Setup, load_family
from hpo.search.space import make_pruner
from hpo.search.trial import CVResult, TrialOutcome, TrialTask, rung_values
from hpo.tasks import direction, score

if TYPE_CHECKING:
    from hpo.config import PrunerParams


@dataclass(frozen=True)
class TrainingData:
    """The training split and how the study scores it: sent once to each process running trials."""

    x: pd.DataFrame
    y: np.ndarray
    family: str
    setup: Setup
    metric: str
    n_folds: int
    cv_seed: int
    pruner: PrunerParams
    key: str = field(init=False)  # what the folds are built from, for the fold pool

    def __post_init__(self) -> None:
        digest = hashlib.sha256(pd.util.hash_pandas_object(self.x).to_numpy().tobytes())
        digest.update(self.y.tobytes())
        digest.update(repr((self.family, self.setup, self.n_folds, self.cv_seed)).encode())
        object.__setattr__(self, "key", digest.hexdigest())


@dataclass(frozen=True)
class Fold:
    model_input: Any  # the family's own form of the fold (hpo.models.Family.fold)
    y_valid: np.ndarray


def make_folds(data: TrainingData) -> list[Fold]:
    """A seeded k-fold split (stratified for classification), in the family's form."""
    from sklearn.model_selection import KFold, StratifiedKFold

    kind = KFold if data.setup.task == "regression" else StratifiedKFold
    family = load_family(data.family)
    splitter = kind(data.n_folds, shuffle=True, random_state=data.cv_seed)
    folds = []
    for train, valid in splitter.split(data.x, data.y):
        model_input = family.fold(data.setup, data.x.iloc[train], data.y[train], data.x.iloc[valid])
        folds.append(Fold(model_input, data.y[valid]))
    return folds


@dataclass
class TrialEvaluation:
    """One trial's folds moved stage by stage: `advance(i)` each fold of `stage_folds()` (by one
    thread at a time), then `at_stage_end()` runs the pruner and gives the outcome once the
    trial is over."""

    task: TrialTask
    data: TrainingData
    folds: list[Fold]
    nthread: int
    started_at: float = field(default_factory=time.time)
    reported: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        family, setup = load_family(self.data.family), self.data.setup
        self._boosters = [
            family.fold_booster(setup, self.task.params, fold.model_input, self.nthread)
            for fold in self.folds
        ]
        self._rounds = self.task.params[N_ROUNDS]
        self._every = self.data.pruner.interval_steps
        self._by_fold = self.data.pruner.name == "wilcoxon"
        self.checkpoint = self._rounds if self._by_fold else min(self._every, self._rounds)
        self._fold = 0  # the fold a by-fold trial is on
        self._scores = [float("nan")] * len(self.folds)
        self._curve: dict[int, float] = {}
        self._probe: optuna.Trial | None = None

    def stage_folds(self) -> list[int]:
        """The folds to advance before the next `at_stage_end`."""
        return [self._fold] if self._by_fold else list(range(len(self.folds)))

    def advance(self, fold_index: int) -> None:
        """Boost one fold up to the current checkpoint and score its validation rows."""
        booster, fold = self._boosters[fold_index], self.folds[fold_index]
        booster.boost_to(self.checkpoint)
        self._scores[fold_index] = score(self.data.metric, fold.y_valid, booster.predict_valid())

    def at_stage_end(self) -> TrialOutcome | None:
        """The stage's folds are done: report, then stop, finish or go on."""
        if self._by_fold:
            step, last = self._fold, self._fold == len(self.folds) - 1
            value = self._curve[step] = self._scores[step]
        else:
            step, last = self.checkpoint, self.checkpoint == self._rounds
            value = self._curve[step] = float(np.mean(self._scores))
        pruned = False
        if self._by_fold or step % self._every == 0:
            self.reported[step] = value
            # A trial that trained every round is finished: pruning it would discard its result.
            if not last:
                probe = self._probe or self._open_probe()
                probe.report(value, step)
                pruned = bool(probe.should_prune())
        if not (pruned or last):
            if self._by_fold:
                self._fold += 1
            else:
                self.checkpoint = min(step + self._every, self._rounds)
            return None
        result = CVResult(dict(self._curve), [] if pruned else list(self._scores), pruned)
        state = TrialState.PRUNED if pruned else TrialState.COMPLETE
        return TrialOutcome(self.task.number, self.task.params, state, result, self.reported,
                            None, self.started_at, time.time(), self._rungs())  # fmt: skip

    def failed(self, exc: BaseException) -> TrialOutcome:
        return TrialOutcome.failed(self.task, exc, self.reported, self.started_at)

    def _open_probe(self) -> optuna.Trial:
        """The trial's own in-memory study, holding only its evidence, judged by the pruner."""
        pruner = make_pruner(self.data.pruner)
        study = optuna.create_study(direction=direction(self.data.metric), pruner=pruner)
        study.add_trials(self.task.evidence.trials())
        self._probe = study.ask()
        return self._probe

    def _rungs(self) -> tuple[float, ...]:
        """The successive-halving rungs the probe recorded for this trial."""
        if self._probe is None:
            return ()
        storage, trial_id = self._probe.study._storage, self._probe._trial_id
        return tuple(rung_values(storage.get_trial_system_attrs(trial_id)))


class FoldPool:
    """Fold data for the trials running at once: no two share a set, as a library need not let
    two models train on one matrix ("XGBoost is not thread safe"; a DMatrix builds formats
    lazily). A set is built when none is free: as many sets as trials ever ran at once."""

    def __init__(self, data: TrainingData) -> None:
        self.data = data
        self._free: list[list[Fold]] = []
        self._lock = threading.Lock()

    def take(self) -> list[Fold]:
        with self._lock:
            if self._free:
                return self._free.pop()
        return make_folds(self.data)

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
    """The whole trial in this thread; a failing configuration is a FAIL outcome, not a raise."""
    started = time.time()
    pool = fold_pool(data)
    folds = pool.take()
    evaluation = None
    try:
        evaluation = TrialEvaluation(task, data, folds, nthread, started)
        while True:
            for fold_index in evaluation.stage_folds():
                evaluation.advance(fold_index)
            if (outcome := evaluation.at_stage_end()) is not None:
                return outcome
    except Exception as exc:  # e.g. the library rejects a param
        reported = evaluation.reported if evaluation is not None else None
        return TrialOutcome.failed(task, exc, reported, started)
    finally:
        pool.give_back(folds)
