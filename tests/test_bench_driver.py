"""benchmarks/bench_driver.py on a tiny cluster: the real driver, simulated workers, its output."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

SCRIPT = REPO / "benchmarks" / "bench_driver.py"


def _load_module():
    spec = importlib.util.spec_from_file_location("bench_driver", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_window_bound_idles_slots_behind_a_long_head_trial() -> None:
    bound = _load_module().window_bound
    assert bound([1.0] * 8, slots=2, window=4) == 4.0  # equal trials: every slot always busy
    # Trial 0 takes 10: trials 1-3 finish early, but trial 4 is asked only once 0 is told.
    assert bound([10.0] + [1.0] * 4, slots=2, window=4) == 11.0


def test_tiny_run_records_every_trial_and_prints_the_table(tmp_path, tiny_run) -> None:
    rows_file = tmp_path / "rows.json"
    # A tracking server in the environment must not receive the benchmark's runs.
    env = {**os.environ, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    done = subprocess.run(
        [
            *(sys.executable, str(SCRIPT), "--slots", "2", "--trials", "4", "30", "--extra"),
            *("--mean-trial", "0.05", "--json", str(rows_file)),
            *("--reference", str(tiny_run)),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "MLFLOW_TRACKING_URI ignored" in done.stdout
    rows = json.loads(rows_file.read_text())
    assert [(row["slots"], row["trials"]) for row in rows] == [(2, 4), (2, 30)]
    for row in rows:
        # The replayed outcomes went through the real ask/tell, study and MLflow store.
        assert row["complete"] + row["pruned"] == row["trials"]
        assert row["failed"] == 0
        assert row["mlflow_runs"] == row["trials"]
        assert 0 < row["efficiency"] <= row["bound_efficiency"] * 1.1 <= 1.1
        assert row["cpu_ms"] > 0
        assert row["floor_ms"] > 0  # Optuna alone, measured beside the driver
        assert row["writer_cpu_s"] > 0  # the writer process stored and recorded the trials
        assert row["task_kb_last"] > 0
    header = next(line for line in done.stdout.splitlines() if line.lstrip().startswith("slots"))
    table = done.stdout.split(header)[1].split("\n\n")[0].splitlines()[2:]
    assert [line.split()[:2] for line in table] == [["2", "4"], ["2", "30"]]
    assert [float(line.split()[5]) for line in table] == [
        pytest.approx(row["efficiency"], abs=0.006) for row in rows
    ]
    assert "driver <= 2.0x Optuna alone at 2 slots, 30 trials" in done.stdout
