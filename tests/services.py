"""Real PostgreSQL, MLflow and Dask services for tests, as subprocesses on 127.0.0.1.

Why real services: the scale-out code talks to them over the network, and fakes would not show
URL quoting, driver, migration or worker-death problems. Each service gets a free port and is
stopped by PID (its whole process group where it spawns children), in `finally` blocks, so a
failing test leaks nothing. A service that cannot start fails the test with its log tail:
it is never skipped silently.

The context managers work from scripts too; the session fixtures at the end register with
`pytest_plugins = ["services"]` in tests/conftest.py.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import importlib.util
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn
from urllib.parse import quote

import pytest

HOST = "127.0.0.1"  # the only address any service here listens on
REPO = Path(__file__).resolve().parents[1]
# Characters that need quoting in a URL ("@", ":", "/") and in configparser ("%", which alembic
# reads its URL through): a password that survives these survives most things.
PG_USER = "hpo"
PG_PASSWORD = "s3cr3t-P@ss:w0rd/%"
PG_ADMIN = "postgres"  # superuser, reachable only over the cluster's private Unix socket

_live: dict[int, subprocess.Popen] = {}  # the atexit safety net for what `finally` missed


class ServiceUnavailableError(RuntimeError):
    """A service did not start; the message names it and ends with its log tail."""


ServiceUnavailable = ServiceUnavailableError  # the name the scale-out brief uses


def require(condition_or_exc: object, what: str) -> None:
    """Fail the test loudly (never skip) when `what` is unavailable.

    `condition_or_exc` is an exception (its message is the reason) or a truth value. In CI
    (`CI=true`) and locally alike a missing service is a failure: a skip would hide that the
    scale-out code went untested.
    """
    if isinstance(condition_or_exc, BaseException):
        reason = f"{type(condition_or_exc).__name__}: {condition_or_exc}"
    elif condition_or_exc:
        return
    else:
        reason = "condition not met"
    ci = " (CI)" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else ""
    pytest.fail(f"{what} unavailable{ci}: {reason}", pytrace=False)


# ---------------------------------------------------------------------------- process plumbing


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (callers retry if it got taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _venv_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This interpreter's bin first on PATH (console scripts a service spawns come from it)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.update(extra or {})
    return env


def _spawn(
    args: list[str], log: IO[bytes], cwd: Path | None, env: Mapping[str, str]
) -> subprocess.Popen:
    """Start `args` as the leader of a new process group, output to `log`."""
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _live[process.pid] = process
    return process


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever of the group is left.

    The group id is the leader's PID (`start_new_session`), so children such as uvicorn
    workers or a nanny's worker are stopped with it.
    """
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    deadline = time.monotonic() + 3.0  # children finishing their own shutdown
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait()
    _live.pop(process.pid, None)


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_live.values()):
        stop_process(process, timeout=5.0)


