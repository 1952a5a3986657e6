"""The Optuna study store: SQLite in outputs/optuna_store.db by default, or OPTUNA_STORAGE.

Either way a study is named by what shapes its trials, opened safely for several writers,
and kept across runs and experiments; the tune stage leaves outputs/optuna_study.db, its
DVC output, as a copy of the trials this run's budget takes from the study.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial
from sqlalchemy.engine import URL

from hpo.errors import MOVE_STORE_ASIDE, REBUILD, PipelineError, file_error
from hpo.redaction import redact, scrub, secrets_of
from hpo.storage.settings import STORAGE_VAR
from hpo.storage.sqlite import check_intact, process_lock
from hpo.waits import announced

# The objective's name in the study (the mean k-fold CV MSE that trials minimise).
OBJECTIVE_NAME = "cv_mse"
# Seconds a writer waits for SQLite's lock before "database is locked"; a second tune process
# on the same study waits its turn instead of failing.
LOCK_TIMEOUT_S = 60
# Seconds to reach a database server before giving up with one line.
CONNECT_TIMEOUT_S = 10
# The PostgreSQL advisory lock that tune processes on any host take around ask and tell.
_ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"optuna-mlflow-pipeline").digest()[:7])


def open_study_storage(url: URL | None, default: Path) -> RDBStorage:
    """The storage named by OPTUNA_STORAGE, or the SQLite file `default`; one line if unusable."""
    if url is None:
        return open_storage(default, MOVE_STORE_ASIDE)
    return open_storage_url(url)


def open_storage_url(url: URL) -> RDBStorage:
    """The storage at `url`: a SQLite file, or a database server reached within seconds."""
    if url.get_backend_name() == "sqlite":
        try:
            return open_storage(Path(url.database))
        except (OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
            reason = " ".join(str(exc).split("\n")[0].split())
            raise PipelineError(f"{STORAGE_VAR}: cannot open {url.database}: {reason}") from None
    engine_kwargs = {
        "pool_pre_ping": True,
        "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
    }
    typed = url.render_as_string(hide_password=False)
    try:
        # Two processes creating the tables at once fail: create them under the lock.
        engine = sqlalchemy.create_engine(url, **engine_kwargs)
        try:
            waiting = announced(f"the study database at {redact(typed)} ({STORAGE_VAR})")
            with waiting, _advisory_lock(engine):
                return RDBStorage(typed, engine_kwargs=engine_kwargs)
        finally:
            engine.dispose()
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        reason = scrub(" ".join(str(exc).split("\n")[0].split()), secrets_of(typed))
        raise PipelineError(f"{STORAGE_VAR}: cannot open {redact(typed)}: {reason}") from None


def open_storage(path: Path, remedy: str = REBUILD) -> RDBStorage:
    """RDB storage on a SQLite file in WAL mode (readers never block the writer).

    Opened under the file's process lock: two processes creating the tables at once fail.
    A file that cannot be used (damaged, a folder, read-only, locked too long) gives one line
    naming it, with `remedy`.
    """
    try:
        check_intact(path)
        with process_lock(path):
            storage = RDBStorage(
                f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": LOCK_TIMEOUT_S}}
            )
    except (OSError, sqlite3.Error, sqlalchemy.exc.SQLAlchemyError, StorageInternalError) as exc:
        raise file_error(path, exc, remedy) from None
    sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
    storage.engine.dispose()  # drop connections opened before the listener existed
    return storage


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # With WAL, NORMAL never corrupts the database; a power cut may lose the last commits only.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def close_storage(storage: RDBStorage) -> None:
    """Close every connection so SQLite folds the WAL back into the one .db file."""
    storage.remove_session()
    storage.engine.dispose()


def load_or_create(storage: RDBStorage, name: str) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=name, direction="minimize", load_if_exists=True
    )
    if study.metric_names is None:
        _name_objective(study)
    return study


def _name_objective(study: optuna.Study) -> None:
    """Name the objective, so the Optuna dashboard labels its axes "cv_mse", not "Objective 0".
    (Study metadata only: the sampler and the trials do not see it.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE_NAME])


@contextlib.contextmanager
def study_lock(storage: RDBStorage) -> Iterator[None]:
    """An exclusive lock among tune processes sharing the storage, held around ask and tell.

    Held while creating the study, and while checking the trial budget and asking, so that
    workers sharing a study never ask more than n_trials trials between them. On PostgreSQL it
    is an advisory lock, which holds across hosts; on SQLite a file lock beside the database.
    """
    if storage.engine.dialect.name == "sqlite":
        with process_lock(Path(storage.engine.url.database)):
            yield
        return
    with _advisory_lock(storage.engine):
        yield


@contextlib.contextmanager
def _advisory_lock(engine: sqlalchemy.Engine) -> Iterator[None]:
    """PostgreSQL's session-level advisory lock, on a connection of its own."""
    key = {"key": _ADVISORY_LOCK_KEY}
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
        try:
            yield
        finally:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)


def write_study_file(study: optuna.Study, trials: list[FrozenTrial], path: Path) -> None:
    """Replace `path` with a SQLite study holding `trials`: the stage's DVC output, the run's
    first trials taken from a store that may hold more. Written beside it and renamed, so a
    reader never sees half a file. Call it under `study_lock`: two tune processes sharing the
    study write it one after the other."""
    for stale in path.parent.glob(path.name + ".partial*"):  # left by a killed copy
        stale.unlink()
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    target = open_storage(partial)
    try:
        copy = optuna.create_study(
            storage=target, study_name=study.study_name, direction="minimize"
        )
        _name_objective(copy)
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        copy.add_trials(trials)
    finally:
        close_storage(target)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(partial, path)
    Path(str(partial) + ".lock").unlink(missing_ok=True)
