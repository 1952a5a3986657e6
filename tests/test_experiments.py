"""`dvc exp run` grows a study bit-identically to a run from scratch, cuts it, and returns to the
committed run, without evaluating a stored trial again; the MLflow runs say which experiment
ran them."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import (
    GROWN_SPACE,
    TINY_PARAMS,
    commit,
    deep_update,
    dvc,
    make_project,
    run,
    trial_records,
)
from mlflow.tracking import MlflowClient
from test_reproducibility import _finished_at

N_TRIALS = TINY_PARAMS["tune"]["n_trials"]


def _trial_runs(project: Path, results: dict) -> list:
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    study_run = client.get_run(results["mlflow"]["study_run_id"])
    return client.search_runs(
        [study_run.info.experiment_id],
        f"tags.mlflow.parentRunId = '{study_run.info.run_id}'",
        max_results=1000,
    )


def test_experiments_grow_and_cut_the_study_without_recomputing_it(
    tiny_run: Path, tmp_path: Path
) -> None:
    """4 trials, then `dvc exp run -S tune.n_trials=6`: the trials and model of a 6-trial run
    from scratch, from 2 new trials. Then 3 trials and back to the committed 4: no new trial."""
    from_scratch = tiny_run  # 6 trials
    project = make_project(tmp_path / "exp", deep_update({"tune": {"n_trials": 4}}, GROWN_SPACE))
    dvc(project, "repro")
    commit(project, "a 4-trial run")
    committed = trial_records(project)
    committed_model = (project / "outputs/model/model.ubj").read_bytes()
    finished_at = _finished_at(project)

    dvc(project, "exp", "run", "-S", f"tune.n_trials={N_TRIALS}", "--name", "grown")
    assert trial_records(project) == trial_records(from_scratch)
    assert (project / "outputs/model/model.ubj").read_bytes() == (
        from_scratch / "outputs/model/model.ubj"
    ).read_bytes()
    grown = _finished_at(project)
    assert {n: grown[n] for n in finished_at} == finished_at, "a stored trial was recomputed"
    results = json.loads((project / "outputs/results.json").read_text())
    assert len(_trial_runs(project, results)) == len(grown)  # one MLflow run per trial, once
    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    head = run(project, "git", "rev-parse", "HEAD").stdout.strip()
    # The study run says what its session ran from. (The best trial, and so the model, is the
    # 4-trial run's: it is registered once, under that run's tags.)
    tags = client.get_run(results["mlflow"]["study_run_id"]).data.tags
    assert tags["dvc_exp_name"] == "grown"
    assert tags["mlflow.source.git.commit"] == head
    assert "grown" in dvc(project, "exp", "show", "--json").stdout

    done = dvc(project, "exp", "run", "-S", "tune.n_trials=3", "--name", "three-trials")
    cut = trial_records(project)
    stored = len(_finished_at(project))
    said = f"tune.n_trials=3: the first {len(cut)} of the study's {stored} stored trials; no trial"
    assert said in done.stdout + done.stderr
    finished = [i for i, record in enumerate(committed) if record[1] in ("COMPLETE", "PRUNED")]
    assert cut == committed[: finished[2] + 1]  # the first trials holding 3 finished ones
    # The study run ends when its last trial did, not when the cut study was last opened.
    last_told = max(_finished_at(project)[n] for n in range(len(cut)))
    study_run = client.get_run(results["mlflow"]["study_run_id"])
    assert study_run.info.end_time == int(last_told.timestamp() * 1000)
    assert study_run.info.run_name == results["study_name"]  # no trial count to go stale
    assert study_run.data.tags["dvc_exp_name"] == "three-trials"

    run(project, "git", "checkout", "--", "params.yaml", "dvc.lock")
    dvc(project, "repro")
    assert trial_records(project) == committed
    assert (project / "outputs/model/model.ubj").read_bytes() == committed_model
    assert _finished_at(project) == grown, "no trial ran after the grown experiment"
    assert len(_trial_runs(project, results)) == len(grown)
    # The study run says what its last session ran from: outside an experiment, none. (The
    # repro above took tune's outputs from DVC's run cache, without a session.)
    dvc(project, "repro", "--force", "tune")
    assert "dvc_exp_name" not in client.get_run(study_run.info.run_id).data.tags
