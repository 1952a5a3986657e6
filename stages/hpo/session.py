"""The tune session, built in one place: executor, study storage, MLflow tracking, runner.

stages/tune.py opens it with `open_tune_session`, which reaches every service in a safe order;
the benchmarks build the same session around their own executor and stores with
`start_session`. Either way the study is named by everything that shapes its trials, its
MLflow run is opened under the study lock, and the runner walks the ask/tell protocol.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna
import pandas as pd
from mlflow.tracking import MlflowClient
from optuna.storages import RDBStorage

from hpo import paths
from hpo.config import Params
from hpo.errors import PipelineError
from hpo.execution.dask import DaskExecutor, connect_dask
from hpo.execution.local import LocalExecutor
from hpo.protocol.identity import this_process_identity
from hpo.protocol.runner import (
    Progress,
    StudyRunner,
    TrialExecutor,
    TuningInterruptedError,
    summarize,
)
from hpo.storage import tracking
from hpo.storage.settings import Backends
from hpo.storage.studies import (
    close_storage,
    load_or_create,
    open_study_storage,
    study_lock,
    write_study_file,
)
from hpo.storage.study_run import StudyRun
from hpo.storage.writer import WriteBehind, WriterConfig
from hpo.trial.evaluation import TrainingData, TrialTask
from hpo.trial.space import distributions, make_sampler
from hpo.waits import StopSignal

# Test hook: trial numbers (comma-separated, or "all") whose objective raises, so that the
# failure path runs the real code without editing it.
FAULTS_VAR = "HPO_INJECT_FAULT_TRIALS"


def study_name(params: Params, train_sha256: str, faults: str = "") -> str:
    """A name derived from everything that shapes the trial sequence, and nothing else.

    The same settings resume the same study after a crash; any change (search space, seeds,
    folds, data, trial code, a library's version) starts a fresh study instead of mixing trials
    from different setups. The budget only says how many trials to take from the study, so a
    study grows and shrinks under one name.
    """
    identity = {
        "tune": params.tune.model_dump(mode="json", exclude={"n_trials"}),
        "model": params.model.model_dump(mode="json"),
        "train_sha256": train_sha256,
        "code": this_process_identity(),
        "injected_faults": faults,  # a test's failing trials must not enter a real study
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "xgb-cv-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


# Seconds a finished run waits for its writer process to exit.
WRITER_EXIT_S = 30


@dataclass
class TuneSession:
    study: optuna.Study
    study_run: StudyRun
    runner: StudyRunner
    writer: WriteBehind
    lock: Callable[[], contextlib.AbstractContextManager[Any]]
    # Around the runner, which checks the stop request itself (waits.StopSignal.polled).
    polled: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext

    def close(self, wait: bool = True) -> None:
        """End the writer process; without `wait`, it finishes its writes on its own."""
        self.writer.close()
        if wait:
            self.writer.wait(WRITER_EXIT_S)

    def run(self) -> Progress:
        """Run the study; a stop or a failure closes the MLflow run as KILLED or FAILED."""
        try:
            with self.study_run.failing_on_error(TuningInterruptedError), self.polled():
                progress = self.runner.run()
        except TuningInterruptedError:
            raise PipelineError(
                "tuning interrupted; finished trials are kept in the study, `dvc repro` resumes it",
                exit_code=130,
            ) from None
        stored = len(self.study.get_trials(deepcopy=False))
        if progress.told_this_session == 0 and stored > len(progress.trials):
            self.runner.log(  # a cut budget: say where the outputs' trials come from
                f"tune.n_trials={progress.n_trials}: the first {len(progress.trials)} of the "
                f"study's {stored} stored trials; no trial evaluated"
            )
        return progress

    def write_study_file(self, progress: Progress) -> None:
        """The stage's DVC output: this run's trials, written under the study lock so that a
        process starting now does not read the study half-way."""
        with self.lock():
            write_study_file(self.study, progress.trials, paths.STUDY_DB)

    def finish(self, progress: Progress) -> dict[str, Any]:
        """The study's summary, logged on its MLflow run, which is then closed."""
        summary = summarize(self.study.study_name, progress)
        summary["mlflow_parent_run_id"] = self.study_run.run_id
        finished_at = max(t.datetime_complete for t in progress.trials).timestamp()
        self.study_run.finish(summary, finished_at)
        return summary


def start_session(
    params: Params,
    storage: RDBStorage,
    executor: TrialExecutor,
    client: MlflowClient,
    experiment_id: str,
    name: str,
    stop: threading.Event | None = None,
    log: Callable[[str], None] = print,
    fault_hook: Callable[[int], None] = lambda _number: None,
    writer: WriteBehind | None = None,
) -> TuneSession:
    """The study `name` in `storage`, its MLflow run, and the runner that drives it, whose
    writes a child process applies; the caller closes the session (`TuneSession.close`)."""
    tune = params.tune
    # The study's run outlives budget changes: the budget is logged when it closes.
    run_params = params.model_dump(mode="json", exclude={"tune": {"n_trials"}})
    run_tags = {**tracking.provenance_tags(run_params), **executor.tags}
    lock = partial(study_lock, storage)
    with lock():
        study = load_or_create(storage, name)
        study_run = StudyRun.open(client, experiment_id, study, run_params, run_tags)
    writer = writer or WriteBehind()
    writer.configure(
        WriterConfig(
            storage_url=storage.engine.url.render_as_string(hide_password=False),
            study_name=name,
            tracking_uri=client.tracking_uri,
            experiment_id=experiment_id,
            run_id=study_run.run_id,
            tags=run_tags,
        )
    )
    runner = StudyRunner(
        study=study,
        distributions=distributions(tune.search_space),
        n_trials=tune.n_trials,
        parallel_trials=tune.parallel_trials,
        lookahead=tune.lookahead,
        make_sampler=partial(make_sampler, tune.sampler),
        make_task=partial(TrialTask.build, tune, params.model),
        executor=executor,
        recorder=study_run,
        writer=writer,
        ask_lock=lock,
        fault_hook=fault_hook,
        log=log,
        stop=stop or threading.Event(),
    )
    return TuneSession(study, study_run, runner, writer, lock)


@contextlib.contextmanager
def open_tune_session(
    params: Params, backends: Backends, x: pd.DataFrame, y: pd.Series, stop: StopSignal
) -> Iterator[TuneSession]:
    """The tune stage's session on the configured services; released when the block ends.

    Every service is reached before anything is written, so a bad setting loses nothing: a
    tracking server first, the local stores last. A stop request while reaching them ends the
    stage at once (KeyboardInterrupt, `stop`); while the study runs, at the runner's next check.
    """
    tune = params.tune
    faults = os.environ.get(FAULTS_VAR, "")
    name = study_name(params, hashlib.sha256(paths.TRAIN_CSV.read_bytes()).hexdigest(), faults)
    writer = WriteBehind()  # it imports its libraries while the services are reached
    try:
        remote = backends.tracking_uri is not None
        if remote:
            client, experiment_id = tracking.connect()
        data = TrainingData(x, y, tune.cv_folds, tune.cv_seed, params.model.max_bin)
        if backends.dask_address is None:
            executor: TrialExecutor = LocalExecutor(data, tune.parallel_trials)
        else:
            dask_client = connect_dask(backends.dask_address)
            executor = DaskExecutor(dask_client, backends.dask_address, data)
        try:
            storage = open_study_storage(backends.study_storage, paths.STUDY_STORE)
            try:
                if not remote:
                    client, experiment_id = tracking.connect()
                session = start_session(
                    params,
                    storage,
                    executor,
                    client,
                    experiment_id,
                    name,
                    stop=stop.requested,
                    log=partial(print, file=sys.stderr, flush=True),
                    fault_hook=injected_faults(faults),
                    writer=writer,
                )
                session.polled = stop.polled
                yield session
                session.close(wait=True)
            finally:
                close_storage(storage)
        finally:
            executor.shutdown(cancel=True)
    finally:
        writer.close()  # after a failure or a stop the child finishes its writes on its own


def injected_faults(spec: str) -> Callable[[int], None]:
    """The test hook of FAULTS_VAR: raise in the objective of the listed trials."""
    numbers = {int(part) for part in spec.split(",") if part.strip() and part.strip() != "all"}
    fail_all = spec.strip() == "all"

    def hook(number: int) -> None:
        if fail_all or number in numbers:
            raise RuntimeError(f"injected fault in trial {number}")

    return hook
