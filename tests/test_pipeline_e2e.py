"""The real pipeline end to end: `dvc repro` on a tiny configuration, then every output."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import mlflow
import nbclient
import nbformat
import numpy as np
import optuna
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from conftest import TINY_PARAMS, dvc
from matplotlib import image
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from hpo.config import load_params
from hpo.search.space import distributions

N_TRIALS = TINY_PARAMS["tune"]["n_trials"]
EXPERIMENT = "xgboost-california-housing"


def _results(project: Path) -> dict:
    return json.loads((project / "outputs/results.json").read_text())


def _client(project: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{project / 'outputs/mlflow.db'}")


def test_results_json_has_every_key_in_range(tiny_run: Path) -> None:
    results = _results(tiny_run)
    space = distributions(load_params(tiny_run / "params.yaml").model.chosen.search_space)
    assert {"reg_lambda", "grow_policy"} < set(space)  # params.yaml's additions, no code
    assert set(results["best_params"]) == set(space)
    for name, value in results["best_params"].items():
        assert space[name]._contains(space[name].to_internal_repr(value)), (name, value)
    assert 0.3 < results["test_rmse"] < 1.0
    assert results["test_rmse"] == pytest.approx(results["test_mse"] ** 0.5)
    assert 0.5 < results["test_r2"] < 1.0
    assert 0.3 < results["baseline_rmse"] < 1.0
    assert results["optimization_time_seconds"] > 0
    counts = results["trials"]
    assert counts["complete"] + counts["pruned"] == N_TRIALS
    assert counts["failed"] == 0
    metrics = json.loads((tiny_run / "outputs/metrics.json").read_text())
    assert metrics["test_rmse"] == results["test_rmse"]
    assert "optimization_time_seconds" not in metrics


def test_study_holds_the_trials(tiny_run: Path) -> None:
    results = _results(tiny_run)
    storage = f"sqlite:///{tiny_run / 'outputs/optuna_study.db'}"
    study = optuna.load_study(study_name=results["study_name"], storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == N_TRIALS
    assert TrialState.RUNNING not in states
    assert study.best_trial.params == results["best_params"]
    assert study.best_value == pytest.approx(results["best_cv_mse"])
    assert study.metric_names == ["cv_mse"]
    # intermediate values were reported every interval_steps rounds, for the pruner
    assert all(step % 10 == 0 for t in study.trials for step in t.intermediate_values)
    assert any(t.intermediate_values for t in study.trials)


def test_mlflow_has_parent_run_with_a_child_per_trial(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_run)  # artifact locations are relative to the project root
    results = _results(tiny_run)
    client = _client(tiny_run)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    # relative, so the store works wherever the project is (host, container, another clone)
    assert experiment.artifact_location == "outputs/mlruns"
    parent = client.get_run(results["mlflow"]["study_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_cv_mse"] == pytest.approx(results["best_cv_mse"])
    # The budget is a metric of the study's run, not a param: the study outlives a change of it.
    assert "tune.n_trials" not in parent.data.params
    assert parent.data.params["tune.cv_folds"] == "2"
    assert parent.info.run_name == results["study_name"]  # no trial count: it could go stale
    assert parent.data.metrics["trial_budget"] == N_TRIALS
    assert "tune_summary.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    provenance = {
        k: v
        for k, v in parent.data.tags.items()
        if k in ("params_hash", "mlflow.source.git.commit")
    }
    assert len(provenance) == 2  # the tiny project is a git repository
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert len(children) == N_TRIALS
    for child in children:
        assert child.info.status == "FINISHED"
        assert set(child.data.params) >= {"max_depth", "learning_rate", "n_estimators"}
        assert child.data.tags["optuna.state"] in {"COMPLETE", "PRUNED"}
        assert child.data.tags.items() >= provenance.items()
        # The learning curve: every 10 rounds, and at the last round of a completed trial.
        steps = [p.step for p in client.get_metric_history(child.info.run_id, "cv_mse_curve")]
        assert steps
        assert all(step % 10 == 0 for step in steps[:-1])
        if child.data.tags["optuna.state"] == "COMPLETE":
            assert steps[-1] == int(child.data.params["n_estimators"])
            metrics = child.data.metrics
            assert {"cv_mse", "fold_0_mse", "fold_1_mse"} <= set(metrics)
            assert metrics["cv_mse"] == pytest.approx(
                (metrics["fold_0_mse"] + metrics["fold_1_mse"]) / 2
            )
    best = [
        c
        for c in children
        if c.data.tags["optuna.trial_number"] == str(results["best_trial_number"])
    ]
    assert best[0].data.metrics["cv_mse"] == pytest.approx(results["best_cv_mse"])


def test_a_lost_mlflow_store_is_rebuilt_from_the_study(tiny_run: Path, tmp_path: Path) -> None:
    project = shutil.copytree(tiny_run, tmp_path / "project", symlinks=True)
    (project / "outputs/mlflow.db").unlink()  # the study database is kept
    shutil.rmtree(project / "outputs/mlruns")
    dvc(project, "repro", "--force", "--single-item", "tune")
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    client = _client(project)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{summary['mlflow_parent_run_id']}'"
    )
    numbers = sorted(int(child.data.tags["optuna.trial_number"]) for child in children)
    assert numbers == list(range(N_TRIALS))  # every trial recorded again, none run again
    assert summary["best_value"] == _results(tiny_run)["best_cv_mse"]


def test_registered_model_loads_and_predicts(
    tiny_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_run)  # artifact locations are relative to the project root
    results = _results(tiny_run)
    mlflow.set_tracking_uri(f"sqlite:///{tiny_run / 'outputs/mlflow.db'}")
    name, version = (
        results["mlflow"]["registered_model"],
        results["mlflow"]["registered_model_version"],
    )
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    test = pd.read_parquet(tiny_run / "data/prepared/test.parquet").drop(columns="MedHouseVal")
    predicted = model.predict(test)
    assert list(predicted.columns) == ["prediction"]
    assert model.metadata.signature.outputs.input_names() == ["prediction"]
    expected = pd.read_csv(tiny_run / "outputs/plots/test_predictions.csv")["predicted"]
    np.testing.assert_allclose(predicted["prediction"], expected, rtol=1e-6)
    # What `mlflow models serve` installs: the pinned packages the model was trained with.
    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/{name}/{version}")
    pinned = Path(requirements).read_text().split()
    assert f"xgboost-cpu=={xgb.__version__}" in pinned
    assert f"mlflow=={mlflow.__version__}" in pinned
    assert not [p for p in pinned if p.startswith("xgboost==")], "the CUDA build of XGBoost"
    model_run = _client(tiny_run).get_run(results["mlflow"]["model_run_id"])
    assert model_run.data.metrics["test_rmse"] == pytest.approx(results["test_rmse"])


@pytest.mark.parametrize(
    "name", ["optimization_history.png", "param_importance.png", "test_evaluation.png"]
)
def test_pngs_are_real_images(tiny_run: Path, name: str) -> None:
    pixels = image.imread(tiny_run / "outputs" / name)
    assert pixels.shape[0] > 200
    assert pixels.shape[1] > 300
    assert pixels.std() > 0.01  # not a blank canvas


def test_dvc_plots_and_metrics_read_the_outputs(tiny_run: Path) -> None:
    shown = dvc(tiny_run, "metrics", "show", "--json").stdout
    assert "test_rmse" in shown
    # `dvc plots show` exits 0 even when a plot's file is missing: the errors are in the JSON.
    rendered = json.loads(dvc(tiny_run, "plots", "show", "--json").stdout)
    assert not rendered.get("errors")
    plots = rendered["data"]
    declared = yaml.safe_load((tiny_run / "dvc.yaml").read_text())["plots"]
    vega_titles = [title for plot in declared if isinstance(plot, dict) for title in plot]
    assert len(vega_titles) == 4
    for title in vega_titles:
        (plot,) = plots[title]
        assert plot["type"] == "vega"
        spec = {k: v for k, v in plot["content"].items() if k != "data"}
        assert plot["content"]["data"]["values"], f"{title}: no data points"
        axis_titles = {axis["title"] for axis in _encodings(spec, ("x", "y")) if axis.get("title")}
        assert len(axis_titles) == 2, f"{title}: axis titles {axis_titles}"
        assert not axis_titles & {"x", "y", "trial", "importance", "param"}, axis_titles
    (importance,) = plots["Parameter importance"]
    assert next(_encodings(importance["content"], ("y",)))["sort"] == "-x"  # largest on top
    for image_plot in (
        "outputs/optimization_history.png",
        "outputs/param_importance.png",
        "outputs/test_evaluation.png",
    ):
        assert plots[image_plot], f"{image_plot}: not rendered"


def _encodings(spec: object, channels: tuple[str, ...]) -> Iterator[dict]:
    """Every encoding of the given channels anywhere in a Vega-Lite spec (layers included)."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "encoding" and isinstance(value, dict):
                yield from (value[c] for c in channels if isinstance(value.get(c), dict))
            else:
                yield from _encodings(value, channels)
    elif isinstance(spec, list):
        for item in spec:
            yield from _encodings(item, channels)


