"""Every file a stage reads, in any state a disk can leave it, gives one line and loses nothing.

Each case copies the finished tiny run, damages one file and runs the stage script that reads
it (conftest's `run_stage`): exit code 2, one `error:` line that starts with the file (as
dvc.yaml's `paths` name it) and ends with what to do (`dvc repro` for an earlier stage's output,
moving it aside for a store only this pipeline appends to), no exception escaping, and every
other file of the project byte for byte as it was.
"""

from __future__ import annotations

import gc
import hashlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import TINY_PARAMS, subprocess_env, tiered, write_params

from hpo.errors import CLOSE_THE_HOLDER, MOVE_STORE_ASIDE, REBUILD
from hpo.storage import studies

N_TRIALS = TINY_PARAMS["tune"]["n_trials"]


def _missing(path: Path) -> None:
    path.unlink()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00\xff not what was here \x13\x37" * 64)


def _truncated(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "missing": _missing,
    "empty": _empty,
    "garbage": _garbage,
    "truncated": _truncated,
    "a folder": _folder,
}
# (stage, file it reads, damage that must stop it). A store that is missing or empty is
# not damaged: the stage starts a new one.
STORES = ("garbage", "truncated", "a folder")
STORE_FILES = ("outputs/optuna_store.db", "outputs/mlflow.db")
OUTPUTS = tuple(DAMAGE)
CASES = [
    ("tune", "data/prepared/train.parquet", OUTPUTS),
    ("tune", "outputs/optuna_store.db", STORES),
    ("tune", "outputs/mlflow.db", STORES),
    ("train_best", "outputs/tune_summary.json", OUTPUTS),
    ("evaluate", "outputs/model/model.ubj", OUTPUTS),
    ("evaluate", "outputs/model_info.json", OUTPUTS),
    ("evaluate", "data/prepared/test.parquet", OUTPUTS),
    ("plot", "outputs/optuna_study.db", OUTPUTS),
]


def _case(stage: str, name: str, damage: str) -> Any:
    return pytest.param(stage, name, damage, id=f"{stage}-{name.split('/')[-1]}-{damage}")


PARAMS = tiered(
    [_case(stage, name, damage) for stage, name, damages in CASES for damage in damages],
    # every file once, truncated (what a full disk or a killed copy leaves)
    {f"{stage}-{name.split('/')[-1]}-truncated" for stage, name, _ in CASES},
)


def _fingerprints(project: Path, skip: Path) -> dict[str, str]:
    """sha256 of every file but the damaged one and SQLite's and the lock's side files."""
    found = {}
    for path in project.rglob("*"):
        side_file = path.name.endswith(("-wal", "-shm", ".lock")) or ".dvc/tmp" in str(path)
        if path.is_file() and skip not in (path, *path.parents) and not side_file:
            found[str(path.relative_to(project))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.mark.parametrize(("stage", "name", "damage"), PARAMS)
def test_a_damaged_file_stops_its_stage_with_one_line(
    tiny_run: Path, tmp_path: Path, run_stage, stage: str, name: str, damage: str
) -> None:
    project = shutil.copytree(tiny_run, tmp_path / "p", symlinks=True)
    target = project / name
    DAMAGE[damage](target)
    before = _fingerprints(project, target)

    line = run_stage(stage, project).one_error()

    assert line.startswith(f"error: {name}: "), line
    remedy = MOVE_STORE_ASIDE if name in STORE_FILES else REBUILD
    assert line.endswith(f"; {remedy}"), line
    assert _fingerprints(project, target) == before, "the failed stage changed another file"


# Holds a write lock on a SQLite file until killed, as a database browser or a stuck writer can.
LOCKER = (
    "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(600)"
)


@pytest.mark.parametrize(
    "name",
    # MLflow waits 20 s for its store's lock before it gives up
    ["outputs/optuna_store.db", pytest.param("outputs/mlflow.db", marks=pytest.mark.exhaustive)],
)
def test_a_store_locked_by_another_process_stops_tune_with_one_line(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_stage, name: str
) -> None:
    project = shutil.copytree(tiny_run, tmp_path / "p", symlinks=True)
    write_params(project, {"tune": {"n_trials": N_TRIALS + 1}})  # one new trial to store
    study_before = _trial_states(project)
    monkeypatch.setattr(studies, "LOCK_TIMEOUT_S", 1)  # MLflow's own wait is 20 s
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(project / name)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline() == "locked\n"
        line = run_stage("tune", project).one_error()
    finally:
        locker.kill()
        locker.wait()

    assert line == f"error: {name}: locked by another process; {CLOSE_THE_HOLDER}"
    assert _trial_states(project)[: len(study_before)] == study_before  # nothing lost


def _trial_states(project: Path) -> list[tuple[int, str]]:
    storage = f"sqlite:///{project / 'outputs/optuna_store.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return [(t.number, t.state.name) for t in study.trials]


def test_a_stage_exits_without_its_collections_yet_leaves_its_store_whole(
    tiny_run: Path, tmp_path: Path, run_stage
) -> None:
    """Stages skip the interpreter's exit-time collections (hpo.stage.skip_exit_collection)
    but close their SQLite connections: the MLflow store has no log left beside it. A stage run
    inside another process leaves that process's collector and connections alone."""
    project = shutil.copytree(tiny_run, tmp_path / "p", symlinks=True)
    subprocess.run(
        [sys.executable, "stages/evaluate.py"], cwd=project, env=subprocess_env(), check=True
    )
    assert not (project / "outputs/mlflow.db-wal").exists()
    runs = sqlite3.connect(f"file:{project / 'outputs/mlflow.db'}?mode=ro", uri=True)
    assert runs.execute("PRAGMA integrity_check").fetchone() == ("ok",)

    held = sqlite3.connect(":memory:")
    assert run_stage("evaluate", project).exit_code == 0
    assert held.execute("SELECT 1").fetchone() == (1,)
    assert gc.get_freeze_count() == 0
