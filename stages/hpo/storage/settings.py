"""Where trials run and where the study and the runs are kept: environment, not params.yaml.

Each setting is the variable its own tool already reads, so nothing new is invented and
params.yaml stays about the experiment:

* DASK_SCHEDULER_ADDRESS (Dask): trials run on that cluster; unset, on local threads.
* OPTUNA_STORAGE (Optuna's CLI): the study lives in that database; unset, outputs/optuna_store.db.
* MLFLOW_TRACKING_URI (MLflow): runs go to that server or database; unset, outputs/mlflow.db.

None of them is part of the study's identity or a DVC dependency: where a study runs never
changes what it finds. URLs may carry passwords: only `redact`ed forms are ever shown
(hpo.redaction).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hpo.errors import PipelineError
from hpo.paths import STUDY_DB, STUDY_STORE
from hpo.redaction import redact, scrub, userinfo

DASK_VAR = "DASK_SCHEDULER_ADDRESS"
STORAGE_VAR = "OPTUNA_STORAGE"
TRACKING_VAR = "MLFLOW_TRACKING_URI"


@dataclass(frozen=True)
class Backends:
    dask_address: str | None
    study_storage: URL | None
    tracking_uri: str | None


def from_environment() -> Backends:
    """The three settings, checked for form (not reachability) before any stage does work."""
    return Backends(
        dask_address=_dask_address(_get(DASK_VAR)),
        study_storage=_storage_url(_get(STORAGE_VAR)),
        tracking_uri=tracking_uri_from_environment(),
    )


def tracking_uri_from_environment() -> str | None:
    """An MLflow server's http(s) URL. Credentials go in MLflow's own variables, never in the
    URL: MLflow prints a tracking URL on every finished run."""
    value = _get(TRACKING_VAR)
    if value is None:
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


def _get(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _dask_address(value: str | None) -> str | None:
    """A Dask scheduler's tcp:// or tls:// address; tls:// only with Dask's TLS settings."""
    if value is None:
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
        _scheme, location = parse_address(value)
        host, _port = parse_host_port(location)
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


def _storage_url(value: str | None) -> URL | None:
    if value is None:
        return None
    url = _try_url(value)
    if url is None or not url.drivername:
        raise PipelineError(
            f"{STORAGE_VAR}: not a database URL like postgresql://db.example:5432/hpo "
            f"(got {redact(value)!r})"
        )
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise PipelineError(
            f"{STORAGE_VAR}: the study can live in PostgreSQL or SQLite, got {redact(value)!r}"
        )
    if url.get_backend_name() == "sqlite":
        return _sqlite_file(url, value)
    typed = userinfo(value)
    if typed is not None:  # SQLAlchemy must read the user and password that were typed
        user, colon, password = typed.partition(":")
        if (url.username, url.password) != (unquote(user), unquote(password) if colon else None):
            raise PipelineError(
                f"{STORAGE_VAR}: the password has a raw @ or another reserved character in it "
                f"({redact(value)!r}); URL-quote it, or leave it out of the URL and put it in "
                "~/.pgpass (docs/cluster.md)"
            )
    if not url.host:
        raise PipelineError(f"{STORAGE_VAR}: no host in {redact(value)!r}")
    return url


def _sqlite_file(url: URL, value: str) -> URL | None:
    """A SQLite study store; None for the default store itself."""
    if not url.database or url.database == ":memory:":
        raise PipelineError(f"{STORAGE_VAR}: a SQLite study needs a file path, got {value!r}")
    path = Path(url.database)
    if not path.parent.is_dir():
        raise PipelineError(f"{STORAGE_VAR}: folder {path.parent} does not exist")
    if path.resolve() == STUDY_DB.resolve():
        raise PipelineError(
            f"{STORAGE_VAR}: {STUDY_DB} is the tune stage's output, rewritten by every run; "
            f"name another file, or unset it for the default store {STUDY_STORE}"
        )
    if path.resolve() == STUDY_STORE.resolve():
        return None
    return url


def _try_url(value: str) -> URL | None:
    try:
        return make_url(value)
    except (ArgumentError, ValueError):
        return None
