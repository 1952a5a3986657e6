"""The tune session, built in one place: the study's name, executor, study store, MLflow run,
writer process and runner. Every service is reached before anything is written (a tracking
server first, the local stores last), so a bad setting loses nothing."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import optuna

from hpo import paths
from hpo.config import Params
from hpo.data import Split
from hpo.errors import PipelineError
from hpo.execution.dask import DaskExecutor, address_from_environment, connect_dask
from hpo.execution.local import LocalExecutor
from hpo.protocol.identity import this_process_identity
from hpo.protocol.runner import (
    Progress,
    StudyRunner,
    TrialExecutor,
    TuningInterruptedError,
    summarize,
)
from hpo.search.evaluation import TrainingData
from hpo.search.space import check_sampler_installed, distributions, make_sampler
from hpo.search.trial import TrialTask
from hpo.storage import studies
from hpo.storage.writer import WriteBehind, WriterConfig
from hpo.tasks import direction
from hpo.tracking import mlflow as tracking
from hpo.tracking.study_run import StudyRun
from hpo.waits import StopSignal

log = logging.getLogger(__name__)
# Test hook: trial numbers (comma-separated, or "all") whose objective raises, so that the
# failure path runs the real code without editing it.
FAULTS_VAR = "HPO_INJECT_FAULT_TRIALS"
# Seconds a finished or stopped run gives its writer process to store what it was sent.
WRITER_EXIT_S = 30.0
STOPPED_WRITER_EXIT_S = 3.0


def study_name(
    params: Params, train_sha256: str, faults: str = "", first: list[dict[str, Any]] | None = None
) -> str:
    """A name from everything that shapes the trial sequence, and nothing else: any change starts a
    fresh study; the budget (n_trials) is left out, so a study grows and shrinks under one name.
    `first` are the configurations evaluated first, as resolved from an earlier study."""
    family = params.model.family
    identity = {
        "tune": params.tune.identity(),
        "first": first or [],
        "metric": params.metric,
        "model": {
            "family": family,
            "seed": params.model.seed,
            "settings": params.model.chosen.model_dump(mode="json"),
        },
        "data": {"task": params.data.task, "target": params.data.target, "train": train_sha256},
        "code": this_process_identity(family),
        "injected_faults": faults,  # a test's failing trials must not enter a real study
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return f"{family}-{params.metric}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


@dataclass
class TuneSession:
    study: optuna.Study
    study_run: StudyRun
    runner: StudyRunner
    writer: WriteBehind
    stop: StopSignal

    def run(self) -> Progress:
        """Run the study; a stop or a failure closes the MLflow run as KILLED or FAILED."""
        try:
            with self.study_run.failing_on_error(TuningInterruptedError), self.stop.polled():
                progress = self.runner.run()
        except TuningInterruptedError:
            raise PipelineError(
                f"tuning interrupted; the study keeps {self.writer.kept} finished trials and "
                "`dvc repro` resumes it",
                exit_code=130,
            ) from None
        if progress.told_this_session == 0 and len(self.study.trials) > len(progress.trials):
            log.info(  # a cut budget: say where the outputs' trials come from
                f"tune.n_trials={progress.n_trials}: the first {len(progress.trials)} of the "
                f"study's {len(self.study.trials)} stored trials; no trial evaluated"
            )
        return progress

    def finish(self, progress: Progress) -> dict[str, Any]:
        """The stage's outputs (the study copy, the summary), then the MLflow run closed."""
        studies.write_study_file(self.study, progress.trials, paths.STUDY_COPY)
        summary = summarize(self.study.study_name, progress)
        summary["mlflow_parent_run_id"] = self.study_run.run_id
        finished_at = max(t.datetime_complete for t in progress.trials).timestamp()
        self.study_run.finish(summary, finished_at)
        return summary


