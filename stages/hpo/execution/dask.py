"""Trials on a Dask cluster (DASK_SCHEDULER_ADDRESS): a worker runs a whole trial in one task.
Dask reruns the task of a worker that died elsewhere, harmless as a trial is a pure function of
its task; only a lost scheduler stops the stage, with one line."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING

import optuna

from hpo.errors import PipelineError
from hpo.models import available_cores
from hpo.protocol.identity import this_process_identity
from hpo.redaction import redact, scrub
from hpo.search.evaluation import TrainingData, evaluate_trial
from hpo.search.trial import TrialOutcome, TrialTask
from hpo.waits import announced

if TYPE_CHECKING:
    from distributed import Client

DASK_VAR = "DASK_SCHEDULER_ADDRESS"
# Seconds to reach the scheduler before giving up with one line.
CONNECT_TIMEOUT_S = 15


class ExecutorLostError(PipelineError):
    """The cluster that ran the trials is gone; finished trials are kept, the run can resume."""


class DaskExecutor:
    """Whole trials as tasks, each with the driver's code identity; the training data sent once,
    as a task result (not `scatter`ed: the scheduler recomputes a result a dying worker took)."""

    def __init__(self, client: Client, address: str, data: TrainingData) -> None:
        self._client, self._address = client, address
        self._digest = this_process_identity(data.family)
        self._data = client.submit(_pass_through, data, pure=False)
        self._executor = client.get_executor()
        self.tags = {"hpo.executor": "dask", "hpo.workers": str(len(client.nthreads()))}
        self._closed = False

    def submit(self, task: TrialTask) -> Future[TrialOutcome]:
        try:
            submitted = self._executor.submit(evaluate_on_worker, task, self._data, self._digest)
        except Exception as exc:  # the client closed itself after losing the scheduler
            raise self._lost(exc) from None
        result: Future[TrialOutcome] = Future()
        submitted.add_done_callback(lambda done: self._settle(done, result, task))
        return result

    def shutdown(self, cancel: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # a lost scheduler cannot be told anything
            self._executor.shutdown(wait=not cancel)
            self._client.close(timeout=5)

    def _settle(self, done: Future[TrialOutcome], result: Future[TrialOutcome], task: TrialTask):
        """Pass the outcome on; a trial that kept killing workers fails, anything else stops."""
        from distributed import KilledWorker

        try:
            result.set_result(done.result())
        except KilledWorker as exc:  # the scheduler's retries are used up
            if str(getattr(exc, "task", "")) == str(self._data.key):
                result.set_exception(self._lost(exc))  # the data itself cannot be kept
            else:  # this trial's configuration kills its workers (e.g. out of memory)
                result.set_result(TrialOutcome.failed(task, exc))
        except StaleWorkerError as exc:
            result.set_exception(ExecutorLostError(f"{DASK_VAR}: {exc}"))
        except BaseException as exc:  # never leave the driver waiting on this future
            if self._closed:
                result.set_exception(InterruptedError("tuning was interrupted"))
            else:
                result.set_exception(self._lost(exc))

    def _lost(self, exc: BaseException) -> ExecutorLostError:
        if isinstance(exc, CancelledError | OSError) or "Closed" in type(exc).__name__:
            what = f"lost the Dask scheduler at {self._address}"
        else:
            what = f"the Dask cluster at {self._address} could not run a trial"
        return ExecutorLostError(
            f"{DASK_VAR}: {what} ({type(exc).__name__}); finished trials are kept, run "
            "`dvc repro` again once it is back, or unset the variable to run locally"
        )


def address_from_environment() -> str | None:
    """DASK_SCHEDULER_ADDRESS checked for form (tcp://, or tls:// with Dask's TLS settings); None
    when unset: trials run on local threads."""
    value = os.environ.get(DASK_VAR, "").strip()
    if not value:
        return None
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
        from distributed.security import Security
    except ImportError:
        raise PipelineError(
            f"{DASK_VAR} is set but Dask is not installed: pip install -c constraints.txt "
            "-e '.[cluster]'"
        ) from None
    shown = redact(value)
    example = "like tcp://127.0.0.1:8786"
    scheme = value.split("://")[0].lower() if "://" in value else "tcp"
    if scheme in ("http", "https"):
        raise PipelineError(
            f"{DASK_VAR}: {shown!r} is a web address (the Dask dashboard's?); give the "
            f"scheduler's address, {example}"
        )
    if scheme not in ("tcp", "tls"):
        raise PipelineError(
            f"{DASK_VAR}: the scheme {scheme}:// is not supported here; give a tcp:// or tls:// "
            f"scheduler address, {example}"
        )
    if "@" in value:
        raise PipelineError(
            f"{DASK_VAR}: a scheduler address carries no credentials ({shown!r}); Dask "
            "authenticates with TLS certificates (tls://, docs/cluster.md)"
        )
    try:
        host, _port = parse_host_port(parse_address(value)[1])
        if not host:
            raise ValueError("no host")
    except ValueError as exc:
        raise PipelineError(
            f"{DASK_VAR}: not a scheduler address {example} ({shown!r}: {scrub(str(exc))})"
        ) from None
    security = Security()
    if scheme == "tcp" and security.require_encryption:
        raise PipelineError(
            f"{DASK_VAR}: Dask's config requires encryption (distributed.comm.require-encryption)"
            f"; give the scheduler's tls:// address, not {shown}"
        )
    if scheme == "tls":
        if not (security.tls_ca_file and security.tls_client_cert):
            raise PipelineError(
                f"{DASK_VAR}: {shown} needs Dask's TLS settings: a CA file and a client "
                'certificate and key in Dask\'s config (docs/cluster.md, "Dask over TLS")'
            )
        for path in (security.tls_ca_file, security.tls_client_cert, security.tls_client_key):
            if path and not os.access(path, os.R_OK):
                raise PipelineError(f"{DASK_VAR}: cannot read {path}, named in Dask's TLS settings")
    return value


class StaleWorkerError(RuntimeError):
    """Raised on a worker whose trial code differs from the driver's."""


def connect_dask(address: str, family: str) -> Client:
    """A client of the scheduler whose workers run this very code; one line if not. Dask's logs
    (a traceback per failed reconnection) are silenced: the stage reports a lost scheduler."""
    from distributed import Client

    for name in [*logging.root.manager.loggerDict, "distributed"]:
        if name.split(".")[0] == "distributed":  # Dask's config sets levels per logger
            logging.getLogger(name).setLevel(logging.CRITICAL)

    with announced(f"the Dask scheduler at {address} ({DASK_VAR})"):
        _wait_for_scheduler(address)
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise PipelineError(
            f"{DASK_VAR}: cannot reach the Dask scheduler at {address} ({type(exc).__name__})"
        ) from None
    try:
        _check_workers(client, address, family)
    except BaseException:  # a stop request too: close now, not in a 30-s `__del__`
        client.close(timeout=2)
        raise
    return client


def _wait_for_scheduler(address: str) -> None:
    """Wait until the scheduler's port accepts a connection, for at most CONNECT_TIMEOUT_S (a stop
    request inside Dask's own retry loop leaves a client whose clean-up hangs for 30 s)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    host, port = parse_host_port(parse_address(address)[1])
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"{DASK_VAR}: cannot reach the Dask scheduler at {address} "
                    f"({type(exc).__name__} for {CONNECT_TIMEOUT_S} s)"
                ) from None
            time.sleep(0.2)


def _check_workers(client: Client, address: str, family: str) -> None:
    """At least one worker, and every worker runs this very code; one line if not."""
    try:
        with announced(f"a worker to join the Dask scheduler at {address}"):
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
    except TimeoutError:
        raise PipelineError(
            f"{DASK_VAR}: the Dask scheduler at {address} has no workers; start some with "
            f"`dask worker {address}`"
        ) from None
    try:
        theirs = client.run(this_process_identity, family)
    except Exception as exc:  # a worker that cannot even import the code
        raise PipelineError(
            f"{DASK_VAR}: the workers at {address} cannot run the trial code "
            f"({type(exc).__name__}: {exc}); install this project on them"
        ) from None
    ours = this_process_identity(family)
    stale = sorted(worker for worker, digest in theirs.items() if digest != ours)
    if stale:
        raise PipelineError(
            f"{DASK_VAR}: {len(stale)} worker(s) at {address} run other trial code than this "
            f"checkout (e.g. {stale[0]}); start them from the same version of the project"
        )


def evaluate_on_worker(task: TrialTask, data: TrainingData, digest: str) -> TrialOutcome:
    """A Dask task: the trial with as many threads per fit as this worker gives each task."""
    if this_process_identity(data.family) != digest:
        raise StaleWorkerError(
            "a worker runs other trial code than the driver; start every worker from the same "
            "version of the project"
        )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per pruner probe
    return evaluate_trial(task, data, _fit_threads_on_worker())


def _fit_threads_on_worker() -> int:
    # A Dask nanny sets OMP_NUM_THREADS=1 in its workers: one thread per task slot.
    configured = os.environ.get("OMP_NUM_THREADS", "")
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    from distributed import get_worker

    return max(1, available_cores() // get_worker().state.nthreads)


def _pass_through(data: TrainingData) -> TrainingData:
    return data
