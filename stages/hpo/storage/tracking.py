"""The MLflow store: connecting to it, provenance tags, params, and the final model's run.

Everything goes through `MlflowClient` with explicit run ids: MLflow's active run is
thread-local, so the fluent API cannot nest runs reliably across worker threads. The store is
SQLite (outputs/mlflow.db) with artifacts in outputs/mlruns; the pipeline only appends to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import subprocess
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import requests
import sqlalchemy
from mlflow.entities import Experiment, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    RESOURCE_ALREADY_EXISTS,
    ErrorCode,
)
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from hpo.errors import MOVE_STORE_ASIDE, PipelineError, file_error
from hpo.paths import MLFLOW_ARTIFACTS, MLFLOW_DB
from hpo.redaction import redact, scrub
from hpo.storage.settings import TRACKING_VAR, tracking_uri_from_environment
from hpo.storage.sqlite import check_intact, process_lock
from hpo.trial import model
from hpo.waits import announced

EXPERIMENT = "xgboost-california-housing"
REGISTERED_MODEL = "xgboost-california-housing"
# Model version tag: sha256 of the model's bytes, so that the same model is registered once.
MODEL_DIGEST_TAG = "model_sha256"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# MLflow logs each database error of its SQL store with a traceback, then raises it; the stage
# reports what it raises in one line (a locked store, errors.run_stage), so the log only adds
# a traceback to that line.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def tracking_uri(db: Path = MLFLOW_DB) -> str:
    return f"sqlite:///{db.resolve()}"


def connect(db: Path = MLFLOW_DB, artifacts: Path = MLFLOW_ARTIFACTS) -> tuple[MlflowClient, str]:
    """The client and the experiment id; creates store and experiment on first use.

    The store is MLFLOW_TRACKING_URI when set (a server keeps its own artifacts), else the
    SQLite file `db`. Call it in the main thread before any worker starts: a new SQLite store
    runs its migrations on first use, which must not happen in two threads at once.
    """
    remote = tracking_uri_from_environment()
    if remote is not None:
        return _connect_remote(remote)
    try:
        # A second tune process may start at the same time: the store is created under a lock.
        check_intact(db)
        with process_lock(db):
            with contextlib.closing(sqlite3.connect(db)) as connection:
                # Persistent in the file: commits append to a log instead of rewriting pages,
                # and `mlflow ui` can read while a stage writes.
                connection.execute("PRAGMA journal_mode=WAL")
            client = MlflowClient(tracking_uri=tracking_uri(db))
            experiment = client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                artifacts.mkdir(parents=True, exist_ok=True)
                experiment_id = client.create_experiment(EXPERIMENT)
                _make_artifact_location_relative(db, experiment_id, artifacts)
                experiment = client.get_experiment(experiment_id)
            _open_on_training_runs(client, experiment)
            return client, experiment.experiment_id
    except (OSError, sqlite3.Error, MlflowException, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise file_error(db, exc, MOVE_STORE_ASIDE) from None


def bound_http_waits() -> None:
    """Bound MLflow's own retry settings for the calls a stage waits on, unless the user set
    them: by default MLflow retries a failing request 7 times with exponential backoff and
    waits 120 s for each answer, which kept a stage silent for minutes in front of a server
    whose database was down. With these a failing server is reported within about 45 s."""
    for name, value in HTTP_WAIT_BOUNDS.items():
        if name not in os.environ:
            os.environ[name] = value
            BOUNDED_HERE.add(name)


# MLflow's variables and the bounds `bound_http_waits` gives them: 4 tries 10 s each, 1+2+4 s
# apart. The tune stage's writer process, which records trials while the driver goes on,
# keeps MLflow's own patient defaults for those it did not get from the user (BOUNDED_HERE):
# a server restarted mid-run is waited for, not given up on.
HTTP_WAIT_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
BOUNDED_HERE: set[str] = set()


def _connect_remote(uri: str) -> tuple[MlflowClient, str]:
    """The server's client and experiment, or one line within a minute (`bound_http_waits`).
    Called before the stage writes anything."""
    # MLflow prints the run's URL on stdout each time a run ends: a line per trial.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    bound_http_waits()
    with announced(f"the MLflow server at {redact(uri)} ({TRACKING_VAR})"):
        return _open_experiment(uri)


def _open_experiment(uri: str) -> tuple[MlflowClient, str]:
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    verify = False if insecure else os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True
    try:
        parts = urlsplit(uri)  # the server's /health, under its path prefix if it has one
        health = parts._replace(path=parts.path.rstrip("/") + "/health", fragment="").geturl()
        requests.get(health, timeout=10, verify=verify).raise_for_status()
    except requests.RequestException as exc:
        text = " ".join(str(exc).split())
        cause = re.search(r"\[Errno -?\d+\] ([^'\")]+)", text)  # what the socket said
        reason = cause.group(1) if cause else scrub(text)[:300]
        raise PipelineError(
            f"{TRACKING_VAR}: cannot reach the MLflow server at {redact(uri)} ({reason})"
        ) from None
    client = MlflowClient(tracking_uri=uri)
    try:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            try:
                client.create_experiment(EXPERIMENT)
            except MlflowException as error:  # another driver created it just now
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            experiment = client.get_experiment_by_name(EXPERIMENT)
        _open_on_training_runs(client, experiment)
        return client, experiment.experiment_id
    except (MlflowException, requests.RequestException) as exc:
        reason = _refusal(uri, exc)
        raise PipelineError(f"{TRACKING_VAR}: {redact(uri)} refused: {reason}") from None


def _refusal(uri: str, exc: Exception) -> str:
    """What to do about a server that answers /health but refuses the API, where the cause is
    known (its host check, its basic-auth app); else MLflow's own text."""
    text = " ".join(str(exc).split())
    if "Invalid Host header" in text:
        host = urlsplit(uri).netloc.rpartition("@")[2]
        return f"it does not accept the host name {host}; start it with --allowed-hosts {host}"
    if "error code 401" in text or "UNAUTHENTICATED" in text:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if user is None:
            return "it asks for a login; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        return (
            f"it refused the login of user {user!r}; "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if ("error code 403" in text and "Permission denied" in text) or "PERMISSION_DENIED" in text:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
        return (
            f"user {user!r} may not use experiment {EXPERIMENT!r}; "
            "an MLflow admin can grant EDIT on it"
        )
    return scrub(text)[:300]


