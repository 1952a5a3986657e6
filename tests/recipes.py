"""The docs' recipes, run as written on loopback.

docs/cluster.md marks each runnable shell block with `<!-- recipe: NAME -->`. A `Site` plays the
machines the recipes name: one home folder for all of them, their host names mapped to
127.0.0.1 and their ports to free ones. Host names stay as written where a service checks them
(`mlflow.example`, in the Host header of every MLflow call), resolved by the `example_hosts`
shim as an /etc/hosts line would; everything else is replaced in the text. Typed answers
(`read -rsp ...`) come on stdin, as a person would type them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import shlex
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

from conftest import REPO, subprocess_env
from services import HOST, free_port, stop_process

DOC = REPO / "docs/cluster.md"
EXAMPLE_HOSTS = Path(__file__).parent / "example_hosts"  # sitecustomize: *.example -> 127.0.0.1
RECIPE = re.compile(r"<!-- recipe: ([\w-]+) -->\n```bash\n(.*?)```", re.DOTALL)
SETTINGS_TABLE = r"<!-- settings: {} -->\n\n\| Setting .*?\n\|[- |]+\n((?:\|.*\n)+)"


def _load_shim() -> Any:
    spec = importlib.util.spec_from_file_location(
        "example_hosts", EXAMPLE_HOSTS / "sitecustomize.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def resolving_example_hosts() -> Iterator[None]:
    """This process resolves `*.example` as the recipes' processes do."""
    with mock.patch.object(socket, "getaddrinfo", _load_shim().on_loopback(socket.getaddrinfo)):
        yield


def recipes(doc: Path = DOC) -> dict[str, str]:
    """Every marked block of `doc`, by name."""
    return dict(RECIPE.findall(doc.read_text()))


def documented_settings(kind: str, doc: Path = DOC) -> list[tuple[dict[str, str], str]]:
    """The rows of `doc`'s "settings: KIND" table: the variables a row sets, and the line
    tune prints for them."""
    (rows,) = re.findall(SETTINGS_TABLE.format(kind), doc.read_text())
    documented = []
    for row in rows.splitlines():
        setting, printed = (cell.strip().strip("`") for cell in row.strip("| ").split(" | "))
        variables = dict(item.split("=", 1) for item in shlex.split(setting))
        documented.append((variables, printed))
    return documented


@dataclass
class Site:
    """The recipes' machines on loopback, sharing `home`."""

    home: Path
    pg_port: int = 5432
    dask_port: int = field(default_factory=free_port)
    mlflow_port: int = field(default_factory=free_port)
    _services: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    @property
    def env(self) -> dict[str, str]:
        return subprocess_env(
            {
                "HOME": str(self.home),
                "PYTHONPATH": str(EXAMPLE_HOSTS),
                # MLflow's GenAI job runner (7 huey consumers) is of no use to this project.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            }
        )

    def text(self, name: str) -> str:
        """Recipe `name` with its hosts and ports on this site."""
        return self.on_loopback(recipes()[name])

    def on_loopback(self, text: str) -> str:
        """`text` with the recipes' hosts and ports replaced by this site's."""
        for written, here in (
            ("scheduler.example", HOST),
            ("8786", str(self.dask_port)),
            ("db.example", HOST),
            ("5432", str(self.pg_port)),
            ("--host 0.0.0.0", f"--host {HOST}"),
            ("5000", str(self.mlflow_port)),
        ):
            text = text.replace(written, here)
        return text

    def run(
        self, name: str, typed: tuple[str, ...] = (), cwd: Path | None = None
    ) -> subprocess.CompletedProcess:
        """Run recipe `name` to its end, then stop what it left in the background; raises with
        its output if it fails."""
        shell = self._shell(name, typed, cwd, timeout=600)
        stop_process(shell)
        done = subprocess.CompletedProcess(
            shell.args, shell.returncode, *(self._log(name, kind) for kind in ("out", "err"))
        )
        if done.returncode != 0:
            raise AssertionError(f"recipe {name} failed ({done.returncode}):\n{done.stderr}")
        return done

    def start(self, name: str, ready: Callable[[], bool], typed: tuple[str, ...] = ()) -> None:
        """Run recipe `name`, which starts a service in the background, and wait until `ready`.
        The service stays in the recipe shell's process group, which `close` stops."""
        shell = self._shell(name, typed, None, timeout=60)
        self._services.callback(stop_process, shell)
        log = f"{self._log(name, 'out')}{self._log(name, 'err')}"
        if shell.returncode != 0:
            raise AssertionError(f"recipe {name} failed ({shell.returncode}):\n{log}")
        deadline = time.monotonic() + 90
        while not ready():
            if time.monotonic() > deadline:
                log = f"{self._log(name, 'out')}{self._log(name, 'err')}"
                raise AssertionError(f"recipe {name}: not ready after 90 s:\n{log[-3000:]}")
            time.sleep(0.25)

    def _shell(
        self, name: str, typed: tuple[str, ...], cwd: Path | None, timeout: float
    ) -> subprocess.Popen:
        """The recipe's shell, run to its end in a process group of its own (the group's id
        is its PID), with `typed` on stdin and its output in files: a service it starts in
        the background keeps them open."""
        with (
            open(self.home / f"{name}.out", "wb") as out,
            open(self.home / f"{name}.err", "wb") as err,
        ):
            shell = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-c", self.text(name)],
                cwd=cwd or self.home,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            shell.communicate("".join(f"{line}\n" for line in typed).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(shell)
            raise
        return shell

    def _log(self, name: str, kind: str) -> str:
        return (self.home / f"{name}.{kind}").read_text(errors="replace")

    def close(self) -> None:
        self._services.close()


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return True
        return False

    return check


def healthy(port: int) -> Callable[[], bool]:
    def check() -> bool:
        url = f"http://{HOST}:{port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
        return False

    return check


@contextlib.contextmanager
def site(home: Path, pg_port: int = 5432) -> Iterator[Site]:
    home.mkdir(parents=True, exist_ok=True)
    loopback = Site(home, pg_port)
    try:
        yield loopback
    finally:
        loopback.close()