@contextlib.contextmanager
def open_tune_session(params: Params, split: Split, stop: StopSignal) -> Iterator[TuneSession]:
    """The tune stage's session on the configured services; released when the block ends."""
    tune, family, metric = params.tune, params.model.family, params.metric
    check_sampler_installed(tune.sampler)
    if (why := params.why_wilcoxon_cannot_prune()) is not None:
        log.warning(f"warning: {why}")
    faults = os.environ.get(FAULTS_VAR, "")
    storage_url = studies.storage_url_from_environment()
    first = first_configurations(params, storage_url)
    train_sha256 = hashlib.sha256(paths.TRAIN.read_bytes()).hexdigest()
    name = study_name(params, train_sha256, faults, first)
    dask_address = address_from_environment()
    typed_url = None if storage_url is None else storage_url.render_as_string(hide_password=False)
    remote = tracking.tracking_uri_from_environment() is not None
    experiment = tracking.names(family, params.data.path)
    writer = WriteBehind()  # it imports its libraries while the services are reached
    try:
        if remote:
            client, experiment_id = tracking.connect(experiment)
        data = TrainingData(split.x, split.y, family, params.setup(split.n_classes), metric,
                            tune.cv_folds, tune.cv_seed, tune.pruner)  # fmt: skip
        if dask_address is None:
            executor: TrialExecutor = LocalExecutor(data, tune.parallel_trials)
        else:
            executor = DaskExecutor(connect_dask(dask_address, family), dask_address, data)
        try:
            with studies.hold_study(storage_url, name):
                storage = studies.open_storage_url(storage_url)
                try:
                    if not remote:
                        client, experiment_id = tracking.connect(experiment)
                    study = studies.load_or_create(storage, name, direction(metric), metric)
                    run_params = params.model_dump(mode="json", exclude={"tune": {"n_trials"}})
                    tags = {**tracking.provenance_tags(run_params), **executor.tags}
                    study_run = StudyRun.open(
                        client, experiment_id, study, metric, run_params, tags
                    )
                    writer.recount = lambda: sum(t.state.is_finished() for t in study.trials)
                    writer.configure(WriterConfig(
                        storage_url=typed_url, study_name=name, metric=metric, tags=tags,
                        study_label=studies.label(storage_url), tracking_label=tracking.label(),
                        tracking_uri=client.tracking_uri, experiment_id=experiment_id,
                        run_id=study_run.run_id, patient=tuple(tracking.BOUNDED_HERE),
                        files=local_stores(storage_url, client),
                    ))  # fmt: skip
                    runner = make_runner(
                        study, params, executor, writer, first=first,
                        fault_hook=injected_faults(faults), stop=stop.requested,
                    )  # fmt: skip
                    yield TuneSession(study, study_run, runner, writer, stop)
                    writer.close(WRITER_EXIT_S)
                finally:
                    studies.close_storage(storage)
        finally:
            executor.shutdown(cancel=True)
    finally:
        writer.close(STOPPED_WRITER_EXIT_S)


def make_runner(
    study: optuna.Study,
    params: Params,
    executor: TrialExecutor,
    writer: WriteBehind,
    **hooks: Any,
) -> StudyRunner:
    """The runner of `study` as params.yaml configures it; `hooks` are StudyRunner's optional
    first, fault_hook and stop."""
    return StudyRunner(
        study=study,
        distributions=distributions(params.model.chosen.search_space),
        metric=params.metric,
        n_trials=params.tune.n_trials,
        window=params.tune.parallel_trials + params.tune.lookahead,
        make_sampler=partial(make_sampler, params.tune.sampler),
        make_task=TrialTask,
        executor=executor,
        writer=writer,
        **hooks,
    )


def first_configurations(params: Params, storage_url: Any) -> list[dict[str, Any]]:
    """What the study evaluates first: tune.enqueue, then the warm start's configurations."""
    space = distributions(params.model.chosen.search_space)
    first = [studies.in_space(config, space) for config in params.tune.enqueue]  # validated
    warm = params.tune.warm_start
    if warm.study is not None:
        found = studies.best_configurations(storage_url, warm.study, warm.n_best, space)
        if not found:
            log.warning(f"warning: warm start: no complete trial of {warm.study} fits the space")
        log.info(f"warm start: {len(found)} configurations of {warm.study} go first")
        first += found
    return first


def local_stores(storage_url: Any, client: Any) -> dict[str, str]:
    """The SQLite files of the study store and the MLflow store, by their labels."""
    files = {}
    if storage_url is None or storage_url.get_backend_name() == "sqlite":
        store = paths.STUDY_STORE if storage_url is None else storage_url.database
        files[studies.label(storage_url)] = str(store)
    if client.tracking_uri.startswith("sqlite:///"):
        files[tracking.label()] = client.tracking_uri.removeprefix("sqlite:///")
    return files


def injected_faults(spec: str) -> Callable[[int], None]:
    """The test hook of FAULTS_VAR: raise in the objective of the listed trials."""
    numbers = {int(part) for part in spec.split(",") if part.strip() and part.strip() != "all"}
    fail_all = spec.strip() == "all"

    def hook(number: int) -> None:
        if fail_all or number in numbers:
            raise RuntimeError(f"injected fault in trial {number}")

    return hook
