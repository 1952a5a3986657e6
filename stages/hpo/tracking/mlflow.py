"""The MLflow store: MLFLOW_TRACKING_URI (an `mlflow server`), else SQLite in outputs/mlflow.db;
connecting to it, names and provenance, the final model. Everything goes through `MlflowClient`
with explicit run ids (the fluent API's active run is thread-local); the pipeline only appends."""

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
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import requests
import sqlalchemy
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_GIT_COMMIT

from hpo import paths
from hpo.errors import MOVE_STORE_ASIDE, PipelineError, file_error
from hpo.redaction import redact, scrub, userinfo
from hpo.sqlite import check_intact, process_lock
from hpo.waits import announced

TRACKING_VAR = "MLFLOW_TRACKING_URI"
# Model version tag: sha256 of the model's bytes, so that the same model is registered once.
MODEL_DIGEST_TAG = "model_sha256"
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Provenance tags that a run gets only when they are known (a git checkout, `dvc exp run`).
DVC_EXP_TAG = "dvc_exp_name"
OPTIONAL_PROVENANCE = frozenset({MLFLOW_GIT_COMMIT, DVC_EXP_TAG})
# MLflow's retry settings and the bounds `bound_http_waits` gives them: 4 tries 10 s each,
# 1+2+4 s apart. The tune stage's writer process keeps MLflow's own patient defaults for those
# it did not get from the user (BOUNDED_HERE): a server restarted mid-run is waited for.
HTTP_WAIT_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
BOUNDED_HERE: set[str] = set()

# MLflow logs each SQL store error with a traceback before raising it; the stage's line suffices.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def names(family: str, data_path: str) -> str:
    """The experiment's and the registered model's name: the family and the data file's name,
    e.g. xgboost-california-housing for data/california_housing.csv.gz."""
    stem = Path(data_path).name.split(".")[0]
    return f"{family}-{re.sub(r'[^A-Za-z0-9]+', '-', stem).strip('-').lower()}"


def tracking_uri_from_environment() -> str | None:
    """An MLflow server's http(s) URL. Credentials go in MLflow's own variables, never in the
    URL: MLflow prints a tracking URL on every finished run."""
    value = os.environ.get(TRACKING_VAR, "").strip()
    if not value:
        return None
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # e.g. an IPv6 host without its closing bracket
        raise PipelineError(f"{TRACKING_VAR}: not a URL ({redact(value)!r}: {exc})") from None
    if parts.scheme not in ("http", "https"):
        raise PipelineError(
            f"{TRACKING_VAR}: expected an MLflow server's http(s):// URL, got {redact(value)!r}"
        )
    if userinfo(value) is not None:
        raise PipelineError(
            f"{TRACKING_VAR}: put the credentials in MLFLOW_TRACKING_USERNAME and "
            f"MLFLOW_TRACKING_PASSWORD, not in the URL ({redact(value)!r})"
        )
    if not parts.hostname:
        raise PipelineError(f"{TRACKING_VAR}: no host in {redact(value)!r}")
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise PipelineError(f"{TRACKING_VAR}: bad port in {redact(value)!r}") from None
    return value


def label() -> str:
    """How messages name the tracking store: its file, or the variable and its redacted URL."""
    remote = tracking_uri_from_environment()
    return str(paths.MLFLOW_DB) if remote is None else f"{TRACKING_VAR} {redact(remote)}"


def connect(experiment: str) -> tuple[MlflowClient, str]:
    """The client and the experiment id; creates the store and the experiment on first use (in
    the main thread, before any worker starts). A new SQLite store is made in a file of its own
    and renamed into place, so one whose making failed (a full disk) is never taken for a store."""
    remote = tracking_uri_from_environment()
    if remote is not None:
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run
        bound_http_waits()
        with announced(f"the MLflow server at {redact(remote)} ({TRACKING_VAR})"):
            return _open_remote(remote, experiment)
    # A name of its own per attempt: MLflow keeps a store open per URI for the process's life.
    db, partial = paths.MLFLOW_DB, Path(f"{paths.MLFLOW_DB}.partial-{uuid.uuid4().hex[:12]}")
    try:
        check_intact(db)
        with process_lock(db):
            if not db.exists():
                for stale in db.parent.glob(f"{db.name}.partial-*"):  # a killed creation's
                    with contextlib.suppress(OSError):
                        stale.unlink()
                _open_experiment(MlflowClient(f"sqlite:///{partial.resolve()}"), experiment)
                os.replace(partial, db)
            with contextlib.closing(sqlite3.connect(db)) as connection:
                # Commits append to a log instead of rewriting pages; `mlflow ui` reads meanwhile.
                connection.execute("PRAGMA journal_mode=WAL")
            return _open_experiment(MlflowClient(f"sqlite:///{db.resolve()}"), experiment)
    except (OSError, sqlite3.Error, MlflowException, sqlalchemy.exc.SQLAlchemyError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        at_fault = exc.filename if isinstance(exc, OSError) and exc.filename else db
        raise file_error(at_fault, exc, MOVE_STORE_ASIDE) from None


def _open_experiment(client: MlflowClient, name: str) -> tuple[MlflowClient, str]:
    """The experiment `name`, created if missing (a local one with a relative artifact root)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name)
            if client.tracking_uri.startswith("sqlite:"):
                _make_artifact_location_relative(client.tracking_uri, experiment_id)
        except MlflowException as error:  # another driver created it just now
            if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise
        experiment = client.get_experiment_by_name(name)
    # Model training: MLflow 3's UI then opens it on its runs table, not the GenAI overview (in
    # 3.17 a per-browser switch decides, which the README's link sets; docs/ui_check.py checks).
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return client, experiment.experiment_id


def bound_http_waits() -> None:
    """Bound MLflow's retries, unless the user set them: its defaults (7 retries with backoff, 120 s
    per answer) kept a stage silent for minutes before a server whose database was down."""
    for name, value in HTTP_WAIT_BOUNDS.items():
        if name not in os.environ:
            os.environ[name] = value
            BOUNDED_HERE.add(name)


def _open_remote(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """The server's client and experiment, or one line within a minute, before any write."""
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
    try:
        return _open_experiment(MlflowClient(tracking_uri=uri), experiment)
    except (MlflowException, requests.RequestException) as exc:
        reason = _refusal(uri, exc, experiment)
        raise PipelineError(f"{TRACKING_VAR}: {redact(uri)} refused: {reason}") from None


