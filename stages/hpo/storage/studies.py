"""The Optuna study store: SQLite in outputs/optuna_store.db by default, or OPTUNA_STORAGE; one
tune process at a time per study (`hold_study`); and the DVC output copy of the run's trials."""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import hashlib
import os
import socket
import sqlite3
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
import sqlalchemy
from optuna.distributions import BaseDistribution
from optuna.exceptions import StorageInternalError
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from hpo import paths
from hpo.errors import MOVE_STORE_ASIDE, REBUILD, PipelineError, file_error
from hpo.redaction import redact, scrub, secrets_of, userinfo
from hpo.sqlite import check_intact
from hpo.waits import announced

STORAGE_VAR = "OPTUNA_STORAGE"
# Seconds a writer waits for SQLite's lock before "database is locked".
LOCK_TIMEOUT_S = 60
# Seconds to reach a database server, and to wait for a study another process is running.
CONNECT_TIMEOUT_S = 10
HOLD_TIMEOUT_S = 10
# Who holds a study's advisory lock: the application name of the connection holding it.
_HOLDER = sqlalchemy.text(
    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted"
    " AND (l.classid::text::bigint << 32) + l.objid::text::bigint = :key"
)


def storage_url_from_environment() -> URL | None:
    """OPTUNA_STORAGE checked for form: a PostgreSQL URL or a SQLite file; None for the default."""
    value = os.environ.get(STORAGE_VAR, "").strip()
    if not value:
        return None
    try:
        url = make_url(value)
    except (ArgumentError, ValueError):
        url = None
    if url is None or not url.drivername:
        raise PipelineError(
            f"{STORAGE_VAR}: not a database URL like postgresql://db.example:5432/hpo "
            f"(got {redact(value)!r})"
        )
    if url.get_backend_name() == "sqlite":
        return _sqlite_file(url, value)
    if url.get_backend_name() != "postgresql":
        raise PipelineError(
            f"{STORAGE_VAR}: the study can live in PostgreSQL or SQLite, got {redact(value)!r}"
        )
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
    if not url.database or url.database == ":memory:":
        shown = redact(value)
        raise PipelineError(f"{STORAGE_VAR}: a SQLite study needs a file path, got {shown!r}")
    path = Path(url.database)
    if not path.parent.is_dir():
        raise PipelineError(f"{STORAGE_VAR}: folder {path.parent} does not exist")
    if path.resolve() == paths.STUDY_COPY.resolve():
        raise PipelineError(
            f"{STORAGE_VAR}: {paths.STUDY_COPY} is the tune stage's output, rewritten by every "
            f"run; name another file, or unset it for the default store {paths.STUDY_STORE}"
        )
    return None if path.resolve() == paths.STUDY_STORE.resolve() else url


def label(url: URL | None) -> str:
    """How messages name the study store: its file, or the variable and its redacted URL."""
    if url is None:
        return str(paths.STUDY_STORE)
    return f"{STORAGE_VAR} {redact(url.render_as_string(hide_password=False))}"


def open_storage_url(url: URL | None) -> RDBStorage:
    """The storage at `url` (None: the default store), reached within seconds; one line if not."""
    if url is None:
        return open_storage(paths.STUDY_STORE, MOVE_STORE_ASIDE)
    if url.get_backend_name() == "sqlite":
        return open_storage(Path(url.database), MOVE_STORE_ASIDE)
    typed = url.render_as_string(hide_password=False)
    engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    with _reaching(url):
        return RDBStorage(typed, engine_kwargs=engine_kwargs)


@contextlib.contextmanager
def _reaching(url: URL) -> Iterator[None]:
    """Reach the database server at `url`: a long wait says so, a failure is one line."""
    typed = url.render_as_string(hide_password=False)
    try:
        with announced(f"the study database at {redact(typed)} ({STORAGE_VAR})"):
            yield
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as exc:
        reason = scrub(" ".join(str(exc).split("\n")[0].split()), secrets_of(typed))
        raise PipelineError(f"{STORAGE_VAR}: cannot open {redact(typed)}: {reason}") from None


def open_storage(path: Path, remedy: str = REBUILD) -> RDBStorage:
    """RDB storage on a SQLite file in WAL mode (readers never block the writer); one line naming
    a file that cannot be used (damaged, a folder, read-only, locked too long)."""
    try:
        check_intact(path)
        engine_kwargs = {"connect_args": {"timeout": LOCK_TIMEOUT_S}}
        storage = RDBStorage(f"sqlite:///{path}", engine_kwargs=engine_kwargs)
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


