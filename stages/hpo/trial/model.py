"""The model: XGBoost, and everything that knows it. Swap the model here.

What the rest of the pipeline needs from a model: which search-space names it accepts
(`check_search_space`), k-fold CV whose folds advance checkpoint by checkpoint (`make_folds`,
`CVTrial`), the final refit on the whole training split (`train_final`) and a default-params
baseline (`train_baseline`).

All folds of a trial move to the same checkpoint (every `checkpoint_every` boosting rounds)
before the mean validation MSE is known there, so a pruner can stop a poor trial after a few
rounds rather than after whole folds, and each fold's step to the next checkpoint is a small
task that any free core may run. The objective is unchanged: the mean over folds of the
validation MSE of a model with exactly n_estimators trees.
"""

from __future__ import annotations

import difflib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.metrics import mean_squared_error, r2_score
from sklearn.model_selection import KFold

from hpo.config import CategoricalDimension, Dimension, ModelParams

# n_estimators is the number of boosting rounds, not a booster parameter.
N_ROUNDS = "n_estimators"
# Set by the pipeline (the `model:` section, the thread count, the objective): not tunable.
FIXED_PARAMS = frozenset(
    {"objective", "eval_metric", "tree_method", "max_bin", "seed", "random_state",
     "seed_per_iteration", "nthread", "n_jobs", "verbosity", "device"}
)  # fmt: skip


def available_cores() -> int:
    """Cores this process may run on (honours taskset and container CPU sets)."""
    return len(os.sched_getaffinity(0))


