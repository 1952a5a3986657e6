"""Stage tune: Optuna search over the XGBoost space, every trial recorded in MLflow."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
from functools import partial

import optuna
from mlflow.tracking import MlflowClient

from hpo import paths, search, tracking
from hpo.backends import from_environment
from hpo.config import load_params
from hpo.data import read_split
from hpo.errors import PipelineError, run_stage
from hpo.evaluation import TrainingData, TrialTask
from hpo.executors import open_executor
from hpo.study_store import (
    close_storage,
    load_or_create,
    open_study_storage,
    study_lock,
    study_name,
    write_study_file,
)
from hpo.trial_logging import StudyRecorder
from hpo.tuning import (
    Progress,
    StudyRunner,
    TuningInterruptedError,
    code_fingerprint,
    injected_faults,
    summarize,
)
from hpo.xgb_params import distributions


def main() -> None:
    params = load_params()
    backends = from_environment()
    tune, model = params.tune, params.model
    x_train, y_train = read_split(paths.TRAIN_CSV)
    fault_spec = os.environ.get("HPO_INJECT_FAULT_TRIALS", "")
    # Everything that shapes trial k, and nothing else: the budget only says how many trials
    # to take from the study (tuning.py), so a study grows and shrinks under one name.
    identity = {
        "tune": tune.model_dump(exclude={"n_trials"}),
        "model": model.model_dump(),
        "train_sha256": hashlib.sha256(paths.TRAIN_CSV.read_bytes()).hexdigest(),
        "code_sha256": code_fingerprint(),
        "injected_faults": fault_spec,  # a test's failing trials must not enter a real study
    }
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Ctrl-C, and SIGTERM from `docker stop` or a scheduler, only request a stop: the runner
    # stops between storage operations, never in the middle of a SQLite transaction.
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    # Every service is reached before anything is written: a bad setting loses nothing. So
    # a tracking server comes first, and the local stores are created last.
    if backends.tracking_uri is not None:
        client, experiment_id = tracking.connect()
    data = TrainingData(x_train, y_train, tune.cv_folds, tune.cv_seed, model.max_bin)
    executor = open_executor(backends.dask_address, data, tune.parallel_trials)
    try:
        storage = open_study_storage(backends.study_storage, paths.STUDY_STORE)
        try:
            if backends.tracking_uri is None:
                client, experiment_id = tracking.connect()
            # The study's run outlives budget changes: the budget is logged when it closes.
            run_params = params.model_dump(mode="json", exclude={"tune": {"n_trials"}})
            run_tags = {**tracking.provenance_tags(run_params), **executor.tags}
            lock = partial(study_lock, storage)
            with lock():
                study = load_or_create(storage, study_name(identity))
                parent_run_id = tracking.open_study_run(
                    client, experiment_id, study, run_params, run_tags
                )
            runner = StudyRunner(
                study=study,
                distributions=distributions(tune.search_space),
                n_trials=tune.n_trials,
                parallel_trials=tune.parallel_trials,
                lookahead=tune.lookahead,
                make_sampler=partial(search.make_sampler, tune.sampler),
                make_task=partial(TrialTask.build, tune, model),
                executor=executor,
                recorder=StudyRecorder(client, experiment_id, parent_run_id, run_tags),
                ask_lock=lock,
                fault_hook=injected_faults(fault_spec),
                log=partial(print, file=sys.stderr, flush=True),
                stop=stop,
            )
            progress = _run(runner, client, parent_run_id)
            if not progress.last_session:
                print(
                    "another tune process is still running this study: the last one to "
                    "finish writes the outputs and closes the MLflow study run",
                    file=sys.stderr,
                )
                return
            with lock():  # not while a process that starts now reads the study
                write_study_file(study, progress.trials, paths.STUDY_DB)
        finally:
            close_storage(storage)
    finally:
        executor.shutdown(cancel=True)
    summary = {
        **summarize(study.study_name, progress),
        "mlflow_parent_run_id": parent_run_id,
    }
    finished_at = max(t.datetime_complete for t in progress.trials).timestamp()
    tracking.close_study_run(client, parent_run_id, summary, finished_at)
    paths.TUNE_SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


def _run(runner: StudyRunner, client: MlflowClient, parent_run_id: str) -> Progress:
    """Run the study; on a stop or a failure, close the MLflow study run as KILLED or FAILED."""
    try:
        return runner.run()
    except TuningInterruptedError:
        client.set_terminated(parent_run_id, "KILLED")
        raise PipelineError(
            "tuning interrupted; finished trials are kept in the study, `dvc repro` resumes it",
            exit_code=130,
        ) from None
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise


if __name__ == "__main__":
    run_stage(main)