@contextlib.contextmanager
def hold_study(url: URL | None, name: str) -> Iterator[str]:
    """Run study `name` alone (a second tune process waits up to HOLD_TIMEOUT_S, then names the
    holder); yields who holds it now. On PostgreSQL an advisory lock per study, held by a
    connection (it ends with the process, on any host); on SQLite a lock on the whole store,
    taken before it is opened."""
    me = f"tune process {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
    if url is not None and url.get_backend_name() == "postgresql":
        key = {"key": int.from_bytes(hashlib.sha256(name.encode()).digest()[:7])}
        # The lock's connection carries who holds it, for the one line a second process gives.
        connect = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": me[:63]}
        engine = sqlalchemy.create_engine(url, connect_args=connect)
        connections: list[sqlalchemy.Connection] = []
        try:
            with _reaching(url):
                connections += [engine.connect(), engine.connect()]  # the lock's, and a probe
                try_lock = sqlalchemy.text("SELECT pg_try_advisory_lock(:key)")
                _wait_for(lambda: connections[0].execute(try_lock, key).scalar(),
                          lambda: connections[1].execute(_HOLDER, key).scalar(),
                          label(url), name)  # fmt: skip
            yield me
        finally:
            for connection in connections:  # a server that is gone cannot be told
                with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):
                    connection.close()
            engine.dispose()
        return
    store = paths.STUDY_STORE if url is None else Path(url.database)
    store.parent.mkdir(parents=True, exist_ok=True)
    # By hand, not with filelock: it truncates the file at each try, which would erase who
    # holds the lock. The OS releases it when this process ends, however it ends.
    try:
        descriptor = os.open(f"{store}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise file_error(store, exc, "tune needs to write in its folder") from None
    try:
        _wait_for(lambda: _try_flock(descriptor), lambda: os.pread(descriptor, 300, 0).decode(),
                  str(store), name)  # fmt: skip
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, me.encode(), 0)
        yield me
    finally:
        os.close(descriptor)


def _try_flock(descriptor: int) -> bool:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _wait_for(acquired: Any, holder: Any, store: str, name: str) -> None:
    deadline = time.monotonic() + HOLD_TIMEOUT_S
    with announced(f"study {name}, which another tune process is running"):
        while not acquired():
            if time.monotonic() > deadline:
                raise PipelineError(
                    f"{store}: study {name} is being tuned by {holder() or 'another process'}; "
                    "wait for it to end, or stop it (its finished trials are kept)"
                )
            time.sleep(0.2)


def best_configurations(
    url: URL | None, study_name: str, n_best: int, space: dict[str, BaseDistribution]
) -> list[dict[str, Any]]:
    """The `n_best` complete trials of an earlier study in the store, best first, each cut to
    the values `space` can take (a widened bound keeps them all, a new hyperparameter is left to
    the sampler), repeats dropped: configurations for a new study to evaluate first."""
    storage = open_storage_url(url)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            names = [s.study_name for s in storage.get_all_studies()]
            close = difflib.get_close_matches(study_name, names, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]}?)" if close else f" ({len(names)} studies there)"
            raise PipelineError(
                f"tune.warm_start.study: no study {study_name!r} in {label(url)}{hint}"
            ) from None
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        maximize = study.direction.name == "MAXIMIZE"
        ranked = sorted(complete, key=lambda t: -t.value if maximize else t.value)
    finally:
        close_storage(storage)
    configs: list[dict[str, Any]] = []
    for trial in ranked:
        config = in_space(trial.params, space)
        if config and config not in configs:
            configs.append(config)
    return configs[:n_best]


def in_space(config: dict[str, Any], space: dict[str, BaseDistribution]) -> dict[str, Any]:
    """The values of `config` that `space` can take, each as its distribution gives it (an int
    is a float in a float dimension): an enqueued trial must hold what a stored one reads back."""
    taken = {}
    for name, value in config.items():
        distribution = space.get(name)
        try:
            internal = None if distribution is None else distribution.to_internal_repr(value)
        except (ValueError, TypeError):
            continue
        if internal is not None and distribution._contains(internal):
            taken[name] = distribution.to_external_repr(internal)
    return taken


def load_or_create(storage: RDBStorage, name: str, direction: str, metric: str) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, load_if_exists=True
    )
    if study.metric_names is None:
        _name_objective(study, metric)
    return study


def _name_objective(study: optuna.Study, metric: str) -> None:
    """Name the objective, so the Optuna dashboard labels its axes "cv_mse", not "Objective 0"."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([f"cv_{metric}"])


def write_study_file(study: optuna.Study, trials: list[FrozenTrial], path: Path) -> None:
    """Replace `path` with a SQLite study of `trials` (the DVC output): written aside, renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".partial*"):  # left by a killed copy
        stale.unlink()
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    target = open_storage(partial)
    try:
        copy = optuna.create_study(
            storage=target, study_name=study.study_name, direction=study.direction
        )
        _name_objective(copy, study.metric_names[0].removeprefix("cv_"))
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        copy.add_trials(trials)
    except (OSError, sqlalchemy.exc.SQLAlchemyError) as exc:
        raise file_error(path, exc, "free the space or the permission and rerun") from None
    finally:
        close_storage(target)
    for suffix in ("-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    os.replace(partial, path)
