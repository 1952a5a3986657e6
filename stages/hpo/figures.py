"""Figures and plot data: the search (from the study), and the test split (from evaluate). Plain
`matplotlib.figure.Figure`s, not pyplot's: no backend is needed, and nothing stays registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter
from optuna.importance import BaseImportanceEvaluator, PedAnovaImportanceEvaluator
from optuna.trial import TrialState

from hpo.tasks import class_probabilities, predicted_labels

EVALUATORS: dict[str, type[BaseImportanceEvaluator]] = {
    "fanova": optuna.importance.FanovaImportanceEvaluator,
    "ped_anova": PedAnovaImportanceEvaluator,
    "mean_decrease_impurity": optuna.importance.MeanDecreaseImpurityImportanceEvaluator,
}


def importance_evaluator(name: str, seed: int) -> BaseImportanceEvaluator:
    evaluator = EVALUATORS[name]
    return evaluator() if evaluator is PedAnovaImportanceEvaluator else evaluator(seed=seed)


def history_table(study: optuna.Study) -> pd.DataFrame:
    """One row per completed trial: its CV score and the best so far."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    table = pd.DataFrame(
        {"trial": [t.number for t in complete], "cv_score": [t.value for t in complete]}
    )
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    table["best_cv_score"] = table["cv_score"].cummax() if maximize else table["cv_score"].cummin()
    return table


def importance_table(study: optuna.Study, evaluator: BaseImportanceEvaluator) -> pd.DataFrame:
    """Each hyperparameter's importance; empty unless 2 completed trials differ in value."""
    if len({t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}) < 2:
        return pd.DataFrame({"param": [], "importance": []})
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.DataFrame({"param": list(importances), "importance": list(importances.values())})


def history_figure(study: optuna.Study) -> Figure:
    """Every trial at its CV score (a pruned one at its last report) and the best so far; a
    minimised score on a log axis clipped above, so the region the search converges to shows."""
    trials = study.get_trials(deepcopy=False)
    name = study.metric_names[0] if study.metric_names else "value"
    table = history_table(study).rename(columns={"cv_score": "value"})
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    pruned_at = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    axes.scatter([t.number for t in pruned], pruned_at, marker="x", s=18, color="tab:gray",
                 label=f"pruned ({len(pruned)}), at its last check")  # fmt: skip
    numbers = table["trial"]
    axes.scatter(numbers, table["value"], s=18, color="tab:blue", label=f"complete ({len(table)})")
    axes.step(numbers, table["best_cv_score"], where="post", color="tab:red", label="best so far")
    title = f"Optimisation history of {study.study_name}"
    minimized = study.direction == optuna.study.StudyDirection.MINIMIZE
    if len(table) and minimized and table["value"].min() > 0:
        axes.set_yscale("log")
        for axis_format in (axes.yaxis.set_major_formatter, axes.yaxis.set_minor_formatter):
            axis_format(FormatStrFormatter("%.2f"))  # 0.40, not 4x10^-1
        low, best = table["value"].min() * 0.97, table["value"].min()
        high = max(pd.Series([*table["value"], *pruned_at]).quantile(0.9), best * 1.5)
        axes.set_ylim(low, high)
        title += f"\nbest {best:.4f}; values above {high:.3g} off the chart"
    axes.set(xlabel="trial number", ylabel=f"mean {name}")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="upper right", framealpha=0.9)
    figure.tight_layout()
    return figure


def importance_figure(table: pd.DataFrame, evaluator_name: str) -> Figure:
    """Horizontal bars, most important on top (drawn from the table, not recomputed)."""
    ordered = table.sort_values("importance")
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    if ordered.empty:
        axes.text(0.5, 0.5, "importance needs 2 completed trials of different scores", ha="center")
    else:
        bars = axes.barh(ordered["param"], ordered["importance"], color="tab:blue")
        axes.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
        axes.set_xlim(0, ordered["importance"].max() * 1.15)
    axes.set_xlabel(f"importance ({evaluator_name}; sums to 1)")
    axes.set_title("Which hyperparameters mattered for the CV score")
    figure.tight_layout()
    return figure


def holdout_tables(
    task: str, y: np.ndarray, predicted: np.ndarray, classes: list[Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The test split's plot data: predictions beside the truth (labels, for classification),
    and a curve: each class's ROC curve against the rest, or for regression the REC curve (x:
    absolute error, y: share of test rows predicted within it)."""
    from sklearn.metrics import roc_curve

    if task == "regression":
        predictions = pd.DataFrame({"actual": y, "predicted": predicted})
        shares = np.linspace(0, 1, 201)
        errors = np.quantile(np.abs(y - predicted), shares)
        return predictions, pd.DataFrame({"series": "REC", "x": errors, "y": shares})
    names = np.asarray([str(c) for c in classes], dtype=object)
    labels = names[predicted_labels(predicted)]
    predictions = pd.DataFrame({"actual": names[y], "predicted": labels})
    scores = class_probabilities(predicted)
    curves = []
    for code in range(1, 2) if predicted.ndim == 1 else range(len(classes)):
        fpr, tpr, _ = roc_curve(y == code, scores[:, code])
        curves.append(pd.DataFrame({"series": f"class {names[code]}", "x": fpr, "y": tpr}))
    return predictions, pd.concat(curves, ignore_index=True)


def holdout_figure(task: str, predictions: pd.DataFrame, curve: pd.DataFrame) -> Figure:
    """Left: predicted against actual (regression) or the confusion matrix; right: the curve."""
    figure = Figure(figsize=(11, 4.8))
    left, right = figure.subplots(1, 2)
    if task == "regression":
        left.scatter(predictions["actual"], predictions["predicted"], s=3, alpha=0.3)
        low, high = predictions["actual"].min(), predictions["actual"].max()
        left.plot([low, high], [low, high], color="black", linestyle="--", linewidth=1)
        left.set_title("Predicted against actual (test split; dashed: y = x)")
        left.set(xlabel="actual", ylabel="predicted")
        right.plot(curve["x"], curve["y"], color="tab:blue")
        right.set(title="REC curve: share of test rows within an error", xlabel="absolute error",
                  ylabel="share of test rows", ylim=(0, 1.01))  # fmt: skip
    else:
        labels = sorted(set(predictions["actual"]) | set(predictions["predicted"]))
        counts = pd.crosstab(predictions["actual"], predictions["predicted"])
        counts = counts.reindex(index=labels, columns=labels, fill_value=0)
        left.imshow(counts.to_numpy(), cmap="Blues")
        for (row, column), count in np.ndenumerate(counts.to_numpy()):
            left.text(column, row, str(count), ha="center", va="center", fontsize=8)
        left.set_xticks(range(len(labels)), labels, rotation=45)
        left.set_yticks(range(len(labels)), labels)
        left.set(title="Confusion matrix (test split)", xlabel="predicted", ylabel="actual")
        for series, points in curve.groupby("series", sort=False):
            right.plot(points["x"], points["y"], label=series)
        right.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1)
        right.set(title="ROC curves (each class against the rest)", xlabel="false positive rate",
                  ylabel="true positive rate")  # fmt: skip
        right.legend(fontsize=8)
    figure.tight_layout()
    return figure


def save_png(figure: Figure, path: Path) -> None:
    """Write without the Matplotlib version in the metadata, so the bytes depend on the data."""
    figure.savefig(path, dpi=110, metadata={"Software": None})