def _wait_until(
    ready: Any, what: str, deadline_s: float, process: subprocess.Popen, log: Path
) -> None:
    """Poll `ready()` until true; fail early if `process` exits, late if the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        if process.poll() is not None:
            raise ServiceUnavailableError(
                f"{what} exited with code {process.returncode}; log {log}:\n{log_tail(log)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise ServiceUnavailableError(
                f"{what} not ready after {deadline_s:.0f} s; log {log}:\n{log_tail(log)}"
            )
        time.sleep(0.25)


# ---------------------------------------------------------------------------------- PostgreSQL


def postgres_bin_dir() -> Path:
    """PostgreSQL's bin folder: Debian's (newest major version), else the `pgserver` wheel's.

    HPO_TEST_POSTGRES=wheel uses the wheel even where Debian's is installed, =debian only
    Debian's; unset (or empty) picks Debian's when present.
    """
    choice = os.environ.get("HPO_TEST_POSTGRES", "")
    if choice not in {"", "debian", "wheel"}:
        raise ServiceUnavailableError(f"HPO_TEST_POSTGRES={choice!r}: use 'debian' or 'wheel'")
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
        reverse=True,
    )
    if debian and choice != "wheel":
        return Path(debian[0]).parent
    spec = importlib.util.find_spec("pgserver")  # located, not imported: we need its files only
    if choice == "debian" or spec is None or not spec.submodule_search_locations:
        raise ServiceUnavailableError(
            f"no PostgreSQL ({choice or 'debian or wheel'}): install the `pgserver` wheel"
            " (pip install -c constraints.txt -e '.[dev]') or Debian's `postgresql` package"
        )
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


@dataclass
class PostgresServer:
    """A running cluster. The password stays out of repr() so a failing assert cannot print it."""

    port: int
    socket_dir: Path
    user: str = PG_USER
    password: str = field(default=PG_PASSWORD, repr=False)
    host: str = HOST
    # stop() and start() it again on the same port and data, as a crash and a restart would
    stop: Callable[[], None] = field(default=lambda: None, repr=False)
    start: Callable[[], None] = field(default=lambda: None, repr=False)

    def url(self, database: str, driver: str | None = "psycopg") -> str:
        """SQLAlchemy URL with the password URL-quoted; `driver=None` gives a libpq URL.

        SQLAlchemy 2.1 also maps plain `postgresql://` to psycopg 3; the explicit
        `+psycopg` says which driver is meant.
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        credentials = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"{scheme}://{credentials}@{self.host}:{self.port}/{quote(database, safe='')}"

    def admin_connect(self) -> Any:
        """A superuser connection over the private Unix socket (trust auth, no password)."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user=PG_ADMIN, dbname="postgres",
            autocommit=True, connect_timeout=10,
        )  # fmt: skip

    def create_database(self, name: str) -> str:
        """Create database `name` owned by the test role; returns its SQLAlchemy URL."""
        from psycopg import sql

        with self.admin_connect() as connection:
            connection.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(self.user)
                )
            )
        return self.url(name)


def _pg_account() -> dict[str, Any]:
    """subprocess.run() arguments for PostgreSQL's tools, which refuse to run as root: as root
    they run as `postgres` (Debian's account) or, where there is none, as `nobody`."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        entry = pwd.getpwnam("nobody")
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _reachable_bin_dir(bin_dir: Path, base: Path) -> Path:
    """`bin_dir`, or a copy in `base` of the wheel's PostgreSQL where others cannot reach it.

    As root the tools run as another account, which cannot enter a virtualenv under a private
    folder such as /root (0700); only the wheel can be there. Its bin, lib and share folders
    are copied (~0.2 s) with the libraries at `$ORIGIN/../../../pgserver.libs` (initdb's RPATH).
    """
    folders = [bin_dir, *bin_dir.parents]
    if os.geteuid() != 0 or all(folder.stat().st_mode & stat.S_IXOTH for folder in folders):
        return bin_dir
    site = bin_dir.parents[2]  # site-packages, which holds pgserver/ and pgserver.libs/
    for part in ["bin", "lib", "share"]:
        shutil.copytree(
            bin_dir.parent / part, base / "pgserver/pginstall" / part,
            ignore=shutil.ignore_patterns("*.a"),
        )  # fmt: skip
    shutil.copytree(site / "pgserver.libs", base / "pgserver.libs")
    return base / "pgserver/pginstall/bin"


@contextlib.contextmanager
def postgres_server(
    tmp_dir: Path | None = None, user: str = PG_USER, password: str = PG_PASSWORD
) -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with password (scram) auth over TCP.

    The cluster lives in its own folder under the system temp dir, owned (as root) by the
    account the tools run as (pytest's tmp_path is private to root, where that account cannot
    reach); it is deleted on exit, and its server log is copied to `tmp_dir/postgres.log` when
    `tmp_dir` is given. fsync is off: the data only has to outlive processes, not the machine.
    """
    bin_dir = postgres_bin_dir()
    base = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    data, sockets, log = base / "data", base / "sock", base / "postgres.log"
    try:
        sockets.mkdir()
        if account := _pg_account():
            for path in (base, sockets):
                os.chown(path, account["user"], account["group"])
        bin_dir = _reachable_bin_dir(bin_dir, base)
        _pg_run(
            [
                str(bin_dir / "initdb"), "-D", str(data), "-U", PG_ADMIN, "-E", "UTF8",
                "--no-locale", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
            ],
            "initdb", base, check=True,
        )  # fmt: skip
        for _attempt in range(3):  # a free port can be taken between probe and bind
            port = free_port()
            started = _pg_ctl_start(bin_dir, data, log, port, sockets, base)
            if started.returncode == 0:
                break
            if "could not bind" not in log_tail(log, 400):
                break
        if started.returncode != 0:
            raise ServiceUnavailableError(
                f"PostgreSQL (pg_ctl start) failed:\n{started.stdout}{started.stderr}\n"
                f"log {log}:\n{log_tail(log)}"
            )

        def restart() -> None:
            again = _pg_ctl_start(bin_dir, data, log, port, sockets, base)
            if again.returncode != 0:
                raise ServiceUnavailableError(f"PostgreSQL restart failed:\n{log_tail(log)}")

        server = PostgresServer(
            port=port,
            socket_dir=sockets,
            user=user,
            password=password,
            stop=functools.partial(_stop_postgres, bin_dir, data, base),
            start=restart,
        )
        _create_role(server, log)
        yield server
    finally:
        if data.joinpath("postmaster.pid").exists():
            _stop_postgres(bin_dir, data, base)
        if tmp_dir is not None and log.exists():
            with contextlib.suppress(OSError):  # never mask the error that got us here
                shutil.copyfile(log, Path(tmp_dir) / "postgres.log")
        shutil.rmtree(base, ignore_errors=True)


def _pg_ctl_start(
    bin_dir: Path, data: Path, log: Path, port: int, sockets: Path, base: Path
) -> subprocess.CompletedProcess:
    options = (
        f"-p {port} -k {sockets} -c listen_addresses={HOST} -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off"
    )
    return _pg_run(
        [
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
            "-w", "-t", "60", "start",
        ],
        "pg_ctl start", base,
    )  # fmt: skip


def _pg_run(
    args: list[str], what: str, cwd: Path, check: bool = False
) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool (as `_pg_account()`); a hang, a tool that cannot be run or (with
    `check`) a failure is ServiceUnavailableError."""
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=120, **_pg_account()
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnavailableError(f"PostgreSQL ({what}) hung for {exc.timeout} s") from exc
    except OSError as exc:  # e.g. the account the tools run as cannot reach them
        raise ServiceUnavailableError(f"PostgreSQL ({what}) cannot run {args[0]}: {exc}") from exc
    if check and done.returncode != 0:
        raise ServiceUnavailableError(f"PostgreSQL ({what}) failed:\n{done.stdout}{done.stderr}")
    return done


def _create_role(server: PostgresServer, log: Path) -> None:
    """The login role tests use. Statements are not logged (log_statement is off by default),
    so the password in this one stays out of the server log."""
    try:
        from psycopg import sql

        with server.admin_connect() as connection:
            connection.execute(
                sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                    sql.Identifier(server.user), sql.Literal(server.password)
                )
            )
    except Exception as exc:
        raise ServiceUnavailableError(
            f"PostgreSQL role setup failed: {exc}\nlog {log}:\n{log_tail(log)}"
        ) from exc