def threads_per_fit(parallel_fits: int) -> int:
    """cores // parallel fits, at least 1: parallel fits must not oversubscribe the cores."""
    return max(1, available_cores() // parallel_fits)


def booster_params(
    model: ModelParams, tuned: dict[str, Any], nthread: int | None = None
) -> dict[str, Any]:
    """XGBoost's native params for one fit: the fixed model settings plus the tuned values.

    Without `nthread`, whoever runs the fit sets it: the thread count never changes a result.
    """
    params: dict[str, Any] = {
        "objective": "reg:squarederror",
        "eval_metric": "rmse",
        "tree_method": model.tree_method,
        "max_bin": model.max_bin,
        "seed": model.seed,
        # Reseed from (seed, iteration) each round: a booster moved between threads samples
        # the same rows and columns whichever thread runs it (the default RNG is per thread).
        "seed_per_iteration": True,
        "verbosity": 1,
    }
    if nthread is not None:
        params["nthread"] = nthread
    params.update({k: v for k, v in tuned.items() if k != N_ROUNDS})
    return params


def check_search_space(space: dict[str, Dimension]) -> list[str]:
    """Problems XGBoost has with the search space, one line each, naming the key.

    XGBoost itself is asked: one boosting round on a tiny matrix for each bound and choice,
    which refuses a value out of its range and reports a name it does not use.
    """
    problems = []
    if N_ROUNDS not in space:
        problems.append(f"{N_ROUNDS}: missing (the number of boosting rounds)")
    elif space[N_ROUNDS].type != "int" or space[N_ROUNDS].low < 1:
        problems.append(f"{N_ROUNDS}: must be an int dimension with low >= 1")
    for name, dimension in space.items():
        if name == N_ROUNDS:
            continue
        if name in FIXED_PARAMS:
            problems.append(f"{name}: set by the pipeline (params.yaml `model:`), not tunable")
            continue
        values = (
            dimension.choices
            if isinstance(dimension, CategoricalDimension)
            else [dimension.low, dimension.high]
        )
        for value in values:
            problem = _xgboost_refuses(name, value)
            if problem is not None:
                problems.append(f"{name}: {problem}")
                break
    return [f"tune.search_space.{problem}" for problem in problems]


def _xgboost_refuses(name: str, value: Any) -> str | None:
    """Why XGBoost will not train with `name = value`, or None when it does."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            probe = xgb.DMatrix(np.arange(8.0).reshape(4, 2), label=np.arange(4.0))
            xgb.train({name: value, "nthread": 1, "verbosity": 1}, probe, num_boost_round=1)
        except xgb.core.XGBoostError as exc:
            reason = " ".join(str(exc).split(" Stack trace:")[0].split())
            return f"XGBoost refuses {value!r} ({reason})"
    if any("are not used" in str(warning.message) for warning in caught):
        known = [*xgb.XGBRegressor().get_params(), "lambda", "alpha", "eta", "min_split_loss"]
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return f"not an XGBoost parameter{hint}"
    return None


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
    """Quantised training matrices of a seeded k-fold split, reused by the trials that follow."""
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
        self._fold_mse[fold_index] = _validation_rmse(fold, booster.predict(fold.valid)) ** 2

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
        pairs = list(zip(self.folds, self._boosters, strict=True))
        predictions = [(fold.y_valid, booster.predict(fold.valid)) for fold, booster in pairs]
        return CVResult(
            dict(self.curve),
            fold_mse=[float(mean_squared_error(y, p)) for y, p in predictions],
            fold_r2=[float(r2_score(y, p)) for y, p in predictions],
            stopped_early=False,
        )


# Rows per block of XGBoost's CPU metric reduction (see _validation_rmse).
_REDUCTION_BLOCK = 2048


def _validation_rmse(fold: Fold, predicted: np.ndarray) -> float:
    """The validation RMSE exactly as XGBoost's own evaluation reports it on one thread, for
    any thread count of the fit.

    XGBoost sums the squared float32 residuals in double, block by block of 2048 rows, each
    thread its own blocks: the last digits of its `eval_set` depend on how many threads it
    has, and with them the pruner's evidence. Here the blocks are summed in row order, as one
    thread does (tests/test_cv.py checks both properties), so a trial reports the same values
    on a local thread and on a Dask worker with more threads.
    """
    squares = (fold.y_valid.astype(np.float32) - predicted) ** 2
    padded = np.pad(squares.astype(np.float64), (0, -len(squares) % _REDUCTION_BLOCK))
    block_sums = np.cumsum(padded.reshape(-1, _REDUCTION_BLOCK), axis=1)[:, -1]
    return float(np.sqrt(np.cumsum(block_sums)[-1] / len(squares)))


def train_final(
    model: ModelParams, best_params: dict[str, Any], x: pd.DataFrame, y: pd.Series
) -> xgb.Booster:
    """Refit with the best trial's params, exactly as the CV objective trained each fold."""
    train = xgb.QuantileDMatrix(x, y, max_bin=model.max_bin)
    params = booster_params(model, best_params, nthread=available_cores())
    return xgb.train(params, train, num_boost_round=best_params[N_ROUNDS])


def train_baseline(model: ModelParams, x: pd.DataFrame, y: pd.Series) -> xgb.XGBRegressor:
    """XGBoost's defaults, with only the seed and thread count set."""
    return xgb.XGBRegressor(random_state=model.seed, n_jobs=available_cores()).fit(x, y)


def save_model(booster: xgb.Booster, path: Path) -> None:
    booster.save_model(path)


def load_model(path: Path) -> xgb.Booster:
    """The saved model; OSError or ValueError when the file is missing or not a model."""
    try:
        return xgb.Booster(model_file=path)
    except xgb.core.XGBoostError as exc:
        raise ValueError(str(exc)) from None


def predict(booster: xgb.Booster, x: pd.DataFrame) -> np.ndarray:
    return booster.inplace_predict(x)


def model_bytes(booster: xgb.Booster) -> bytes:
    """The model as saved (UBJSON): what its registry digest is taken of."""
    return bytes(booster.save_raw(raw_format="ubj"))


# The packages a served model imports, by the distribution names pyproject.toml installs
# (xgboost-cpu: the plain `xgboost` wheel would pull in CUDA libraries).
SERVING_DISTRIBUTIONS = ("mlflow", "xgboost-cpu", "numpy", "pandas", "scipy")


def log_to_mlflow(booster: xgb.Booster, **kwargs: Any) -> Any:
    """Log the model with MLflow's flavour for it (kwargs: name, signature, input_example,
    registered_model_name, pip_requirements); returns MLflow's ModelInfo."""
    import mlflow.xgboost

    return mlflow.xgboost.log_model(booster, model_format="ubj", **kwargs)
