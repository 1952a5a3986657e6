"""The one error type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# What to do about a damaged file, by kind: an earlier stage's output, or a store that only
# this pipeline appends to (not a DVC output: nothing can restore it).
REBUILD = "`dvc repro` rebuilds it (`dvc checkout` restores the version DVC last cached)"
MOVE_STORE_ASIDE = (
    "move it aside (its history stays in the moved file) and rerun: a new one is started"
)
# What to do when params.yaml or dvc.yaml is not found.
RUN_FROM_ROOT = (
    "stages run from the project root (the folder of dvc.yaml and params.yaml), e.g. `dvc repro` "
    "or `python stages/tune.py` there"
)
# A SQLite store that another process kept locked for longer than a stage waits.
CLOSE_THE_HOLDER = (
    "close what holds it (a database browser, a notebook writing to it, a stage run outside "
    "`dvc repro`) and rerun `dvc repro`: finished trials are kept"
)


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, a failing service); no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def file_error(path: Path | str, exc: BaseException, remedy: str) -> PipelineError:
    """One line for a file a stage cannot use: which, what is wrong with it, what to do."""
    if is_locked(exc):
        return PipelineError(f"{path}: locked by another process; {CLOSE_THE_HOLDER}")
    reason = what_is_wrong(exc)
    if "disk is full" in reason or "No space left" in reason:
        remedy = "free space on its disk and rerun `dvc repro`: finished trials are kept"
    elif "readonly database" in reason or "Read-only file system" in reason:
        remedy = "make it writable and rerun `dvc repro`: finished trials are kept"
    return PipelineError(f"{path}: {reason}; {remedy}")


def read_json(path: Path) -> Any:
    """A JSON output of an earlier stage; one line when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not text
        raise file_error(path, exc, REBUILD) from None


def what_is_wrong(exc: BaseException) -> str:
    """The first line of an error, without the native stack trace or SQL a library appends."""
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return native_message(lines[0]) if lines else type(exc).__name__


def native_message(text: str) -> str:
    """A native library's message on one line, without XGBoost's "[time] file:line:" prefix
    and the stack trace it appends."""
    one_line = " ".join(text.split()).split(" Stack trace:")[0]
    return re.sub(r"^\[[\d:]+\] \S+:\d+: ", "", one_line)


def is_locked(exc: BaseException) -> bool:
    """Whether SQLite gave up waiting for another process's lock, however it was wrapped."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if "database is locked" in str(cause):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