def _stop_postgres(bin_dir: Path, data: Path, cwd: Path) -> None:
    """`pg_ctl stop -m fast`; if that fails, SIGKILL the postmaster by the PID it recorded."""
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        done = subprocess.run(
            stop, cwd=cwd, capture_output=True, text=True, timeout=90, **_pg_account()
        )
        if done.returncode == 0:
            return
    with contextlib.suppress(OSError, ValueError, IndexError):
        pid = int(data.joinpath("postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, signal.SIGKILL)  # backends exit on their own when the postmaster dies


# -------------------------------------------------------------------------------------- MLflow


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def web_ui(
    args: list[str],
    what: str,
    cwd: Path,
    log_dir: Path,
    ready_path: str = "/",
    env: Mapping[str, str] | None = None,
    deadline_s: float = 90.0,
) -> Iterator[str]:
    """An HTTP server (`mlflow server`, `mlflow ui`, `optuna-dashboard`) started as `args` plus
    `--host 127.0.0.1 --port PORT` in `cwd`; yields its base URL once `ready_path` answers 200.
    Its log is `log_dir/<first word of what>-PORT.log`."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    log_path = Path(log_dir) / f"{what.split()[0]}-{port}.log"
    with open(log_path, "wb") as log:
        process = _spawn([*args, "--host", HOST, "--port", str(port)], log, cwd, _venv_env(env))
        try:
            _wait_until(lambda: _answers(url + ready_path), what, deadline_s, process, log_path)
            yield url
        finally:
            stop_process(process)


@contextlib.contextmanager
def mlflow_server(
    backend_store_uri: str,
    artifacts_dir: Path,
    log_dir: Path | None = None,
    deadline_s: float = 90.0,
) -> Iterator[str]:
    """`mlflow server` with proxied artifacts (`--serve-artifacts`); yields its base URL.

    One worker process and no job runner keep it light. It runs in `log_dir` (default: the parent of
    `artifacts_dir`), where it writes `mlflow-PORT.log`, so nothing lands in the repo.
    """
    artifacts_dir = Path(artifacts_dir)
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    log_dir = Path(log_dir) if log_dir is not None else artifacts_dir.parent
    args = [
        sys.executable, "-m", "mlflow", "server",
        "--serve-artifacts", "--artifacts-destination", str(artifacts_dir), "--workers", "1",
    ]  # fmt: skip
    env = {
        # Through the environment, not argv: a command line (and its password) is public in ps.
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        # No job runner: it starts 7 huey consumers (~500 MB) for GenAI jobs this project lacks.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with web_ui(args, "mlflow server", log_dir, log_dir, "/health", env, deadline_s) as url:
        yield url


# ---------------------------------------------------------------------------------------- Dask


@contextlib.contextmanager
def dask_scheduler(
    log_dir: Path | None = None, deadline_s: float = 60.0
) -> Iterator[DaskScheduler]:
    """`dask scheduler` without dashboard, at "tcp://127.0.0.1:PORT".

    It binds port 0 and reports the port it got in its scheduler file: no probe-then-bind race.
    """
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hpo-dask-")))
        log_dir = Path(log_dir)
        scheduler_file = log_dir / f"scheduler-{uuid.uuid4().hex[:8]}.json"
        log_path = scheduler_file.with_suffix(".log")
        args = [
            sys.executable, "-m", "dask", "scheduler", "--host", HOST, "--port", "0",
            "--no-dashboard", "--scheduler-file", str(scheduler_file),
        ]  # fmt: skip
        log = stack.enter_context(open(log_path, "wb"))
        process = _spawn(args, log, cwd=log_dir, env=_venv_env())
        stack.callback(stop_process, process)
        _wait_until(scheduler_file.exists, "dask scheduler", deadline_s, process, log_path)
        address = ""

        def reported() -> bool:
            nonlocal address
            with contextlib.suppress(ValueError, OSError):
                address = json.loads(scheduler_file.read_text())["address"]
            return bool(address)

        _wait_until(reported, "dask scheduler", deadline_s, process, log_path)
        if not address.startswith(f"tcp://{HOST}:"):
            raise ServiceUnavailableError(f"dask scheduler listens on {address}, not {HOST}")
        yield DaskScheduler(address, process.pid)


@dataclass
class DaskScheduler:
    address: str
    pid: int  # a test that loses its scheduler kills this one


@dataclass
class DaskWorker:
    """A `dask worker` process attached to `scheduler`.

    `pid` is the process this module started: with `nanny=True` that is the nanny, which
    restarts a killed worker; with `nanny=False` it is the worker that runs the tasks.
    `worker_pid()` asks the scheduler for the task-running process in either mode.
    """

    name: str
    scheduler: str
    nanny: bool
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def address(self, client: Any = None) -> str | None:
        """The worker's current address as the scheduler knows it (None while absent)."""
        with _client(self.scheduler, client) as connected:
            workers = connected.scheduler_info(n_workers=-1)["workers"]
        return next((a for a, info in workers.items() if info.get("name") == self.name), None)

    def worker_pid(self, client: Any = None) -> int:
        """PID of the process that runs this worker's tasks (the nanny's child with a nanny)."""
        with _client(self.scheduler, client) as connected:
            address = self.address(connected)
            if address is None:
                raise ServiceUnavailableError(f"dask worker {self.name} is not connected")
            return connected.run(os.getpid, workers=[address])[address]


@contextlib.contextmanager
def _client(scheduler: str, client: Any = None) -> Iterator[Any]:
    """The given `distributed.Client`, or a short-lived one (closed on exit)."""
    if client is not None:
        yield client
        return
    from distributed import Client

    with Client(scheduler, timeout="20s") as fresh:
        yield fresh


@contextlib.contextmanager
def dask_worker(
    address: str,
    nthreads: int = 1,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    nanny: bool = False,
    log_dir: Path | None = None,
    deadline_s: float = 60.0,
) -> Iterator[DaskWorker]:
    """A `dask worker` CLI process; returns once the scheduler lists it.

    No nanny by default: then `.pid` runs the tasks and a SIGKILL to it is a real worker loss
    rather than a restart. `env` adds to this process's environment (PATH has the venv first).
    The worker exits on its own 60 s after losing its scheduler (`--death-timeout`).
    """
    name = f"worker-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hpo-dask-")))
        log_path = Path(log_dir) / f"{name}.log"
        args = [
            sys.executable, "-m", "dask", "worker", address, "--name", name,
            "--nthreads", str(nthreads), "--host", HOST, "--no-dashboard",
            "--nanny" if nanny else "--no-nanny", "--death-timeout", "60",
        ]  # fmt: skip
        log = stack.enter_context(open(log_path, "wb"))
        process = _spawn(args, log, cwd=cwd, env=_venv_env(env))
        stack.callback(stop_process, process)
        worker = DaskWorker(name, address, nanny, process, log_path)
        try:
            with _client(address) as client:
                _wait_until(
                    lambda: worker.address(client) is not None,
                    f"dask worker {name}", deadline_s, process, log_path,
                )  # fmt: skip
        except (OSError, TimeoutError) as exc:  # the scheduler itself is unreachable
            raise ServiceUnavailableError(f"dask scheduler {address}: {exc}") from exc
        yield worker


