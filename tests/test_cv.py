"""Cross-validation with all folds advancing together computes the usual CV MSE."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from conftest import REPO
from sklearn.model_selection import KFold, cross_val_score

from hpo.cv import cross_validate, make_folds
from hpo.data import FEATURES, TARGET, derive_features, read_raw

# No row or column sampling: the two APIs draw random samples differently.
PARAMS = {"max_depth": 4, "learning_rate": 0.2, "min_child_weight": 2.0, "gamma": 0.01}


@pytest.fixture(scope="module")
def small_data():
    frame = derive_features(read_raw(REPO / "data/raw/cal_housing.data.gz")).iloc[:2000]
    return frame[FEATURES], frame[TARGET]


def _booster_params() -> dict:
    base = {"objective": "reg:squarederror", "eval_metric": "rmse", "tree_method": "hist"}
    return {**base, **PARAMS, "seed": 0, "nthread": 1}


def test_mean_mse_equals_scikit_learn_cross_validation(small_data) -> None:
    x, y = small_data
    result = cross_validate(_booster_params(), 30, make_folds(x, y, 3, 7, 256), lambda *_: False)
    model = xgb.XGBRegressor(n_estimators=30, random_state=0, n_jobs=1, **PARAMS)
    splitter = KFold(3, shuffle=True, random_state=7)
    expected = -cross_val_score(model, x, y, cv=splitter, scoring="neg_mean_squared_error")
    np.testing.assert_allclose(result.fold_mse, expected, rtol=1e-5)
    assert result.mean_mse == pytest.approx(expected.mean(), rel=1e-5)
    assert result.curve[-1] == pytest.approx(result.mean_mse, rel=1e-6)
    assert len(result.curve) == 30
    assert not result.stopped_early


def test_stop_check_ends_the_fit_after_that_round(small_data) -> None:
    x, y = small_data
    seen: list[int] = []

    def stop_at_five(step: int, value: float) -> bool:
        seen.append(step)
        return step == 5

    result = cross_validate(_booster_params(), 30, make_folds(x, y, 2, 0, 256), stop_at_five)
    assert result.stopped_early
    assert seen == [1, 2, 3, 4, 5]
    assert len(result.curve) == 5
    assert result.fold_mse == []


def test_learning_curve_mostly_decreases(small_data) -> None:
    x, y = small_data
    result = cross_validate(_booster_params(), 20, make_folds(x, y, 2, 0, 256), lambda *_: False)
    assert result.curve[-1] < result.curve[0] / 2
