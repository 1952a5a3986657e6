"""Cross-validation with all folds advancing together computes the usual CV MSE."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from conftest import REPO
from sklearn.model_selection import KFold, cross_val_score

from hpo.trial.data import FEATURES, TARGET, derive_features, read_raw
from hpo.trial.model import CVResult, CVTrial, make_folds

# No row or column sampling: the two APIs draw random samples differently.
PARAMS = {"max_depth": 4, "learning_rate": 0.2, "min_child_weight": 2.0, "gamma": 0.01}


@pytest.fixture(scope="module")
def small_data():
    frame = derive_features(read_raw(REPO / "data/raw/cal_housing.data.gz")).iloc[:2000]
    return frame[FEATURES], frame[TARGET]


def cross_validate(params: dict, n_rounds: int, folds, stop_at: int | None = None) -> CVResult:
    """Drive a CVTrial sequentially, checkpoint by checkpoint, as the scheduler does."""
    trial = CVTrial(params, n_rounds, folds, checkpoint_every=5)
    while True:
        for fold_index in range(len(folds)):
            trial.advance(fold_index)
        trial.checkpoint_mse()
        if trial.checkpoint == stop_at:
            return trial.result(stopped_early=True)
        if trial.is_last_checkpoint:
            return trial.result(stopped_early=False)
        trial.next_checkpoint()


def _booster_params() -> dict:
    base = {"objective": "reg:squarederror", "eval_metric": "rmse", "tree_method": "hist"}
    return {**base, **PARAMS, "seed": 0, "nthread": 1}


def test_mean_mse_equals_scikit_learn_cross_validation(small_data) -> None:
    x, y = small_data
    result = cross_validate(_booster_params(), 30, make_folds(x, y, 3, 7, 256))
    model = xgb.XGBRegressor(n_estimators=30, random_state=0, n_jobs=1, **PARAMS)
    splitter = KFold(3, shuffle=True, random_state=7)
    expected = -cross_val_score(model, x, y, cv=splitter, scoring="neg_mean_squared_error")
    np.testing.assert_allclose(result.fold_mse, expected, rtol=1e-5)
    assert result.mean_mse == pytest.approx(expected.mean(), rel=1e-5)
    assert result.curve[30] == pytest.approx(result.mean_mse, rel=1e-6)
    assert list(result.curve) == [5, 10, 15, 20, 25, 30]
    assert not result.stopped_early


def test_last_checkpoint_is_n_estimators_even_off_the_interval(small_data) -> None:
    x, y = small_data
    result = cross_validate(_booster_params(), 12, make_folds(x, y, 2, 0, 256))
    assert list(result.curve) == [5, 10, 12]
    assert len(result.fold_mse) == 2


def test_stopped_trial_has_no_final_metrics(small_data) -> None:
    x, y = small_data
    result = cross_validate(_booster_params(), 30, make_folds(x, y, 2, 0, 256), stop_at=10)
    assert result.stopped_early
    assert list(result.curve) == [5, 10]
    assert result.fold_mse == []


def test_learning_curve_decreases(small_data) -> None:
    x, y = small_data
    result = cross_validate(_booster_params(), 20, make_folds(x, y, 2, 0, 256))
    assert result.curve[20] < result.curve[10] < result.curve[5]


@pytest.fixture(scope="module")
def all_rows():
    frame = derive_features(read_raw(REPO / "data/raw/cal_housing.data.gz"))
    return frame[FEATURES], frame[TARGET]


def test_checkpoints_report_xgboost_s_one_thread_evaluation_at_any_thread_count(all_rows) -> None:
    """XGBoost's own evaluation sums per thread, so its last digits follow the thread count;
    the pruner's evidence must not (validation folds of 10,320 rows: several blocks)."""
    folds = make_folds(*all_rows, 2, 0, 256)
    params = {**_booster_params(), "subsample": 0.8, "max_depth": 8}
    curves = {n: cross_validate({**params, "nthread": n}, 20, folds).curve for n in (1, 2)}

    assert curves[1] == curves[2]
    boosters = [xgb.Booster({**params, "nthread": 1}, cache=[f.train, f.valid]) for f in folds]
    for checkpoint in (5, 10, 15, 20):
        reported = []
        for booster, fold in zip(boosters, folds, strict=True):
            for round_index in range(checkpoint - 5, checkpoint):
                booster.update(fold.train, round_index)
            evaluation = booster.eval_set([(fold.valid, "valid")], checkpoint)
            reported.append(float(evaluation.rsplit(":", 1)[1]) ** 2)  # 17 significant digits
        assert curves[1][checkpoint] == float(np.mean(reported))
