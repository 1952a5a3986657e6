"""File locks between the processes of one host (tune processes sharing a study or a store)."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock


def process_lock(database: Path) -> FileLock:
    """An exclusive lock between processes on one host, for one SQLite database.

    A separate `.lock` file: opening and closing the database file itself would drop the POSIX
    locks that SQLite holds on it.
    """
    database.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(database.with_name(database.name + ".lock"))
