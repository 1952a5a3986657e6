"""A trial shown as done is stored, and every message about what is kept is true: faults on the
storage path (the whole process group killed, a full disk, a read-only or vanished store, a
killed writer) each end tune with one line that names the file or setting at fault and how many
finished trials the study keeps; after each, every trial printed as done is in the store, and
the next run ends with the trials of an undisturbed one.

A full or read-only disk is made for real: a small tmpfs (or a read-only bind mount) in a mount
namespace of tune's own (`unshare --mount`, which needs root or unprivileged user namespaces,
as CI has); nothing on the host is mounted."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import dvc, subprocess_env, tiered, trial_records
from test_crash_safety import _assert_undisturbed, _start, _study

STORE = "outputs/optuna_store.db"
PRINTED = re.compile(r"^trial +(\d+) (COMPLETE|PRUNED|FAIL)", re.MULTILINE)


def _stored(project: Path, store: Path | None = None) -> set[int]:
    """Numbers of the finished trials in the study store."""
    path = store or project / STORE
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            rows = connection.execute("SELECT number FROM trials WHERE state != 'RUNNING'")
            return {number for (number,) in rows}
    except sqlite3.OperationalError:  # Optuna has not made its tables yet
        return set()


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return errors[0]


def _kept(line: str) -> int:
    return int(re.search(r"keeps its finished trials \((\d+)\)", line).group(1))


@pytest.fixture
def prepared(slow_run: Path, tmp_path: Path) -> Path:
    """A copy of the SLOW project with its split prepared and nothing tuned yet."""
    project = shutil.copytree(slow_run, tmp_path / "p", symlinks=True)
    shutil.rmtree(project / "outputs")
    shutil.rmtree(project / ".dvc" / "cache")  # or `dvc repro` would restore tune's outputs
    return project


def _in_namespace(project: Path, script: str) -> subprocess.CompletedProcess:
    """`script` (sh) in a mount namespace of its own, in the project; tune's stderr in tune.err."""
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed for the disk faults"
    return subprocess.run(
        [unshare, "--mount", "--map-root-user", "sh", "-ec", script],
        cwd=project, env=subprocess_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_whole_process_group_killed_leaves_every_printed_trial_stored(
    prepared: Path, undisturbed: list[tuple]
) -> None:
    """`dvc repro` killed (SIGKILL to its process group: dvc, tune and the writer alike) mid-run:
    every trial printed as done is stored, none is recomputed, and the next `dvc repro` ends
    with the undisturbed trials and one MLflow run per trial."""
    process = _start(prepared, "-m", "dvc", "repro")
    deadline = time.monotonic() + 120
    while len(_stored(prepared)) < 3:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    _, stderr = process.communicate()
    printed = {int(n) for n, _ in PRINTED.findall(stderr)}
    stored = _stored(prepared)
    assert printed <= stored
    finished_at = {t.number: t.datetime_complete for t in _study(prepared).trials}
    dvc(prepared, "repro", "tune")
    after = {t.number: t.datetime_complete for t in _study(prepared).trials}
    assert all(after[number] == finished_at[number] for number in stored), "a trial was recomputed"
    _assert_undisturbed(prepared, undisturbed)


@pytest.mark.parametrize(
    ("size", "store"),
    tiered(
        [
            pytest.param("300k", ("outputs/mlflow.db",), id="full-while-making-the-mlflow-store"),
            # whichever store the trials fill first
            pytest.param("1400k", (STORE, "outputs/mlflow.db"), id="full-while-storing-trials"),
        ],
        {"full-while-storing-trials"},
    ),
)
def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_space(
    prepared: Path, undisturbed: list[tuple], size: str, store: tuple[str, ...]
) -> None:
    """outputs/ on a tmpfs of `size`; then the tmpfs grows, and tune resumes there."""
    done = _in_namespace(
        prepared,
        f"""mkdir -p outputs
        mount -t tmpfs -o size={size} tmpfs outputs
        python stages/tune.py 2> tune.err || echo "exit $?" >> tune.err
        cp outputs/optuna_store.db* . 2>/dev/null || true
        mount -o remount,size=100m outputs
        python stages/tune.py 2> resumed.err
        mkdir kept && cp -r outputs/. kept/""",
    )
    assert done.returncode == 0, done.stderr + (prepared / "resumed.err").read_text()
    stderr = (prepared / "tune.err").read_text()
    line = _one_error(stderr)
    assert stderr.rstrip().endswith("exit 2")
    assert line.startswith(tuple(f"error: {name}: " for name in store)), line
    assert "disk is full" in line
    printed = {int(n) for n, _ in PRINTED.findall(stderr)}
    stored = _stored(prepared, prepared / "optuna_store.db")
    assert printed <= stored
    if "keeps its finished trials" in line:
        assert _kept(line) == len(stored)
    assert _records_in(prepared / "kept") == undisturbed


def _records_in(outputs: Path) -> list[tuple]:
    """The trials of the study copy in an outputs folder."""
    project = outputs.parent / "copy"
    (project / "outputs").mkdir(parents=True, exist_ok=True)
    for name in ("optuna_study.db", "tune_summary.json"):
        shutil.copy(outputs / name, project / "outputs" / name)
    return trial_records(project)


def test_a_read_only_study_store_is_one_line_naming_it(prepared: Path) -> None:
    dvc(prepared, "repro", "tune")
    write_params = (prepared / "params.yaml").read_text().replace("n_trials: 8", "n_trials: 10")
    (prepared / "params.yaml").write_text(write_params)
    done = _in_namespace(
        prepared,
        """mount --bind outputs outputs
        mount -o remount,bind,ro outputs
        python stages/tune.py 2> tune.err || echo "exit $?" >> tune.err""",
    )
    assert done.returncode == 0, done.stderr
    stderr = (prepared / "tune.err").read_text()
    line = _one_error(stderr)
    assert stderr.rstrip().endswith("exit 2")
    assert line.startswith(f"error: {STORE}: read-only file system"), line
    assert "OPTUNA_STORAGE" not in line  # not set: the file is at fault


def test_a_vanished_mlflow_store_is_one_line_and_the_count_is_true(prepared: Path) -> None:
    process = _start(prepared, "stages/tune.py")
    while len(_stored(prepared)) < 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    for path in (prepared / "outputs").glob("mlflow.db*"):
        path.unlink()
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    line = _one_error(stderr)
    assert line.startswith("error: outputs/mlflow.db: deleted or replaced while tune ran"), line
    assert "MLFLOW_TRACKING_URI" not in line
    stored = _stored(prepared)
    assert _kept(line) == len(stored)
    assert {int(n) for n, _ in PRINTED.findall(stderr)} <= stored


def test_a_killed_writer_is_one_line_and_the_count_is_true(
    prepared: Path, undisturbed: list[tuple]
) -> None:
    process = _start(prepared, "stages/tune.py")
    while len(_stored(prepared)) < 2:
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    (writer,) = [
        child
        for child in Path("/proc").glob("[0-9]*")
        if _parent_of(child) == process.pid and b"spawn_main" in _cmdline(child)
    ]
    os.kill(int(writer.name), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr
    line = _one_error(stderr)
    assert "the study writer process ended unexpectedly (killed by signal 9)" in line, line
    stored = _stored(prepared)
    assert _kept(line) == len(stored)
    assert {int(n) for n, _ in PRINTED.findall(stderr)} <= stored
    dvc(prepared, "repro", "tune")
    assert trial_records(prepared) == undisturbed


def _parent_of(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