def _open_on_training_runs(client: MlflowClient, experiment: Experiment) -> None:
    """Mark the experiment as model training, for new and existing stores alike.

    MLflow 3's UI reads this tag (`mlflow.experimentKind`) to open an experiment on its runs
    table rather than on the GenAI overview, unless its GenAI / Model training switch is on;
    in 3.17 the switch is always on and a per-browser setting decides, which the README's link
    sets with `?workflowType=machine_learning` (docs/ui_check.py checks that view).
    """
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def _make_artifact_location_relative(db: Path, experiment_id: str, artifacts: Path) -> None:
    """Store the experiment's artifact root as the relative path `outputs/mlruns`.

    MLflow's API always records an absolute path (`SqlAlchemyStore.create_experiment` passes
    every local location through `resolve_uri_if_local`, and no setting turns that off), so a
    store written in a container at /app/outputs would point nowhere on the host, and a clone
    moved elsewhere would lose its artifacts. Runs and logged models inherit the experiment's
    root, and MLflow resolves a relative root against the working directory: the project root
    for every stage and for `mlflow ui` as the README starts it. This one UPDATE of MLflow's
    own table is the only write outside its API; tests/test_tracking.py fails if MLflow's
    schema or resolution changes under it.
    """
    try:
        with contextlib.closing(sqlite3.connect(db)) as connection, connection:
            updated = connection.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (artifacts.as_posix(), int(experiment_id)),
            ).rowcount
    except sqlite3.Error as exc:
        updated, reason = 0, str(exc)
    else:
        reason = "no such experiment row"
    if updated != 1:
        raise PipelineError(
            f"{db}: cannot make the artifact root relative ({reason}); this MLflow version's "
            "store schema is not the one the pipeline knows"
        )


# Provenance tags that a run gets only when they are known (a git checkout, `dvc exp run`).
DVC_EXP_TAG = "dvc_exp_name"
OPTIONAL_PROVENANCE = frozenset({MLFLOW_GIT_COMMIT, DVC_EXP_TAG})


def provenance_tags(params: dict[str, Any]) -> dict[str, str]:
    """Tags that lead from a run back to the code and params that produced it."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    tags = {"params_hash": hashlib.sha256(canonical.encode()).hexdigest()[:16]}
    commit = _git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags[DVC_EXP_TAG] = os.environ["DVC_EXP_NAME"]
    return tags


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def log_params_flat(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log nested params as dotted keys (tune.search_space.max_depth.low = 3)."""
    flat = pd.json_normalize(params, sep=".").iloc[0]
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in flat.items()])


def serving_requirements() -> list[str]:
    """What serving the model needs, pinned to the versions that trained it.

    Given explicitly because MLflow would otherwise infer them by loading the model in a new
    interpreter, which takes about 5 s of every train_best run.
    """
    return [f"{name}=={version(name)}" for name in model.SERVING_DISTRIBUTIONS]


def log_final_model(
    client: MlflowClient,
    experiment_id: str,
    booster: Any,
    x_example: Any,
    params: dict[str, Any],
    study_run_id: str,
    study_name: str,
) -> dict[str, Any]:
    """Log the refit model with signature and input example, registered in the model registry.

    A model whose bytes are already registered (train_best rerun on the same study) is not
    logged again: its existing run and version are returned.
    """
    import mlflow
    from mlflow.models import infer_signature

    digest = hashlib.sha256(model.model_bytes(booster)).hexdigest()
    known = client.search_model_versions(
        f"name = '{REGISTERED_MODEL}' and tags.{MODEL_DIGEST_TAG} = '{digest}'"
    )
    if known:
        version = min(known, key=lambda v: int(v.version))
        return _model_info(version.run_id, version.source, version.version)
    tags = provenance_tags(params)
    run = client.create_run(
        experiment_id,
        run_name=f"final-model {study_name}",
        tags={
            "study_parent_run_id": study_run_id,
            "hpo.executor": "local-process",  # the refit runs in the stage's own process
            **tags,
        },
    )
    run_id = run.info.run_id
    log_params_flat(client, run_id, params)
    mlflow.set_tracking_uri(client.tracking_uri)
    example = x_example.head(5)
    with mlflow.start_run(run_id=run_id):
        info = model.log_to_mlflow(
            booster,
            name="model",
            signature=infer_signature(example, model.predict(booster, example)),
            input_example=example,
            registered_model_name=REGISTERED_MODEL,
            pip_requirements=serving_requirements(),
        )
    version = str(info.registered_model_version)
    client.set_model_version_tag(REGISTERED_MODEL, version, MODEL_DIGEST_TAG, digest)
    client.update_model_version(
        REGISTERED_MODEL,
        version,
        description=f"Refit on the best params of study {study_name} "
        f"(params_hash {tags['params_hash']}, model sha256 {digest[:12]})",
    )
    return _model_info(run_id, info.model_uri, version)


def _model_info(run_id: str, model_uri: str, version: str | int) -> dict[str, Any]:
    return {
        "mlflow_run_id": run_id,
        "model_uri": model_uri,
        "registered_model": REGISTERED_MODEL,
        "registered_model_version": int(version),
    }


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
