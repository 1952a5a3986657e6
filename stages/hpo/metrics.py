"""Regression metrics, as plain floats for JSON, MLflow and DVC."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def mse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    diff = np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float)
    return float(np.mean(diff**2))


def r2(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    truth = np.asarray(y_true, dtype=float)
    residual = float(np.sum((truth - np.asarray(y_pred, dtype=float)) ** 2))
    total = float(np.sum((truth - truth.mean()) ** 2))
    return 1.0 - residual / total


def regression_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """MSE, RMSE, MAE and R2 of one set of predictions."""
    error = mse(y_true, y_pred)
    mae = float(np.mean(np.abs(np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float))))
    return {"mse": error, "rmse": float(np.sqrt(error)), "mae": mae, "r2": r2(y_true, y_pred)}
