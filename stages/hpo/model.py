"""The final model (tuned params, whole training split) and the default-params baseline."""

from __future__ import annotations

from typing import Any

import pandas as pd
import xgboost as xgb

from hpo.config import ModelParams
from hpo.xgb_params import N_ROUNDS, available_cores, booster_params


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