def test_second_repro_does_nothing(tiny_run: Path) -> None:
    output = dvc(tiny_run, "repro").stdout
    assert "Running stage" not in output
    assert "up to date" in dvc(tiny_run, "status").stdout


def test_notebook_runs_on_the_outputs(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = shutil.copytree(tiny_run / "outputs", tmp_path / "outputs")
    notebook = nbformat.read(tiny_run / "notebooks/analysis.ipynb", as_version=4)
    monkeypatch.setenv("HPO_OUTPUTS", str(outputs))  # the kernel inherits it
    nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    outputs = [o for c in notebook.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    # No warnings: nothing on stderr, and no warning text among the printed outputs.
    assert not [o.text for o in outputs if o.get("name") == "stderr"]
    printed = "".join(o.get("text", "") for o in outputs)
    assert "Warning" not in printed
    assert f"{N_TRIALS} trials (" in printed
    results = _results(tiny_run)
    assert (
        f"best mean cv_mse: {results['best_cv_mse']:.4f} (trial {results['best_trial_number']})"
        in printed
    )
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 5  # history, learning curves, importance, test split, fold spread


@pytest.mark.parametrize("values", [[0.5], [0.5, 0.5, 0.5]], ids=["one-trial", "equal-scores"])
def test_a_study_without_differing_scores_is_plotted(tmp_path: Path, values: list) -> None:
    """`tune.n_trials: 1` passes validation, and a table the models cannot learn from scores
    every trial alike (fANOVA then fails on zero variance): the importance figure says it needs
    two completed trials of different scores instead of failing, and its table is empty."""
    from hpo.figures import history_figure, importance_evaluator, importance_figure
    from hpo.figures import importance_table as table_of

    study = optuna.create_study()
    for number, value in enumerate(values):
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5 * number},
                distributions={"x": optuna.distributions.FloatDistribution(0, 2)},
                value=value,
            )
        )
    importances = table_of(study, importance_evaluator("fanova", 0))
    assert importances.empty
    assert list(importances.columns) == ["param", "importance"]
    figure = importance_figure(importances, "fanova")
    assert "needs 2 completed trials of different scores" in figure.axes[0].texts[0].get_text()
    history_figure(study).savefig(tmp_path / "history.png")
    assert (tmp_path / "history.png").stat().st_size > 0
