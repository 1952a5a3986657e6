from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from hpo.metrics import regression_metrics


def test_regression_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200)
    predicted = truth + rng.normal(scale=0.3, size=200)
    result = regression_metrics(truth, predicted)
    assert result["mse"] == pytest.approx(skm.mean_squared_error(truth, predicted))
    assert result["rmse"] == pytest.approx(skm.root_mean_squared_error(truth, predicted))
    assert result["mae"] == pytest.approx(skm.mean_absolute_error(truth, predicted))
    assert result["r2"] == pytest.approx(skm.r2_score(truth, predicted))
