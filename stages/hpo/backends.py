"""Where trials run and where the study and the runs are kept: environment, not params.yaml.

Each setting is the variable its own tool already reads, so nothing new is invented and
params.yaml stays about the experiment:

* DASK_SCHEDULER_ADDRESS (Dask): trials run on that cluster; unset, on local threads.
* OPTUNA_STORAGE (Optuna's CLI): the study lives in that database; unset, outputs/optuna_study.db.
* MLFLOW_TRACKING_URI (MLflow): runs go to that server or database; unset, outputs/mlflow.db.

None of them is part of the study's identity or a DVC dependency: where a study runs never
changes what it finds. URLs may carry passwords: only `redact`ed forms are ever shown or logged.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hpo.errors import PipelineError

DASK_VAR = "DASK_SCHEDULER_ADDRESS"
STORAGE_VAR = "OPTUNA_STORAGE"
TRACKING_VAR = "MLFLOW_TRACKING_URI"

# MLflow tracking URIs this pipeline knows how to use: a server, or a database it writes itself.
_TRACKING_SCHEMES = {"http", "https", "sqlite", "postgresql", "mysql", "mssql"}


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
    value = _get(TRACKING_VAR)
    if value is None:
        return None
    parts = urlsplit(value)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme not in _TRACKING_SCHEMES:
        raise PipelineError(
            f"{TRACKING_VAR}: expected an http(s):// MLflow server or a database URL, "
            f"got {redact(value)!r}"
        )
    if scheme.startswith("http") and not parts.hostname:
        raise PipelineError(f"{TRACKING_VAR}: no host in {redact(value)!r}")
    if scheme.startswith("http"):
        try:
            parts.port  # noqa: B018 - raises for a port that is not a number
        except ValueError:
            raise PipelineError(f"{TRACKING_VAR}: bad port in {redact(value)!r}") from None
    return value


def redact(value: str) -> str:
    """The URL with any password replaced by ***, safe to print and to log."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", value)


def scrub(text: str, secret_source: str | URL | None) -> str:
    """`text` with the password of `secret_source` (if any) removed: for third-party errors."""
    if secret_source is None:
        return text
    url = secret_source if isinstance(secret_source, URL) else _try_url(secret_source)
    password = url.password if url is not None else None
    return text.replace(password, "***") if password else text


def _get(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _dask_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        raise PipelineError(
            f"{DASK_VAR} is set but Dask is not installed: pip install -c constraints.txt "
            "-e '.[cluster]'"
        ) from None
    try:
        scheme, location = parse_address(value)
        if scheme in ("tcp", "tls"):
            host, _port = parse_host_port(location)
            if not host:
                raise ValueError("no host")
    except ValueError as exc:
        raise PipelineError(
            f"{DASK_VAR}: not a scheduler address like tcp://127.0.0.1:8786 "
            f"({redact(value)!r}: {exc})"
        ) from None
    return value


def _storage_url(value: str | None) -> URL | None:
    if value is None:
        return None
    url = _try_url(value)
    if url is None or not url.drivername:
        raise PipelineError(
            f"{STORAGE_VAR}: not a database URL like postgresql://user:password@host/db "
            f"(got {redact(value)!r})"
        )
    if url.get_backend_name() not in ("postgresql", "sqlite"):
        raise PipelineError(
            f"{STORAGE_VAR}: the study can live in PostgreSQL or SQLite, got {redact(value)!r}"
        )
    if url.get_backend_name() != "sqlite" and not url.host:
        raise PipelineError(f"{STORAGE_VAR}: no host in {redact(value)!r}")
    return url


def _try_url(value: str) -> URL | None:
    try:
        return make_url(value)
    except (ArgumentError, ValueError):
        return None
