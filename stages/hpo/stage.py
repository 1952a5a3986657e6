"""How every stage script runs: its progress through `logging`, each problem it reports as one
line with exit code 2, Ctrl-C as exit code 130, and no secret in anything it prints."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import sqlite3
import sys
import traceback
from collections.abc import Callable

from hpo import paths
from hpo.errors import MOVE_STORE_ASIDE, PipelineError, file_error
from hpo.redaction import scrub

# quiet: warnings and errors only; normal: a line per trial; verbose: the libraries' notices too.
LOG_LEVEL_VAR = "HPO_LOG_LEVEL"
LOG_LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class _Scrubbed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging() -> None:
    """Progress and notices on stderr, at the level HPO_LOG_LEVEL names (default normal)."""
    name = os.environ.get(LOG_LEVEL_VAR, "normal").strip().lower() or "normal"
    if name not in LOG_LEVELS:
        raise PipelineError(f"{LOG_LEVEL_VAR}: {name!r} is not one of {', '.join(LOG_LEVELS)}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Scrubbed("%(message)s"))
    logger = logging.getLogger("hpo")
    logger.handlers[:] = [handler]
    logger.setLevel(LOG_LEVELS[name])
    logger.propagate = False
    # MLflow's own notices (input example validation, artifact downloads) only when verbose.
    verbose = name == "verbose"
    logging.getLogger("mlflow").setLevel(logging.INFO if verbose else logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", str(verbose).lower())


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main; a PipelineError is one line per problem on stderr and a non-zero exit;
    whatever is printed, a traceback included, has its secrets masked."""
    # At the interpreter's exit, not here: the tests run stages inside their own process.
    atexit.unregister(skip_exit_collection)
    atexit.register(skip_exit_collection)
    try:
        configure_logging()
        main()
    except PipelineError as exc:
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as exc:
        if exc.filename is None:
            raise
        # Writing an output into a read-only folder, a full disk, a folder in a file's place.
        _fail(f"{exc.filename}: {(exc.strerror or str(exc)).lower()}", 2)
    except Exception as exc:
        root = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__
        if not isinstance(root, sqlite3.Error):  # a bug: its traceback, without secrets
            sys.stderr.write(scrub("".join(traceback.format_exception(exc))))
            raise SystemExit(1) from None
        # A SQLite store (locked too long, full, read-only): the library that wrapped it tells.
        _fail(str(file_error(_store_of(exc), root, MOVE_STORE_ASIDE)), 2)


def _store_of(exc: BaseException) -> str:
    """The SQLite store an error came from: MLflow's, if MLflow wrapped it, else the study's."""
    chain, cause = [], exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(type(e).__module__.startswith("mlflow") for e in chain):
        return str(paths.MLFLOW_DB)
    return "OPTUNA_STORAGE" if os.environ.get("OPTUNA_STORAGE") else str(paths.STUDY_STORE)


def _fail(message: str, exit_code: int) -> None:
    for problem in scrub(message).splitlines():
        print(f"error: {problem}", file=sys.stderr)
    raise SystemExit(exit_code) from None


def skip_exit_collection() -> None:
    """Spare the interpreter's exit its full collections (1-3 s per stage, which a stop request
    would wait for), doing the part that matters: closing every open SQLite connection, so the
    MLflow store folds its WAL back into its file. Run it last, at exit."""
    for obj in gc.get_objects():
        if isinstance(obj, sqlite3.Connection):
            with contextlib.suppress(sqlite3.Error):
                obj.close()
    gc.freeze()