@dataclass
class DaskCluster:
    address: str
    workers: list[DaskWorker]
    scheduler_pid: int


@contextlib.contextmanager
def dask_cluster(
    n_workers: int = 2,
    nthreads: int = 1,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    nanny: bool = False,
    log_dir: Path | None = None,
) -> Iterator[DaskCluster]:
    """A scheduler and `n_workers` CLI workers; workers stop before the scheduler."""
    with contextlib.ExitStack() as stack:
        scheduler = stack.enter_context(dask_scheduler(log_dir))
        workers = [
            stack.enter_context(dask_worker(scheduler.address, nthreads, cwd, env, nanny, log_dir))
            for _ in range(n_workers)
        ]
        yield DaskCluster(scheduler.address, workers, scheduler.pid)


# ------------------------------------------------------------------------------------ fixtures


def _start_or_fail(stack: contextlib.ExitStack, service: Any, what: str) -> Any:
    """Enter a service's context; a start failure fails the test with the reason."""
    try:
        return stack.enter_context(service)
    except ServiceUnavailableError as exc:
        failure = exc
    _fail(failure, what)  # outside `except`: the report shows the reason, not a chained trace


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per session; tests create their own databases in it."""
    with contextlib.ExitStack() as stack:
        yield _start_or_fail(
            stack, postgres_server(tmp_path_factory.mktemp("postgres")), "PostgreSQL"
        )


@pytest.fixture(scope="session")
def mlflow_server_url(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """One `mlflow server` per session (start-up dominates), backed by PostgreSQL database
    `mlflow`, artifacts proxied to a temp folder. Tests use their own experiments in it."""
    root = tmp_path_factory.mktemp("mlflow-server")
    backend = postgres.create_database("mlflow")
    with contextlib.ExitStack() as stack:
        yield _start_or_fail(
            stack, mlflow_server(backend, root / "artifacts", log_dir=root), "mlflow server"
        )


@pytest.fixture(scope="session")
def dask_cluster_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler with two 1-thread CLI workers (no nanny) that import this repo's `hpo`.

    Shared by the session: a test that kills workers should start its own `dask_cluster()`.
    """
    log_dir = tmp_path_factory.mktemp("dask")
    pythonpath = [str(REPO / "stages"), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(filter(None, pythonpath))}
    with contextlib.ExitStack() as stack:
        cluster = _start_or_fail(
            stack, dask_cluster(2, 1, env=env, log_dir=log_dir), "Dask scheduler/workers"
        )
        yield cluster.address


def _fail(exc: BaseException, what: str) -> NoReturn:
    require(exc, what)
    raise exc  # unreachable
