"""Figures and plot data from the finished study."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # stages run headless; set before pyplot is imported

import matplotlib.pyplot as plt
import optuna
import pandas as pd
from optuna.importance import (
    BaseImportanceEvaluator,
    FanovaImportanceEvaluator,
    MeanDecreaseImpurityImportanceEvaluator,
    PedAnovaImportanceEvaluator,
)
from optuna.trial import TrialState

from hpo.errors import PipelineError

EVALUATORS: dict[str, type[BaseImportanceEvaluator]] = {
    "fanova": FanovaImportanceEvaluator,
    "ped_anova": PedAnovaImportanceEvaluator,
    "mean_decrease_impurity": MeanDecreaseImpurityImportanceEvaluator,
}


def importance_evaluator(name: str, seed: int) -> BaseImportanceEvaluator:
    evaluator = EVALUATORS[name]
    return evaluator() if evaluator is PedAnovaImportanceEvaluator else evaluator(seed=seed)


def history_table(study: optuna.Study) -> pd.DataFrame:
    """One row per completed trial: its CV MSE and the best CV MSE so far."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    table = pd.DataFrame(
        {"trial": [t.number for t in complete], "cv_mse": [t.value for t in complete]}
    )
    table["best_cv_mse"] = table["cv_mse"].cummin()
    return table


def importance_table(study: optuna.Study, evaluator: BaseImportanceEvaluator) -> pd.DataFrame:
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        raise PipelineError("parameter importance needs at least 2 completed trials")
    importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    return pd.DataFrame({"param": list(importances), "importance": list(importances.values())})


def save_history_png(study: optuna.Study, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = optuna.visualization.matplotlib.plot_optimization_history(study)
    axes.set_ylabel("mean cross-validated MSE")
    _save(axes.figure, path)


def save_importance_png(table: pd.DataFrame, evaluator_name: str, path: Path) -> None:
    """Horizontal bars, most important on top (drawn from the table, not recomputed)."""
    ordered = table.iloc[::-1]
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.barh(ordered["param"], ordered["importance"], color="tab:blue")
    axes.set_xlabel(f"importance ({evaluator_name})")
    axes.set_title("Hyperparameter importance")
    _save(figure, path)


def _save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)
