"""K-fold cross-validation of one XGBoost configuration, all folds advancing round by round.

Training the folds side by side (instead of one fold after another) gives a mean validation
MSE after every boosting round, so a pruner can stop a poor trial after a few rounds rather
than after whole folds. The objective is unchanged: the mean over folds of the validation MSE
of a model with exactly n_estimators trees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import KFold

from hpo.metrics import mse, r2

# Called after each round with (rounds done, mean validation MSE so far); True stops the fit.
StopCheck = Callable[[int, float], bool]


@dataclass(frozen=True)
class Fold:
    train: xgb.DMatrix
    valid: xgb.DMatrix
    y_valid: np.ndarray


@dataclass(frozen=True)
class CVResult:
    curve: list[float]  # mean validation MSE after rounds 1..len(curve)
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


def cross_validate(
    params: dict[str, Any], n_rounds: int, folds: list[Fold], should_stop: StopCheck
) -> CVResult:
    """Boost every fold one round at a time; ask should_stop after each round."""
    boosters = [xgb.Booster(params, cache=[fold.train, fold.valid]) for fold in folds]
    curve: list[float] = []
    for round_index in range(n_rounds):
        round_mse = []
        for booster, fold in zip(boosters, folds, strict=True):
            booster.update(fold.train, round_index)
            round_mse.append(_rmse(booster.eval_set([(fold.valid, "valid")], round_index)) ** 2)
        curve.append(float(np.mean(round_mse)))
        if should_stop(round_index + 1, curve[-1]):
            return CVResult(curve, [], [], stopped_early=True)
    predictions = [
        booster.predict(fold.valid) for booster, fold in zip(boosters, folds, strict=True)
    ]
    return CVResult(
        curve,
        fold_mse=[mse(f.y_valid, p) for f, p in zip(folds, predictions, strict=True)],
        fold_r2=[r2(f.y_valid, p) for f, p in zip(folds, predictions, strict=True)],
        stopped_early=False,
    )


def _rmse(evaluation: str) -> float:
    """The value of 'valid-rmse' in XGBoost's '[i]\\tvalid-rmse:0.123' (printed to 17 digits)."""
    return float(evaluation.rsplit(":", 1)[1])
