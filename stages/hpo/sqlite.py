"""SQLite files shared by the processes of one host (tune processes sharing a study or a store):
the lock around their creation, and the check that they are intact before use."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from filelock import FileLock


def process_lock(database: Path) -> FileLock:
    """An exclusive lock between processes on one host, for one SQLite database: a separate
    `.lock` file, as closing the database file itself would drop SQLite's POSIX locks on it."""
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(database.with_name(database.name + ".lock"))


def check_intact(database: Path) -> None:
    """Raise sqlite3.DatabaseError if an existing database file is damaged (e.g. truncated):
    SQLite would fail only when a query reaches a bad page, mid-work; `quick_check` reads all."""
    if not database.is_file() or database.stat().st_size == 0:
        return  # missing or empty: SQLite starts a new database
    uri = f"file:{database}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
        result = connection.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise sqlite3.DatabaseError(f"damaged (SQLite quick_check: {result})")


def file_identity(path: Path | str) -> tuple[int, int] | None:
    """Which file `path` is now (device and inode), None if there is none."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino
