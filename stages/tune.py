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

from hpo import paths, search, tracking
from hpo.config import load_params
from hpo.cv import make_folds
from hpo.data import read_split
from hpo.errors import PipelineError, run_stage
from hpo.study_store import (
    close_storage,
    code_fingerprint,
    load_or_create,
    open_storage,
    process_lock,
    study_name,
)
from hpo.trial_logging import StudyRecorder
from hpo.tuning import StudyRunner, TuningInterruptedError, injected_faults, summarize
from hpo.xgb_params import booster_params, distributions, threads_per_fit


def main() -> None:
    params = load_params()
    tune, model = params.tune, params.model
    x_train, y_train = read_split(paths.TRAIN_CSV)
    fault_spec = os.environ.get("HPO_INJECT_FAULT_TRIALS", "")
    identity = {
        "tune": tune.model_dump(),
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
    # A second tune process may start at the same time: create each store under a lock.
    with process_lock(paths.MLFLOW_DB):
        client, experiment_id = tracking.connect()
    run_params = params.model_dump(mode="json")
    run_tags = tracking.provenance_tags(run_params)
    with process_lock(paths.STUDY_DB):
        storage = open_storage(paths.STUDY_DB)
        study = load_or_create(storage, study_name(identity))
        parent_run_id = tracking.open_study_run(client, experiment_id, study, run_params, run_tags)
    runner = StudyRunner(
        study=study,
        distributions=distributions(tune.search_space),
        n_trials=tune.n_trials,
        parallel_trials=tune.parallel_trials,
        lookahead=tune.lookahead,
        make_sampler=partial(search.make_sampler, tune.sampler),
        make_pruner=partial(search.make_pruner, tune.pruner),
        make_folds=partial(
            make_folds, x_train, y_train, tune.cv_folds, tune.cv_seed, model.max_bin
        ),
        booster_params=partial(
            booster_params, model, nthread=threads_per_fit(tune.parallel_trials)
        ),
        report_interval=tune.pruner.interval_steps,
        recorder=StudyRecorder(client, experiment_id, parent_run_id, run_tags),
        ask_lock=partial(process_lock, paths.STUDY_DB),
        fault_hook=injected_faults(fault_spec),
        log=partial(print, file=sys.stderr, flush=True),
        stop=stop,
    )
    try:
        progress = runner.run()
        summary = {**summarize(study, progress), "mlflow_parent_run_id": parent_run_id}
    except TuningInterruptedError:
        client.set_terminated(parent_run_id, "KILLED")
        raise PipelineError(
            f"tuning interrupted; finished trials are kept in {paths.STUDY_DB}, "
            "run `dvc repro` to resume",
            exit_code=130,
        ) from None
    except BaseException:
        client.set_terminated(parent_run_id, "FAILED")
        raise
    finally:
        close_storage(storage)
    tracking.close_study_run(client, parent_run_id, summary)
    paths.TUNE_SUMMARY.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    run_stage(main)
