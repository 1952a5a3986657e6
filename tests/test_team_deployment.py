"""The team deployment of docs/cluster.md, as written, against real services on loopback: the
same trials, model bytes and metrics as local threads, every run on the authenticated server,
no password anywhere, and each row of the team's "When a setting is wrong" table."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import mlflow
import optuna
import pytest
from conftest import StageRun, make_project, trial_records
from mlflow.tracking import MlflowClient
from recipes import documented_settings, healthy, port_open, resolving_example_hosts, site
from services import postgres_server
from test_scale_out import (
    EXPERIMENT,
    N_TRIALS,
    SCALE,
    _assert_same_results,
    _secrets_shown,
    reference,  # noqa: F401 - the fixture
)


def test_the_team_recipes_give_the_same_results(
    reference: Path,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    """docs/cluster.md's team deployment as written, each machine's block in turn: Dask over
    TLS, the study on PostgreSQL with the password in ~/.pgpass, the runs on an MLflow server
    with its basic-auth app, reached by a host name that is not localhost."""
    admin_password, password = "4dmin/Pass@word:1%", "hpo-Pass/w@rd:2%"
    with postgres_server(tmp_path / "db") as db, site(tmp_path / "home", db.port) as here:
        db.create_database("hpo")
        db.create_database("mlflow")
        here.run("tls-certificates")
        here.run("tls-config")
        here.start("tls-scheduler", port_open(here.dask_port))
        here.start("tls-workers", port_open(here.dask_port))
        here.run("pgpass", typed=(db.password,))
        here.start("mlflow-server", healthy(here.mlflow_port), typed=(admin_password,))
        here.run("mlflow-account", typed=(admin_password, password))
        project = make_project(tmp_path / "p", SCALE)
        done = here.run("driver", typed=(password,), cwd=project)
        _assert_same_results(project, reference)
        assert not (project / "outputs/mlflow.db").exists(), "runs went to the server only"
        uri = f"http://mlflow.example:{here.mlflow_port}"
        with (
            mock.patch.dict(
                os.environ,
                {"MLFLOW_TRACKING_USERNAME": "hpo", "MLFLOW_TRACKING_PASSWORD": password},
            ),
            resolving_example_hosts(),
        ):
            runs = _check_server_runs(project, uri, tmp_path)
        registered = re.findall(
            r"Register worker addr: (\w+)://127\.0\.0\.1:",
            (here.home / "tls-scheduler.err").read_text(),
        )
        assert registered == ["tls", "tls"], "both workers joined over TLS"
        assert {
            r.data.tags.get("hpo.workers") for r in runs if "optuna.trial_number" in r.data.tags
        } == {"2"}

        # The study lives in PostgreSQL; outputs/optuna_study.db is its copy.
        summary = json.loads((project / "outputs/tune_summary.json").read_text())
        shared = optuna.load_study(study_name=summary["study_name"], storage=db.url("hpo"))
        assert [(t.number, t.state.name, t.value) for t in shared.trials] == [
            (*record[:2], record[3]) for record in trial_records(project)
        ]
        command_lines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline")]

        # The team table of "When a setting is wrong": each row against this deployment, the
        # rows at once (each is a new interpreter that mostly imports and waits).
        def try_row(variables: dict[str, str]) -> tuple[dict[str, str], StageRun]:
            row = {name: here.on_loopback(value) for name, value in variables.items()}
            env = {k: v for k, v in here.env.items() if k not in variables}
            failed = subprocess.run(
                [sys.executable, "stages/tune.py"],
                cwd=project, env={**env, **row}, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            return row, StageRun(failed.returncode, failed.stdout, failed.stderr)

        rows = documented_settings("team")
        with ThreadPoolExecutor(len(rows)) as pool:
            tried = list(pool.map(try_row, [variables for variables, _ in rows]))
        for (row, failed), (_, printed) in zip(tried, rows, strict=True):
            assert failed.one_error() == here.on_loopback(printed)
            assert not _secrets_shown(row, failed.stderr)

    # No password on a running service's command line, in the driver's output, the files, or
    # the runs' params and tags: as typed or URL-quoted.
    secrets = {
        variant
        for secret in (db.password, admin_password, password)
        for variant in (secret, quote(secret, safe=""))
    }
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
        assert not [line for line in command_lines if secret.encode() in line]
    for path in (project / "outputs").rglob("*"):
        if path.is_file():
            assert not [s for s in secrets if s.encode() in path.read_bytes()], path
    for logged in runs:
        values = [*logged.data.params.values(), *logged.data.tags.values()]
        assert not [v for v in values for s in secrets if s in v], logged.info.run_name


def _check_server_runs(project: Path, uri: str, tmp_path: Path) -> list:
    """Parent, trial and final-model runs, metrics, artifacts and the model version on the
    server, as the project's outputs say; returns the runs."""
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if "optuna.study_name" in r.data.tags]
    trial_runs = [r for r in runs if "optuna.trial_number" in r.data.tags]
    (final,) = [r for r in runs if r.info.run_name.startswith("final-model ")]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_cv_mse"] == summary["best_value"]
    assert len(trial_runs) == N_TRIALS
    assert {r.data.tags["hpo.executor"] for r in trial_runs} == {"dask"}
    metrics = json.loads((project / "outputs/metrics.json").read_text())
    assert final.data.metrics["test_rmse"] == pytest.approx(metrics["test_rmse"])
    fetched = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="tune_summary.json",
        dst_path=str(tmp_path / "fetched"),
        tracking_uri=uri,
    )
    assert json.loads(Path(fetched).read_text())["study_name"] == summary["study_name"]
    model_info = json.loads((project / "outputs/model_info.json").read_text())
    version = client.get_model_version(
        model_info["registered_model"], str(model_info["registered_model_version"])
    )
    assert version.run_id == final.info.run_id
    mlflow.set_tracking_uri(uri)
    served = mlflow.artifacts.download_artifacts(
        artifact_uri=model_info["model_uri"], dst_path=str(tmp_path / "served")
    )
    served_model = Path(served) / "artifacts" / "model.ubj"
    assert served_model.read_bytes() == (project / "outputs/model/model.ubj").read_bytes()
    return runs
