"""Figures and plot data from the finished study.

The figures are plain `matplotlib.figure.Figure` objects, not pyplot's: no backend is chosen or
needed (the stage runs headless, the notebook shows the same figures inline) and nothing stays
registered with pyplot after a figure is saved."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter
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


def history_figure(study: optuna.Study) -> Figure:
    """Every trial at its CV MSE (a pruned one at the last value it reported), the best so
    far, on a log axis clipped above so that the region the search converges to is visible."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    values = [t.value for t in complete]
    pruned_at = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
    best = pd.Series(values, index=[t.number for t in complete]).cummin()
    figure = Figure(figsize=(8, 4.5))
    axes = figure.subplots()
    axes.scatter([t.number for t in pruned], pruned_at, marker="x", s=18, color="tab:gray",
                 label=f"pruned ({len(pruned)}), at its last check")  # fmt: skip
    axes.scatter(best.index, values, s=18, color="tab:blue", label=f"complete ({len(values)})")
    axes.step(best.index, best.to_numpy(), where="post", color="tab:red", label="best so far")
    axes.set_yscale("log")
    for axis_format in (axes.yaxis.set_major_formatter, axes.yaxis.set_minor_formatter):
        axis_format(FormatStrFormatter("%.2f"))  # 0.40, not 4x10^-1
    low = min(values) * 0.97
    high = max(pd.Series(values + pruned_at).quantile(0.9), min(values) * 1.5)
    axes.set_ylim(low, high)
    axes.set_xlabel("trial number")
    axes.set_ylabel("mean CV MSE (log scale)")
    axes.set_title(
        f"Optimisation history of {study.study_name}\n"
        f"best {min(values):.4f} (trial {best.idxmin()}); values above {high:.3g} off the chart",
        fontsize=10,
    )
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc="upper right", framealpha=0.9)
    figure.tight_layout()
    return figure


def importance_figure(table: pd.DataFrame, evaluator_name: str) -> Figure:
    """Horizontal bars, most important on top (drawn from the table, not recomputed)."""
    ordered = table.sort_values("importance")
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    bars = axes.barh(ordered["param"], ordered["importance"], color="tab:blue")
    axes.bar_label(bars, fmt="%.2f", padding=3, fontsize=8)
    axes.set_xlim(0, ordered["importance"].max() * 1.15)
    axes.set_xlabel(f"importance ({evaluator_name}; sums to 1)")
    axes.set_title("Which hyperparameters mattered for the CV MSE")
    figure.tight_layout()
    return figure


def save_png(figure: Figure, path: Path) -> None:
    """Write without the Matplotlib version in the metadata, so the bytes depend on the data."""
    figure.savefig(path, dpi=110, metadata={"Software": None})
