"""The one error type a stage turns into a one-line message and a non-zero exit."""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import os
import sqlite3
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpo import paths
from hpo.redaction import scrub

# What to do about a damaged file, by kind: an earlier stage's output, or a store that only
# this pipeline appends to (not a DVC output: nothing can restore it).
REBUILD = "`dvc repro` rebuilds it (`dvc checkout` restores the version DVC last cached)"
MOVE_STORE_ASIDE = (
    "move it aside (its history stays in the moved file) and rerun: a new one is started"
)
# A SQLite store that another process kept locked for longer than a stage waits.
CLOSE_THE_HOLDER = (
    "close what holds it (a database browser, a notebook writing to it, a stage run outside "
    "`dvc repro`) and rerun `dvc repro`: finished trials are kept"
)


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data, nothing to report); no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def file_error(path: Path | str, exc: BaseException, remedy: str) -> PipelineError:
    """One line for a file a stage cannot use: which, what is wrong with it, what to do."""
    if _is_locked(exc):
        return PipelineError(f"{path}: locked by another process; {CLOSE_THE_HOLDER}")
    return PipelineError(f"{path}: {_what_is_wrong(exc)}; {remedy}")


def read_json(path: Path) -> Any:
    """A JSON output of an earlier stage; one line when it is missing or damaged."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not text
        raise file_error(path, exc, REBUILD) from None


def _what_is_wrong(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "not found"
    if isinstance(exc, IsADirectoryError):
        return "is a folder, not a file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    # XGBoost appends a native stack trace; SQLAlchemy a link and the SQL.
    first = " ".join(lines[0].split(" Stack trace:")[0].split()) if lines else ""
    return first or type(exc).__name__


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; report a PipelineError on stderr, one line per problem, and exit
    non-zero. Whatever is printed, a traceback included, has its secrets masked (redaction)."""
    # At the interpreter's exit, not here: the tests run stages inside their own process.
    atexit.unregister(skip_exit_collection)
    atexit.register(skip_exit_collection)
    try:
        main()
    except PipelineError as exc:
        for problem in scrub(str(exc)).splitlines():
            print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except OSError as exc:
        if exc.filename is None:
            raise
        # Writing an output into a read-only folder, a full disk, a folder in a file's place.
        reason = (exc.strerror or str(exc)).lower()
        print(scrub(f"error: {exc.filename}: {reason}"), file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as exc:
        store = _locked_store(exc)
        if store is None:  # a bug: its traceback, without secrets
            sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
            raise SystemExit(1) from None
        print(scrub(f"error: {file_error(store, exc, CLOSE_THE_HOLDER)}"), file=sys.stderr)
        raise SystemExit(2) from None


def skip_exit_collection() -> None:
    """Spare the interpreter's exit its full collections over every imported library's objects.

    They take about 1 s per stage process here, 2-3 s with Dask loaded, which a stop request
    would wait for; the OS frees the memory anyway. What those collections did that matters is
    done here: every SQLite connection still open is closed, so that the MLflow store (in WAL
    mode) folds its log back into its file, as a clean exit does. Run it last, at exit.
    """
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            with contextlib.suppress(sqlite3.Error):
                obj.close()
    gc.freeze()


def _locked_store(exc: BaseException) -> str | None:
    """The SQLite store a "database is locked" failure came from, or None for other failures.

    SQLite gives up after its busy timeout (Optuna's store: study_store.LOCK_TIMEOUT_S;
    MLflow's: 20 s) and the error reaches here wrapped by SQLAlchemy, Optuna or MLflow; which
    library wrapped it tells which store it was.
    """
    if not _is_locked(exc):
        return None
    if any(type(e).__module__.startswith("mlflow") for e in _causes(exc)):
        return str(paths.MLFLOW_DB)
    return (
        "the study store (OPTUNA_STORAGE)"
        if os.environ.get("OPTUNA_STORAGE")
        else str(paths.STUDY_STORE)
    )


def _is_locked(exc: BaseException) -> bool:
    return any("database is locked" in str(e) for e in _causes(exc))


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
