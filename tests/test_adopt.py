"""Your data, your task, your model: a table of another dataset copied into data/ and named by
data.path, data.target and data.task (model.family for LightGBM), with nothing else edited but
the tests' tiny budget, runs all five stages through `dvc repro`, registers a model that
`mlflow models serve` answers (values, or labels and class probabilities), and reruns
bit-identical. The tables are scikit-learn's bundled datasets, written to CSV with text
labels, a text column and missing cells, as real tables have them."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from conftest import dvc, make_project, tiered, trial_records
from services import web_ui
from sklearn import datasets

# dataset -> (task, target column)
TABLES = {
    "diabetes": ("regression", "progression"),
    "breast_cancer": ("binary", "diagnosis"),
    "wine": ("multiclass", "cultivar"),
}
CASES = tiered(
    [
        pytest.param((table, family), id=f"{table}-{family}")
        for table in TABLES
        for family in ("xgboost", "lightgbm")
    ],
    # With the tiny run's XGBoost regression (conftest), every task and every family at least
    # once in the default tier.
    {"breast_cancer-lightgbm", "wine-lightgbm"},
)


def write_table(name: str, path: Path) -> pd.DataFrame:
    """The dataset as a user's CSV: text labels, a text feature with empty cells, and missing
    numbers."""
    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    task, target = TABLES[name]
    frame = bunch.frame.rename(columns={"target": target})
    if task != "regression":
        frame[target] = np.asarray(bunch.target_names, dtype=object)[bunch.target]
    first = frame.columns[0]
    frame["band"] = np.where(frame[first] > frame[first].median(), "high", "low")
    frame.loc[frame.index % 7 == 0, "band"] = None
    frame.loc[frame.index % 5 == 0, frame.columns[1]] = np.nan
    frame.to_csv(path, index=False)
    return frame


def adopted(root: Path, table: str, family: str) -> Path:
    """A project whose params name the table, its target and task, and the family; run."""
    project = make_project(root, {"model": {"family": family}})
    write_table(table, project / "data" / f"{table}.csv")
    params = (project / "params.yaml").read_text()
    task, target = TABLES[table]
    params = params.replace("path: data/california_housing.csv.gz", f"path: data/{table}.csv")
    params = params.replace("target: MedHouseVal", f"target: {target}")
    params = params.replace("task: regression", f"task: {task}")
    (project / "params.yaml").write_text(params)
    dvc(project, "repro")
    return project


RUNS: dict[tuple[str, str], Path] = {}  # the module's adopted projects, by case


@pytest.fixture(scope="module", params=CASES)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    table, family = request.param
    project = adopted(tmp_path_factory.mktemp(f"{table}-{family}") / "p", table, family)
    RUNS[table, family] = project
    return project, table, family


def _json(project: Path, name: str) -> dict:
    return json.loads((project / "outputs" / name).read_text())


def test_every_stage_reports_in_the_task_s_terms(run: tuple) -> None:
    project, table, family = run
    task, target = TABLES[table]
    results, metrics = _json(project, "results.json"), _json(project, "metrics.json")
    assert (results["task"], results["family"]) == (task, family)
    reported = ["mse", "rmse", "mae", "r2"] if task == "regression" else [
        "logloss", "accuracy", "f1_macro", "roc_auc"]  # fmt: skip
    assert [k for k in metrics if k.startswith("test_")] == [f"test_{m}" for m in reported]
    assert [k for k in metrics if k.startswith("baseline_")] == [f"baseline_{m}" for m in reported]
    metric = {"regression": "mse", "binary": "logloss", "multiclass": "mlogloss"}[task]
    study = optuna.load_study(
        study_name=results["study_name"], storage=f"sqlite:///{project / 'outputs/optuna_study.db'}"
    )
    assert results["study_name"].startswith(f"{family}-{metric}-")
    assert study.metric_names == [f"cv_{metric}"]
    assert metrics[f"best_cv_{metric}"] == study.best_value
    if task != "regression":
        assert 0.5 < metrics["test_accuracy"] <= 1
        predictions = pd.read_csv(project / "outputs/plots/test_predictions.csv")
        labels = set(pd.read_csv(project / f"data/{table}.csv")[target])
        assert set(predictions["actual"]) <= labels
        assert set(predictions["predicted"]) <= labels
    curve = pd.read_csv(project / "outputs/plots/test_curve.csv")
    series = set(curve["series"])
    expected = {"regression": 1, "binary": 1, "multiclass": 3}[task]
    assert len(series) == expected
    assert (curve["x"] >= 0).all()
    plots = json.loads(dvc(project, "plots", "show", "--json").stdout)
    assert not plots.get("errors")
    assert plots["data"]["Test split"][0]["content"]["data"]["values"]
    assert results["mlflow"]["registered_model"] == f"{family}-{table.replace('_', '-')}"


def test_the_registered_model_is_served_as_the_task_wants(run: tuple) -> None:
    project, table, _family = run
    task, target = TABLES[table]
    results = _json(project, "results.json")
    registered = results["mlflow"]
    model = f"models:/{registered['registered_model']}/{registered['registered_model_version']}"
    rows = pd.read_csv(project / f"data/{table}.csv").drop(columns=target).head(6)
    tracking = {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'outputs/mlflow.db'}"}
    args = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local"]
    with web_ui(args, "mlflow models serve", project, project, "/ping", tracking) as url:

        def answer(frame: pd.DataFrame) -> pd.DataFrame:
            split = json.loads(frame.to_json(orient="split", index=False))
            body = json.dumps({"dataframe_split": split}).encode()
            request = urllib.request.Request(
                f"{url}/invocations", body, {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(request, timeout=60) as response:
                return pd.DataFrame(json.loads(response.read())["predictions"])

        served = answer(rows)
        # "band" is optional in the signature (missing in some training rows): it may be left out.
        pd.testing.assert_frame_equal(
            answer(rows.drop(columns="band")), answer(rows.assign(band=None))
        )
    assert len(served) == len(rows)
    if task == "regression":
        assert list(served.columns) == ["prediction"]
        assert served["prediction"].between(0, 400).all()
        return
    classes = sorted(set(pd.read_csv(project / f"data/{table}.csv")[target]))
    assert list(served.columns) == ["label", *(f"probability_{c}" for c in classes)]
    probabilities = served.drop(columns="label").to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-6)
    assert list(served["label"]) == [classes[i] for i in probabilities.argmax(axis=1)]


@pytest.mark.parametrize(
    "case",
    tiered(
        [pytest.param((t, f), id=f"{t}-{f}") for t in TABLES for f in ("xgboost", "lightgbm")],
        {"wine-lightgbm"},
    ),
)
def test_a_rerun_from_scratch_is_bit_identical(case: tuple[str, str], tmp_path: Path) -> None:
    first = RUNS.get(case) or adopted(tmp_path / "first", *case)
    second = adopted(tmp_path / "second", *case)
    assert trial_records(first) == trial_records(second)
    model = next((first / "outputs/model").iterdir()).name
    assert (first / "outputs/model" / model).read_bytes() == (
        second / "outputs/model" / model
    ).read_bytes()
    assert _json(first, "metrics.json") == _json(second, "metrics.json")
