"""XGBoost as a model family (the interface: hpo.models.Family). Every fit is `hist` on matrices
quantised once per fold, reseeding its sampling each round (`seed_per_iteration`): identical for
any thread count, and a booster moved between threads samples the same rows."""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb

from hpo.errors import native_message
from hpo.models import N_ROUNDS, Setup, available_cores, refusals

LIBRARIES = ("xgboost",)
SERVING = ("xgboost-cpu",)  # the CPU build: the plain wheel pulls in CUDA libraries
MODEL_FILE = "model.ubj"
# Set by the pipeline (task, seed, threads, determinism): not in `fixed`, not tunable.
RESERVED = frozenset(
    {"objective", "eval_metric", "num_class", "tree_method", "seed", "random_state",
     "seed_per_iteration", "nthread", "n_jobs", "verbosity", "device", "enable_categorical"}
)  # fmt: skip
_OBJECTIVES = {
    "regression": ("reg:squarederror", "rmse"),
    "binary": ("binary:logistic", "logloss"),
    "multiclass": ("multi:softprob", "mlogloss"),
}


def booster_params(setup: Setup, tuned: dict[str, Any], nthread: int) -> dict[str, Any]:
    """XGBoost's native params for one fit: the task's objective, fixed settings, tuned values."""
    objective, metric = _OBJECTIVES[setup.task]
    params: dict[str, Any] = {"objective": objective, "eval_metric": metric}
    if setup.task == "multiclass":
        params["num_class"] = setup.n_classes
    params |= {"tree_method": "hist", "max_bin": _max_bin(setup), **setup.fixed}
    params |= {"seed": setup.seed, "seed_per_iteration": True, "verbosity": 1, "nthread": nthread}
    return params | {k: v for k, v in tuned.items() if k != N_ROUNDS}


def _max_bin(setup: Setup) -> int:
    return int(setup.fixed.get("max_bin", 256))  # the matrices are quantised with it


def problems(setup: Setup, space: dict[str, Any]) -> list[str]:
    found = refusals(setup, space, RESERVED, _refused)
    if "max_bin" in space:  # the folds are quantised once, with one max_bin
        found.append("search_space.max_bin: not tunable here; set it in fixed")
    return found


def _refused(name: str, value: Any) -> str | None:
    """Why XGBoost will not train with `name = value` (one round on a tiny matrix), or None."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            probe = xgb.DMatrix(np.arange(8.0).reshape(4, 2), label=np.arange(4.0))
            xgb.train({name: value, "nthread": 1, "verbosity": 1}, probe, num_boost_round=1)
        except xgb.core.XGBoostError as exc:
            reason = native_message(str(exc))
            return f"XGBoost refuses {value!r} ({reason})"
    if any("are not used" in str(warning.message) for warning in caught):
        known = [*xgb.XGBRegressor().get_params(), "lambda", "alpha", "eta", "min_split_loss"]
        close = difflib.get_close_matches(name, known, n=1)
        return "not an XGBoost parameter" + (f" (did you mean {close[0]}?)" if close else "")
    return None


@dataclass(frozen=True)
class Fold:
    train: xgb.QuantileDMatrix
    valid: xgb.DMatrix


def fold(setup: Setup, x_train: pd.DataFrame, y_train: np.ndarray, x_valid: pd.DataFrame) -> Fold:
    train = xgb.QuantileDMatrix(x_train, y_train, max_bin=_max_bin(setup), enable_categorical=True)
    return Fold(train, xgb.DMatrix(x_valid, enable_categorical=True))


class FoldBooster:
    def __init__(self, setup: Setup, tuned: dict[str, Any], fold: Fold, nthread: int) -> None:
        self._fold = fold
        self._booster = xgb.Booster(booster_params(setup, tuned, nthread), [fold.train, fold.valid])
        self._rounds = 0

    def boost_to(self, rounds: int) -> None:
        for round_index in range(self._rounds, rounds):
            self._booster.update(self._fold.train, round_index)
        self._rounds = max(self._rounds, rounds)

    def predict_valid(self) -> np.ndarray:
        return self._booster.predict(self._fold.valid)


fold_booster = FoldBooster


def fit(setup: Setup, tuned: dict[str, Any], x: pd.DataFrame, y: np.ndarray) -> xgb.Booster:
    """Trained as each CV fold was (the same params, binning and rounds), on the whole split."""
    train = xgb.QuantileDMatrix(x, y, max_bin=_max_bin(setup), enable_categorical=True)
    params = booster_params(setup, tuned, nthread=available_cores())
    return xgb.train(params, train, num_boost_round=tuned[N_ROUNDS])


def baseline(setup: Setup, x: pd.DataFrame, y: np.ndarray) -> xgb.XGBModel:
    """XGBoost's defaults, with only the seed and the thread count set."""
    kind = xgb.XGBRegressor if setup.task == "regression" else xgb.XGBClassifier
    model = kind(random_state=setup.seed, n_jobs=available_cores(), enable_categorical=True)
    return model.fit(x, y)


def predict(model: xgb.Booster | xgb.XGBModel, x: pd.DataFrame) -> np.ndarray:
    if isinstance(model, xgb.XGBClassifier):
        probabilities = model.predict_proba(x)
        return probabilities[:, 1] if probabilities.shape[1] == 2 else probabilities
    if isinstance(model, xgb.XGBModel):
        return model.predict(x)
    return model.inplace_predict(x)


def save(model: xgb.Booster, path: Path) -> None:
    model.save_model(path)


def load(path: Path) -> xgb.Booster:
    try:
        return xgb.Booster(model_file=path)
    except xgb.core.XGBoostError as exc:
        raise ValueError(native_message(str(exc))) from None
