"""What the task decides: the metrics trials are scored by, their direction, and the test split's
report. Predictions are values, class 1's probability (binary) or a row per class (multiclass);
labels are class codes 0..k-1. Scored here, not by the library, so thread counts do not matter."""

from __future__ import annotations

from typing import Literal

import numpy as np

Task = Literal["regression", "binary", "multiclass"]
METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "rmse", "mae"),
    "binary": ("logloss", "auc", "error"),
    "multiclass": ("mlogloss", "merror"),
}
DEFAULT_METRIC = {task: names[0] for task, names in METRICS.items()}
# The test metric a run is summed up by (beside the baseline's), lower is better.
HEADLINE = {"regression": "rmse", "binary": "logloss", "multiclass": "logloss"}
MAXIMISED = frozenset({"auc"})


def direction(metric: str) -> Literal["minimize", "maximize"]:
    return "maximize" if metric in MAXIMISED else "minimize"


def score(metric: str, y: np.ndarray, predicted: np.ndarray) -> float:
    """One fold's (or split's) score; float64 arithmetic on the predictions as given."""
    if metric in ("mse", "rmse"):
        mse = float(np.mean((y - predicted) ** 2))
        return mse if metric == "mse" else float(np.sqrt(mse))
    if metric == "mae":
        return float(np.mean(np.abs(y - predicted)))
    if metric == "auc":
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(y, predicted))
    if metric in ("error", "merror"):
        return float(np.mean(predicted_labels(predicted) != y))
    if metric in ("logloss", "mlogloss"):
        return _log_loss(y, predicted)
    raise ValueError(f"unknown metric {metric!r}")


def class_probabilities(predicted: np.ndarray) -> np.ndarray:
    """A column per class: a binary model predicts class 1's probability only."""
    return predicted if predicted.ndim == 2 else np.column_stack([1 - predicted, predicted])


def predicted_labels(predicted: np.ndarray) -> np.ndarray:
    """Class codes: the likeliest class (for binary, class 1 above probability 0.5)."""
    return np.argmax(class_probabilities(predicted), axis=1)


def _log_loss(y: np.ndarray, predicted: np.ndarray) -> float:
    probabilities = class_probabilities(predicted.astype(np.float64))
    eps = np.finfo(np.float64).eps
    of_truth = np.clip(probabilities[np.arange(len(y)), y.astype(np.int64)], eps, 1 - eps)
    return float(-np.mean(np.log(of_truth)))


def holdout_report(task: Task, y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """What the final model and the baseline are judged by on the test split."""
    from sklearn import metrics

    if task == "regression":
        mse = score("mse", y, predicted)
        r2 = metrics.r2_score(y, predicted)
        return {"mse": mse, "rmse": float(np.sqrt(mse)), "mae": score("mae", y, predicted),
                "r2": float(r2)}  # fmt: skip
    labels = predicted_labels(predicted)
    multi = {} if task == "binary" else {"multi_class": "ovr", "labels": range(predicted.shape[1])}
    auc = metrics.roc_auc_score(y, predicted, **multi)
    return {
        "logloss": _log_loss(y, predicted),
        "accuracy": float(metrics.accuracy_score(y, labels)),
        "f1_macro": float(metrics.f1_score(y, labels, average="macro")),
        "roc_auc": float(auc),
    }
