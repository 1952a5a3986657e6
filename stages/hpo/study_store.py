"""The Optuna study in SQLite: opened safely for several writers, named by its configuration."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage

# Seconds a writer waits for SQLite's lock before "database is locked"; a second tune process
# on the same study waits its turn instead of failing.
LOCK_TIMEOUT_S = 60


def open_storage(path: Path) -> RDBStorage:
    """RDB storage on a SQLite file in WAL mode (readers never block the writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = RDBStorage(
        f"sqlite:///{path}", engine_kwargs={"connect_args": {"timeout": LOCK_TIMEOUT_S}}
    )
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


def study_name(identity: dict[str, Any]) -> str:
    """A name derived from everything that shapes the trial sequence.

    The same settings resume the same study after a crash; any change (search space, seeds,
    folds, data, code) starts a fresh study instead of mixing trials from different setups.
    """
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return "xgb-cv-" + hashlib.sha256(canonical.encode()).hexdigest()[:12]


def code_fingerprint() -> str:
    """sha256 over the source of the running stage script and every loaded hpo module.

    Part of the study's identity: after an edit to the objective, `dvc repro` must run new
    trials, not hand back the trials of the old code from the persisted study.
    """
    digest = hashlib.sha256()
    names = ["__main__", *sorted(n for n in sys.modules if n == "hpo" or n.startswith("hpo."))]
    for name in names:
        source = getattr(sys.modules[name], "__file__", None)
        if source:
            digest.update(name.encode() + b"\0" + Path(source).read_bytes())
    return digest.hexdigest()


def load_or_create(storage: RDBStorage, name: str) -> optuna.Study:
    return optuna.create_study(
        storage=storage, study_name=name, direction="minimize", load_if_exists=True
    )


@contextlib.contextmanager
def process_lock(database: Path) -> Iterator[None]:
    """An exclusive lock between processes on one host, for one SQLite database.

    Held while creating a store, and while checking the trial budget and asking, so that two
    workers sharing a study never ask more than n_trials trials between them. It is an flock
    on a separate `.lock` file: opening and closing the database file itself would drop the
    POSIX locks that SQLite holds on it.
    """
    lock_file = database.with_name(database.name + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
