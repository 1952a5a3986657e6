"""The study's MLflow run (open, finish, fail, kill) and one child run per told trial: its
params, final CV metrics and learning curve (metric history `cv_<metric>_curve`, step = rounds),
in three store calls and no artifact file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from mlflow.entities import LifecycleStage, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from optuna.trial import FrozenTrial, TrialState

from hpo.search.trial import TrialOutcome
from hpo.tracking.mlflow import OPTIONAL_PROVENANCE, log_metrics, log_params_flat

# Study user attribute: the id of the study's MLflow run, so that a resumed study reopens it.
STUDY_RUN_ID_ATTR = "mlflow_parent_run_id"
_RUN_STATUS = {
    TrialState.COMPLETE: "FINISHED",
    TrialState.PRUNED: "FINISHED",
    TrialState.FAIL: "FAILED",
}


@dataclass
class StudyRun:
    client: MlflowClient
    experiment_id: str
    run_id: str
    metric: str  # what trials are scored by (mse, auc, ...)
    tags: dict[str, str]

    @classmethod
    def open(
        cls,
        client: MlflowClient,
        experiment_id: str,
        study: optuna.Study,
        metric: str,
        params: dict[str, Any],
        tags: dict[str, str],
    ) -> StudyRun:
        """The study's run: created once, reopened when the study resumes or grows; created anew,
        its trials recorded again, if the study outlived it (mlflow.db or the run deleted; MLflow
        keeps the old child runs of a run deleted in the UI)."""
        run_id = study.user_attrs.get(STUDY_RUN_ID_ATTR)
        reopened = _active_run(client, run_id) if run_id is not None else None
        if reopened is not None:
            client.update_run(run_id, status="RUNNING")
            # This session's provenance and executor tags replace the last one's, absent ones too.
            client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            for key in (OPTIONAL_PROVENANCE & reopened.data.tags.keys()) - tags.keys():
                client.delete_tag(run_id, key)
            return cls(client, experiment_id, run_id, metric, tags)
        run = client.create_run(
            experiment_id,
            run_name=study.study_name,
            tags={"optuna.study_name": study.study_name, **tags},
        )
        log_params_flat(client, run.info.run_id, params)
        study.set_user_attr(STUDY_RUN_ID_ATTR, run.info.run_id)
        return cls(client, experiment_id, run.info.run_id, metric, tags)

    @contextlib.contextmanager
    def failing_on_error(self, interrupted: type[BaseException]) -> Iterator[None]:
        """Mark the run KILLED when `interrupted` escapes the block, FAILED on any other error
        (as far as the store still answers: its own failure may be what escaped)."""
        try:
            yield
        except BaseException as exc:
            with contextlib.suppress(Exception):
                status = "KILLED" if isinstance(exc, interrupted) else "FAILED"
                self.client.set_terminated(self.run_id, status)
            raise

    def finish(self, summary: dict[str, Any], finished_at: float) -> None:
        """Log the study's outcome; the run ends at `finished_at`, when its last trial was told
        (so a study resumed, cut or returned to keeps the duration of the trials it holds)."""
        counts = summary["n_trials"]
        values = {
            f"best_cv_{self.metric}": summary["best_value"],
            "trial_budget": summary["trial_budget"],
            "trials_complete": counts["complete"],
            "trials_pruned": counts["pruned"],
            "trials_failed": counts["failed"],
            "optimization_time_seconds": summary["optimization_time_seconds"],
        }
        log_metrics(self.client, self.run_id, values)
        self.client.log_dict(self.run_id, summary, "tune_summary.json")
        self.client.set_terminated(self.run_id, "FINISHED", end_time=int(finished_at * 1000))

    def recorded_numbers(self) -> set[int]:
        """Trials with a complete child run; a run left half-written by a kill is removed."""
        children = f"tags.{MLFLOW_PARENT_RUN_ID} = '{self.run_id}'"
        runs = self.client.search_runs([self.experiment_id], children, max_results=50_000)
        recorded = set()
        for run in runs:
            if run.info.status == "RUNNING":  # killed between create_run and set_terminated
                self.client.delete_run(run.info.run_id)
            else:
                recorded.add(int(run.data.tags["optuna.trial_number"]))
        return recorded

    def record(self, trial: FrozenTrial, outcome: TrialOutcome) -> None:
        """The trial's child run, written when the trial is told."""
        run = self.client.create_run(
            self.experiment_id,
            start_time=int(outcome.started_at * 1000),
            tags={
                **self.tags,
                MLFLOW_PARENT_RUN_ID: self.run_id,
                MLFLOW_RUN_NAME: f"trial-{trial.number:03d}",
                "optuna.trial_number": str(trial.number),
                "optuna.state": trial.state.name,
                **({"error": outcome.error[:5000]} if outcome.error else {}),
            },
        )
        run_id = run.info.run_id
        timestamp = int(outcome.finished_at * 1000)
        metrics = [Metric("trial_number", trial.number, timestamp, 0)]
        result = outcome.result
        curve = result.curve.items() if result is not None else ()
        metrics += [Metric(f"cv_{self.metric}_curve", v, timestamp, step) for step, v in curve]
        if result is not None and not result.stopped_early:
            final = {f"fold_{i}_{self.metric}": v for i, v in enumerate(result.fold_scores)}
            final[f"cv_{self.metric}"] = result.mean
            metrics += [Metric(k, v, timestamp, 0) for k, v in final.items()]
        params = [Param(k, str(v)) for k, v in trial.params.items()]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        self.client.set_terminated(run_id, _RUN_STATUS[trial.state], end_time=timestamp)


def _active_run(client: MlflowClient, run_id: str) -> Run | None:
    """The run, unless it was deleted or its store lost it."""
    try:
        run = client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise
    return run if run.info.lifecycle_stage == LifecycleStage.ACTIVE else None
