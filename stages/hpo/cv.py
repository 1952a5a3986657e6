"""K-fold cross-validation of one XGBoost configuration, advanced checkpoint by checkpoint.

All folds of a trial move to the same checkpoint (every `checkpoint_every` boosting rounds)
before the mean validation MSE is known there, so a pruner can stop a poor trial after a few
rounds rather than after whole folds, and each fold's step to the next checkpoint is a small
task that any free core may run. The objective is unchanged: the mean over folds of the
validation MSE of a model with exactly n_estimators trees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import KFold

from hpo.metrics import mse, r2


@dataclass(frozen=True)
class Fold:
    train: xgb.DMatrix
    valid: xgb.DMatrix
    y_valid: np.ndarray


@dataclass(frozen=True)
class CVResult:
    curve: dict[int, float]  # boosting rounds -> mean validation MSE, at each checkpoint
    fold_mse: list[float]  # final per-fold MSE; empty when stopped early
    fold_r2: list[float]
    stopped_early: bool

    @property
    def mean_mse(self) -> float:
        return float(np.mean(self.fold_mse))


def make_folds(x: pd.DataFrame, y: pd.Series, n_folds: int, seed: int, max_bin: int) -> list[Fold]:
    """Quantised training matrices built once, to be reused by every trial."""
    folds = []
    splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for train_idx, valid_idx in splitter.split(x):
        train = xgb.QuantileDMatrix(x.iloc[train_idx], y.iloc[train_idx], max_bin=max_bin)
        valid = xgb.DMatrix(x.iloc[valid_idx], y.iloc[valid_idx])
        folds.append(Fold(train, valid, y.iloc[valid_idx].to_numpy()))
    return folds


class CVTrial:
    """One configuration's boosters, one per fold, moved from checkpoint to checkpoint.

    `advance(i)` for different folds may run in different threads at once; the caller makes
    sure each fold is advanced by one thread at a time and calls `checkpoint_mse` and
    `next_checkpoint` only after every fold reached the current checkpoint.
    """

    def __init__(
        self, params: dict[str, Any], n_rounds: int, folds: list[Fold], checkpoint_every: int
    ) -> None:
        self.n_rounds = n_rounds
        self.folds = folds
        self.checkpoint_every = checkpoint_every
        self.checkpoint = min(checkpoint_every, n_rounds)
        self._boosters = [xgb.Booster(params, cache=[f.train, f.valid]) for f in folds]
        self._rounds = [0] * len(folds)
        self._fold_mse = [float("nan")] * len(folds)
        self.curve: dict[int, float] = {}

    @property
    def is_last_checkpoint(self) -> bool:
        return self.checkpoint == self.n_rounds

    def advance(self, fold_index: int) -> None:
        """Boost one fold up to the current checkpoint and measure its validation MSE."""
        booster, fold = self._boosters[fold_index], self.folds[fold_index]
        for round_index in range(self._rounds[fold_index], self.checkpoint):
            booster.update(fold.train, round_index)
        self._rounds[fold_index] = self.checkpoint
        evaluation = booster.eval_set([(fold.valid, "valid")], self.checkpoint)
        # '[i]\tvalid-rmse:0.123...': XGBoost prints 17 significant digits
        self._fold_mse[fold_index] = float(evaluation.rsplit(":", 1)[1]) ** 2

    def checkpoint_mse(self) -> float:
        """Mean validation MSE over folds at the current checkpoint (all folds there)."""
        value = float(np.mean(self._fold_mse))
        self.curve[self.checkpoint] = value
        return value

    def next_checkpoint(self) -> None:
        self.checkpoint = min(self.checkpoint + self.checkpoint_every, self.n_rounds)

    def result(self, stopped_early: bool) -> CVResult:
        if stopped_early:
            return CVResult(dict(self.curve), [], [], stopped_early=True)
        pairs = list(zip(self._boosters, self.folds, strict=True))
        predictions = [booster.predict(fold.valid) for booster, fold in pairs]
        return CVResult(
            dict(self.curve),
            fold_mse=[mse(f.y_valid, p) for f, p in zip(self.folds, predictions, strict=True)],
            fold_r2=[r2(f.y_valid, p) for f, p in zip(self.folds, predictions, strict=True)],
            stopped_early=False,
        )
