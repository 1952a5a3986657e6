"""Host-side checks of what the container left in ./outputs (run from the run folder).

check_docker_outputs.py                      a finished run: every output, MLflow, the UI
check_docker_outputs.py --wait-for-trials N  wait until N trials are finished
check_docker_outputs.py --interrupted        a stopped run: nothing left RUNNING
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

OUTPUTS = Path("outputs")
EXPERIMENT = "xgboost-california-housing"


def main() -> None:
    if sys.argv[1:2] == ["--wait-for-trials"]:
        _wait_for_trials(int(sys.argv[2]))
    elif sys.argv[1:] == ["--interrupted"]:
        _check_interrupted()
    else:
        _check_finished()


def _finished_trials() -> int:
    try:
        with sqlite3.connect(f"file:{OUTPUTS / 'optuna_study.db'}?mode=ro", uri=True) as db:
            query = "SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')"
            return db.execute(query).fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet


def _wait_for_trials(count: int) -> None:
    deadline = time.monotonic() + 300
    while _finished_trials() < count:
        assert time.monotonic() < deadline, "the container made no progress"
        time.sleep(0.5)
    print(f"   {count} trials finished in the container")


def _check_interrupted() -> None:
    storage = f"sqlite:///{OUTPUTS / 'optuna_study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    assert "RUNNING" not in states, states
    assert states.count("COMPLETE") + states.count("PRUNED") >= 3
    client = MlflowClient(f"sqlite:///{(OUTPUTS / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"], "MLflow runs left RUNNING"
    parents = [r for r in runs if "optuna.study_name" in r.data.tags]
    assert [p.info.status for p in parents] == ["KILLED"]
    print(f"   study kept {len(states)} trials, none RUNNING; MLflow study run KILLED")


def _check_finished() -> None:
    n_trials = yaml.safe_load(Path("params.yaml").read_text())["tune"]["n_trials"]
    results = json.loads((OUTPUTS / "results.json").read_text())
    assert 0.3 < results["test_rmse"] < 1.0, results["test_rmse"]
    assert results["trials"]["complete"] + results["trials"]["pruned"] == n_trials
    for name in ("optuna_study.db", "mlflow.db", "model.ubj", "optimization_history.png",
                 "param_importance.png", "metrics.json"):  # fmt: skip
        path = OUTPUTS / name
        assert path.stat().st_size > 0, name
        owner = int(os.environ.get("EXPECTED_UID", os.getuid()))
        assert path.stat().st_uid == owner, f"{name} is not owned by uid {owner}"
    print(f"   results.json: test RMSE {results['test_rmse']:.4f}, trials {results['trials']}")

    study = optuna.load_study(
        study_name=results["study_name"], storage=f"sqlite:///{OUTPUTS / 'optuna_study.db'}"
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == len(study.trials) >= n_trials
    print(f"   study {study.study_name}: {len(study.trials)} trials, all finished")

    uri = f"sqlite:///{(OUTPUTS / 'mlflow.db').resolve()}"
    client = MlflowClient(uri)
    parent_id = results["mlflow"]["study_run_id"]
    children = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == len(study.trials)
    print(f"   MLflow: parent run {parent_id} with {len(children)} trial runs")

    mlflow.set_tracking_uri(uri)
    name = results["mlflow"]["registered_model"]
    version = results["mlflow"]["registered_model_version"]
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    predictions = pd.read_csv(OUTPUTS / "plots/test_predictions.csv")
    assert len(predictions) > 0
    print(f"   registered model {name} v{version} loads on the host: {type(model).__name__}")

    artifact = _fetch_through_mlflow_ui(parent_id, "tune_summary.json")
    assert json.loads(artifact)["study_name"] == results["study_name"]
    print("   `mlflow ui` on the host serves the container's artifacts")


def _fetch_through_mlflow_ui(run_id: str, path: str) -> bytes:
    """Start `mlflow ui` as the README says and download one artifact over HTTP."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
         "sqlite:///outputs/mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        url = f"{base}/get-artifact?path={path}&run_uuid={run_id}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