def _refusal(uri: str, exc: Exception, experiment: str) -> str:
    """What to do about a server that answers /health but refuses the API, where the cause is
    known (its host check, its basic-auth app); else MLflow's own text."""
    text = " ".join(str(exc).split())
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if "Invalid Host header" in text:
        host = urlsplit(uri).netloc.rpartition("@")[2]
        return f"it does not accept the host name {host}; start it with --allowed-hosts {host}"
    if "error code 401" in text or "UNAUTHENTICATED" in text:
        if user is None:
            return "it asks for a login; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        return (
            f"it refused the login of user {user!r}; "
            "check MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    if ("error code 403" in text and "Permission denied" in text) or "PERMISSION_DENIED" in text:
        return (
            f"user {user or ''!r} may not use experiment {experiment!r}; an MLflow admin can "
            "grant EDIT on it"
        )
    return scrub(text)[:300]


def _make_artifact_location_relative(tracking_uri: str, experiment_id: str) -> None:
    """Store the experiment's artifact root as the relative `outputs/mlruns`, resolved against
    the project root: MLflow's API records an absolute path, which points nowhere once the store
    moves (written in a container, a clone moved). The only write outside MLflow's API;
    tests/test_tracking.py fails if MLflow's schema or resolution changes under it."""
    db = tracking_uri.removeprefix("sqlite:///")
    paths.MLFLOW_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(db)) as connection, connection:
            updated = connection.execute(
                "UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                (paths.MLFLOW_ARTIFACTS.as_posix(), int(experiment_id)),
            ).rowcount
        reason = "no such experiment row"
    except sqlite3.Error as exc:
        updated, reason = 0, str(exc)
    if updated != 1:
        raise PipelineError(
            f"{paths.MLFLOW_DB}: cannot make the artifact root relative ({reason}); this MLflow "
            "version's store schema is not the one the pipeline knows"
        )


def provenance_tags(params: dict[str, Any]) -> dict[str, str]:
    """Tags that lead from a run back to the code and params that produced it."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    tags = {"params_hash": hashlib.sha256(canonical.encode()).hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=10
        )
        if done.stdout.strip():
            tags[MLFLOW_GIT_COMMIT] = done.stdout.strip()
    if os.environ.get("DVC_EXP_NAME"):
        tags[DVC_EXP_TAG] = os.environ["DVC_EXP_NAME"]
    return tags


def log_params_flat(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log nested params as dotted keys (model.families.xgboost.search_space.max_depth.low)."""
    flat = pd.json_normalize(params, sep=".").iloc[0]
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()])


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])


def log_final_model(
    client: MlflowClient,
    experiment_id: str,
    model_file: Path,
    served: tuple[dict[str, Any], list[str]],
    example: tuple[pd.DataFrame, pd.DataFrame],
    params: dict[str, Any],
    study_run_id: str,
    study_name: str,
) -> dict[str, Any]:
    """Log the refit model as hpo/tracking/served.py serves it (`served`: its model_config and
    the distributions it imports), registered under the experiment's name; a model whose bytes
    are already registered returns that run and version. `example`: the training input as a
    caller sends it (a column missing in any row is optional) and the answer to its first rows."""
    import mlflow
    from mlflow.models import infer_signature

    registered = client.get_experiment(experiment_id).name
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    same_model = f"name = '{registered}' and tags.{MODEL_DIGEST_TAG} = '{digest}'"
    known = client.search_model_versions(same_model)
    if known:
        found = min(known, key=lambda v: int(v.version))
        return _model_info(found.run_id, found.source, registered, found.version)
    tags = provenance_tags(params)
    run_tags = {"study_parent_run_id": study_run_id, "hpo.executor": "local-process", **tags}
    run = client.create_run(experiment_id, run_name=f"final-model {study_name}", tags=run_tags)
    log_params_flat(client, run.info.run_id, params)
    mlflow.set_tracking_uri(client.tracking_uri)
    config, distributions = served
    library = Path(__file__).parents[1]  # the hpo package, which served.py imports
    with mlflow.start_run(run_id=run.info.run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(library / "tracking" / "served.py"),
            model_config=config,
            artifacts={"model": str(model_file)},
            code_paths=[str(library)],
            signature=infer_signature(*example),
            input_example=example[0].head(5),
            registered_model_name=registered,
            # given, not inferred: MLflow would load the model in a new interpreter (~5 s)
            pip_requirements=[f"{name}=={version(name)}" for name in distributions],
        )
    number = str(info.registered_model_version)
    client.set_model_version_tag(registered, number, MODEL_DIGEST_TAG, digest)
    client.update_model_version(
        registered, number,
        description=f"Refit on the best params of study {study_name} "
        f"(params_hash {tags['params_hash']}, model sha256 {digest[:12]})",
    )  # fmt: skip
    return _model_info(run.info.run_id, info.model_uri, registered, number)


def _model_info(run_id: str, model_uri: str, registered: str, number: str | int) -> dict[str, Any]:
    return {
        "mlflow_run_id": run_id,
        "model_uri": model_uri,
        "registered_model": registered,
        "registered_model_version": int(number),
    }
