"""benchmarks/bench_tune.py's pooled runs: saved, loaded and reported over the same seeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_tune.py"
SETTINGS = {"overrides": {"tune.n_trials": 3}, "params_sha256": "p", "trial_code_sha256": "c"}


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(SCRIPT.parent))  # its `from scratch_project import ...`
    spec = importlib.util.spec_from_file_location("bench_tune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _run(bench, system: str, seed: int):
    finished = [(3.0, 0.25), (1.0, 0.30), (2.0, None), (4.0, 0.27)]
    return bench.Run(system, seed, 5.0, finished, {"max_depth": 6}, 1200, 150.0, 0.44)


def test_a_saved_run_loads_with_the_same_curve(bench, tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    saved = [_run(bench, bench.PIPELINE, 0), _run(bench, bench.PLAIN, 0)]
    for run in saved:
        bench.save_run(path, run, SETTINGS)

    loaded = bench.load_runs(path, SETTINGS)

    assert loaded == saved
    assert loaded[0].curve == [(1.0, 0.30), (3.0, 0.25)]
    assert (loaded[0].best_cv_mse, loaded[0].time_to(0.26)) == (0.25, 3.0)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("other settings", "holds a run with other params, --set or trial code"),
        ("cut off", "is not a saved run (cut off?)"),
        ("repeated", "repeats pipeline, seed 0"),
    ],
)
def test_a_runs_file_that_cannot_be_pooled_stops_with_one_line(
    bench, tmp_path: Path, damage: str, message: str
) -> None:
    path = tmp_path / "runs.jsonl"
    bench.save_run(path, _run(bench, bench.PIPELINE, 0), SETTINGS)
    if damage == "other settings":
        bench.save_run(path, _run(bench, bench.PLAIN, 0), {**SETTINGS, "params_sha256": "q"})
    elif damage == "cut off":
        path.write_text(path.read_text() + path.read_text()[:40])
    else:
        bench.save_run(path, _run(bench, bench.PIPELINE, 0), SETTINGS)

    with pytest.raises(SystemExit) as stopped:
        bench.load_runs(path, SETTINGS)

    assert str(stopped.value) == f"error: {path}:2 {message}"


def test_the_report_keeps_only_the_seeds_every_system_ran(
    bench, capsys: pytest.CaptureFixture[str]
) -> None:
    pairs = [(bench.PIPELINE, 0), (bench.PLAIN, 0), (bench.PLAIN, 1)]
    runs = [_run(bench, system, seed) for system, seed in pairs]

    kept = bench.same_seeds(runs)

    assert [(r.system, r.seed) for r in kept] == pairs[:2]
    assert "seeds [1] are left out" in capsys.readouterr().out
