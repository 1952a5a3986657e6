"""One MLflow child run per Optuna trial, written when the trial is told.

A run holds the trial's params, its final CV metrics and its learning curve as the metric
history `cv_mse_curve` (step = boosting rounds), which the MLflow UI plots. Three store calls
per trial and no artifact file: the main thread writes these between asks.
"""

from __future__ import annotations

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from optuna.trial import FrozenTrial, TrialState

from hpo.evaluation import TrialOutcome

_RUN_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "FINISHED",
    TrialState.FAIL: "FAILED",
}


class StudyRecorder:
    """Writes each told trial as a child run of the study's parent run, with the given tags."""

    def __init__(
        self, client: MlflowClient, experiment_id: str, parent_run_id: str, tags: dict[str, str]
    ) -> None:
        self._client = client
        self._experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._tags = tags

    def recorded_numbers(self) -> set[int]:
        """Trials with a complete child run; a run left half-written by a kill is removed."""
        runs = self._client.search_runs(
            [self._experiment_id],
            f"tags.{MLFLOW_PARENT_RUN_ID} = '{self.parent_run_id}'",
            max_results=50_000,
        )
        recorded = set()
        for run in runs:
            if run.info.status == "RUNNING":  # killed between create_run and set_terminated
                self._client.delete_run(run.info.run_id)
            else:
                recorded.add(int(run.data.tags["optuna.trial_number"]))
        return recorded

    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        run = self._client.create_run(
            self._experiment_id,
            start_time=int(outcome.started_at * 1000),
            tags={
                **self._tags,
                MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                MLFLOW_RUN_NAME: f"trial-{trial.number:03d}",
                "optuna.trial_number": str(trial.number),
                "optuna.state": trial.state.name,
                **({"error": outcome.error[:5000]} if outcome.error else {}),
            },
        )
        run_id = run.info.run_id
        timestamp = int(outcome.finished_at * 1000)
        metrics = [Metric("trial_number", trial.number, timestamp, 0)]
        curve = _curve(outcome).items()
        metrics += [Metric("cv_mse_curve", v, timestamp, rounds) for rounds, v in curve]
        metrics += [Metric(k, v, timestamp, 0) for k, v in _trial_metrics(outcome).items()]
        self._client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(k, str(v)) for k, v in trial.params.items()],
        )
        self._client.set_terminated(run_id, _RUN_STATUS[trial.state], end_time=timestamp)


def _curve(outcome: TrialOutcome) -> dict[int, float]:
    return outcome.result.curve if outcome.result is not None else {}


def _trial_metrics(outcome: TrialOutcome) -> dict[str, float]:
    result = outcome.result
    if result is None or result.stopped_early:
        return {}
    metrics = {f"fold_{i}_mse": v for i, v in enumerate(result.fold_mse)}
    metrics |= {f"fold_{i}_r2": v for i, v in enumerate(result.fold_r2)}
    metrics |= {
        "cv_mse": result.mean_mse,
        "cv_rmse": result.mean_mse**0.5,
        "cv_r2": sum(result.fold_r2) / len(result.fold_r2),
    }
    return metrics
