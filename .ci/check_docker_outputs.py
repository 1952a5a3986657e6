"""Host-side checks of what the container left in ./outputs (run from the run folder).

check_docker_outputs.py                      a finished run of the family in ./params.yaml:
                                             every output, the study, MLflow, the UI
check_docker_outputs.py --plots-page         the page of `dvc plots show` in the container
check_docker_outputs.py --wait-for-trials N  wait until N trials are finished
check_docker_outputs.py --interrupted        a stopped run: nothing left RUNNING
check_docker_outputs.py --dask-worker ADDRESS RUN_DIR
    with the container as the only worker of the scheduler at ADDRESS: tune a project of the
    image's code and RUN_DIR's params on the host with DASK_SCHEDULER_ADDRESS, check that the
    container ran its trials, and that they equal the trials of the container's own run in
    RUN_DIR

IMAGE_SOURCE names the folder the image was built from (default: this checkout).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import yaml
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
# What the image was built from (.ci/docker-check copies the build context there), else the
# checkout: its dvc.yaml, params, templates and library, unchanged by edits to the checkout.
SOURCE = Path(os.environ.get("IMAGE_SOURCE", ROOT)).resolve()
sys.path.insert(0, str(SOURCE / "stages"))
from hpo.tracking.mlflow import names  # noqa: E402

OUTPUTS = Path("outputs")
# The image links data/prepared to outputs/.dvc-state/prepared (Dockerfile): every other path
# dvc.yaml declares must lie in outputs/, the only folder a container writes.
PREPARED, PREPARED_IN_OUTPUTS = Path("data/prepared"), OUTPUTS / ".dvc-state/prepared"
MODEL_FILES = {"xgboost": "model.ubj", "lightgbm": "model.txt"}  # in the model folder
WORKER_NAME = "docker-worker"  # the --name of the container's `dask worker`
TRIAL_TASK = "evaluate_on_worker"  # the key prefix of a trial's Dask task (hpo.execution.dask)


def main() -> None:
    if sys.argv[1:2] == ["--wait-for-trials"]:
        _wait_for_trials(int(sys.argv[2]))
    elif sys.argv[1:] == ["--interrupted"]:
        _check_interrupted()
    elif sys.argv[1:] == ["--plots-page"]:
        _check_plots_page()
    elif sys.argv[1:2] == ["--dask-worker"]:
        _check_dask_worker(sys.argv[2], Path(sys.argv[3]))
    else:
        _check_finished()


def _finished_trials() -> int:
    try:
        with sqlite3.connect(f"file:{OUTPUTS / 'optuna_store.db'}?mode=ro", uri=True) as db:
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
    storage = f"sqlite:///{OUTPUTS / 'optuna_store.db'}"
    (name,) = optuna.get_all_study_names(storage)
    states = [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    # The trials in flight stay RUNNING in the store: the next run evaluates them again.
    assert "FAIL" not in states, states
    assert states.count("COMPLETE") + states.count("PRUNED") >= 3
    client = MlflowClient(f"sqlite:///{(OUTPUTS / 'mlflow.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name(_experiment()).experiment_id])
    assert not [r for r in runs if r.info.status == "RUNNING"], "MLflow runs left RUNNING"
    parents = [r for r in runs if "optuna.study_name" in r.data.tags]
    assert [p.info.status for p in parents] == ["KILLED"]
    print(f"   study kept {len(states)} trials, none FAIL; MLflow study run KILLED")


def _params() -> dict:
    return yaml.safe_load(Path("params.yaml").read_text())


def _experiment() -> str:
    """The MLflow experiment and registered model of the run's family and table."""
    params = _params()
    return names(params["model"]["family"], params["data"]["path"])


def _declared_paths() -> dict[str, Path]:
    """dvc.yaml's `paths` (the image's copy is the checkout's), where the container put them."""
    entries = yaml.safe_load((SOURCE / "dvc.yaml").read_text())["vars"]
    declared = next(entry["paths"] for entry in entries if "paths" in entry)
    located = {}
    for name, value in declared.items():
        path = Path(value)
        if path.is_relative_to(PREPARED):
            path = PREPARED_IN_OUTPUTS / path.relative_to(PREPARED)
        assert path.is_relative_to(OUTPUTS), f"paths.{name} = {value}: outside outputs/"
        located[name] = path
    return located


def _check_finished() -> None:
    params = _params()
    family, task = params["model"]["family"], params["data"]["task"]
    n_trials = params["tune"]["n_trials"]
    owner = int(os.environ.get("EXPECTED_UID", os.getuid()))
    declared = _declared_paths()
    for name, path in declared.items():
        assert path.exists(), f"paths.{name}: no {path}"
        assert path.is_dir() or path.stat().st_size > 0, f"paths.{name}: {path} is empty"
        assert path.stat().st_uid == owner, f"{path} is not owned by uid {owner}"
    model_files = sorted(p.name for p in declared["model"].iterdir())
    assert model_files == [MODEL_FILES[family]], (family, model_files)
    model_file = declared["model"] / MODEL_FILES[family]
    print(f"   all {len(declared)} paths of dvc.yaml there, owned by uid {owner}; "
          f"model {model_file}")  # fmt: skip

    results = json.loads(declared["results"].read_text())
    summary = json.loads(declared["tune_summary"].read_text())
    assert (results["family"], results["task"]) == (family, task), results
    assert 0.3 < results["test_rmse"] < 1.0, results["test_rmse"]
    assert results["trials"]["complete"] + results["trials"]["pruned"] == n_trials
    metric = summary["metric"]
    assert results[f"best_cv_{metric}"] == summary["best_value"], (results, summary)
    print(f"   results.json: {family}, test RMSE {results['test_rmse']:.4f}, "
          f"trials {results['trials']}")  # fmt: skip

    study = optuna.load_study(
        study_name=summary["study_name"], storage=f"sqlite:///{declared['study_copy']}"
    )
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) == len(study.trials) >= n_trials
    assert study.metric_names == [f"cv_{metric}"], study.metric_names
    assert (study.best_value, study.best_trial.number) == (
        summary["best_value"], summary["best_trial_number"],
    )  # fmt: skip
    print(f"   study {study.study_name}: {len(study.trials)} trials, all finished; objective "
          f"{study.metric_names[0]}, best value as in tune_summary.json")  # fmt: skip

    uri = f"sqlite:///{declared['mlflow_db'].resolve()}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(_experiment())
    assert experiment is not None, f"no MLflow experiment {_experiment()}"
    parent_id = results["mlflow"]["study_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.experiment_id == experiment.experiment_id
    assert parent.info.run_name == study.study_name, parent.info.run_name
    children = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert len(children) == len(study.trials), len(children)
    # A completed trial's run holds its final cv_<metric>; a pruned one's only its curve, whose
    # last point is the value Optuna stored for it.
    for run in children:
        trial = study.trials[int(run.data.tags["optuna.trial_number"])]
        assert run.data.tags["optuna.state"] == trial.state.name, run.info.run_name
        curve = client.get_metric_history(run.info.run_id, f"cv_{metric}_curve")
        if trial.state == optuna.trial.TrialState.COMPLETE:
            assert run.data.metrics[f"cv_{metric}"] == trial.value, run.info.run_name
        else:
            assert f"cv_{metric}" not in run.data.metrics, run.info.run_name
            last = max(curve, key=lambda point: point.step)
            assert last.value == trial.value, (run.info.run_name, last.value, trial.value)
    print(f"   MLflow experiment {experiment.name}: study run {parent.info.run_name} with "
          f"{len(children)} trial runs; completed ones' cv_{metric} and pruned ones' last "
          f"curve point the study's values")  # fmt: skip

    mlflow.set_tracking_uri(uri)
    name = results["mlflow"]["registered_model"]
    version = results["mlflow"]["registered_model_version"]
    assert name == experiment.name, name
    model_uri = f"models:/{name}/{version}"
    model = mlflow.pyfunc.load_model(model_uri)
    test = pd.read_parquet(declared["test"])
    served = model.predict(test.drop(columns=params["data"]["target"]))
    written = pd.read_csv(declared["predictions_csv"])
    assert len(written) == len(test) > 0
    np.testing.assert_allclose(served["prediction"], written["predicted"], rtol=1e-6)
    native = Path(mlflow.artifacts.download_artifacts(model_uri)) / "artifacts" / model_file.name
    assert native.read_bytes() == model_file.read_bytes(), f"{native} differs from {model_file}"
    print(f"   registered model {name} v{version} loads on the host and predicts the "
          f"container's {len(test)} test predictions; its artifacts/{model_file.name} is "
          f"{model_file}")  # fmt: skip

    artifact = _fetch_through_mlflow_ui(parent_id, "tune_summary.json")
    assert json.loads(artifact)["study_name"] == results["study_name"]
    print("   `mlflow ui` on the host serves the container's artifacts")


def _check_plots_page() -> None:
    """`dvc plots show` in the container: a page with every chart of dvc.yaml and its images."""
    page_file = OUTPUTS / "dvc_plots/index.html"
    owner = int(os.environ.get("EXPECTED_UID", os.getuid()))
    assert page_file.stat().st_uid == owner, f"{page_file} is not owned by uid {owner}"
    page = page_file.read_text()
    # The project's HTML template (.dvc/plots_page.html, plots.html_template), not DVC's own.
    template = (SOURCE / ".dvc/plots_page.html").read_text()
    title = template[template.index("<title>") : template.index("</title>")]
    assert title in page, f"{page_file}: not made with .dvc/plots_page.html ({title})"
    plots = yaml.safe_load((SOURCE / "dvc.yaml").read_text())["plots"]
    charts = [title for plot in plots if isinstance(plot, dict) for title in plot]
    images = [plot for plot in plots if isinstance(plot, str)]
    missing = [title for title in charts if json.dumps(title) not in page]
    assert not missing, f"charts missing from {page_file}: {missing}"
    drawn = sorted(p.name for p in (OUTPUTS / "dvc_plots/static").glob("*.png"))
    assert len(drawn) == len(images), (drawn, images)
    assert all(f"static/{p}" in page for p in drawn), drawn
    print(f"   {page_file} from .dvc/plots_page.html: {len(charts)} charts "
          f"({', '.join(charts)}) and {len(drawn)} images")  # fmt: skip


def _fetch_through_mlflow_ui(run_id: str, path: str) -> bytes:
    """Start `mlflow ui` as the README says and download one artifact over HTTP."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # In its own process group: `mlflow ui` runs uvicorn workers and a job runner, and does
    # not always stop them within a minute of a SIGTERM to itself; the group is stopped below.
    # No job runner (MLflow's GenAI jobs, 7 huey consumers): it only slows the start here.
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri",
         "sqlite:///outputs/mlflow.db", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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
        _stop_group(server)


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group led by `process`; SIGKILL what is left after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _check_dask_worker(address: str, container_run: Path) -> None:
    from distributed import Client
    from distributed.versions import VersionMismatchWarning

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import dvc

    with warnings.catch_warnings():
        # Dask warns about any version difference; the pins are compared below instead.
        warnings.simplefilter("ignore", VersionMismatchWarning)
        client = Client(address, timeout="30s")
    with client:
        worker = _wait_for_worker(client)
        where = client.run(_where_hpo_runs, workers=[worker])[worker]
        print(f"   worker {WORKER_NAME} at {worker}: {where}")
        assert where["hpo"].startswith("/app/stages/"), where  # the image's copy of the code
        _compare_packages(client.run(_installed, workers=[worker])[worker], where["python"])

        project = _project_of_image(Path("project").resolve(), container_run)
        started = time.monotonic()
        dvc(project, "repro", "tune", env={"DASK_SCHEDULER_ADDRESS": address})
        print(f"   `dvc repro tune` on the host with DASK_SCHEDULER_ADDRESS={address}: "
              f"{time.monotonic() - started:.0f} s")  # fmt: skip

        ran = client.run(_trial_tasks_run, workers=[worker])[worker]
        counts = client.run_on_scheduler(_trial_task_counts)

    n_trials = yaml.safe_load((project / "params.yaml").read_text())["tune"]["n_trials"]
    summary = json.loads((project / "outputs/tune_summary.json").read_text())
    storage = f"sqlite:///{project / 'outputs/optuna_study.db'}"
    study = optuna.load_study(study_name=summary["study_name"], storage=storage)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == n_trials == len(states), states
    print(f"   tune finished: study {study.study_name}, trials {summary['n_trials']}")

    client = MlflowClient(f"sqlite:///{project / 'outputs/mlflow.db'}")
    parent_id = summary["mlflow_parent_run_id"]
    trial_runs = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    executors = {(r.data.tags["hpo.executor"], r.data.tags["hpo.workers"]) for r in trial_runs}
    assert len(trial_runs) == len(study.trials), len(trial_runs)
    assert executors == {("dask", "1")}, executors
    print(f"   MLflow: {len(trial_runs)} trial runs, all tagged hpo.executor=dask, hpo.workers=1")

    # The scheduler had no other worker, and the container's worker itself ran every trial.
    assert ran["trial_tasks"] == len(study.trials), ran
    assert counts.get("memory") == len(study.trials), counts
    print(f"   container worker ran {ran['trial_tasks']} {TRIAL_TASK} tasks "
          f"({ran['executed_count']} tasks in all); scheduler's {TRIAL_TASK} "
          f"task counts: {counts}")  # fmt: skip

    # Where a trial runs never changes it: the same trials as the container's local-thread run
    # (its store's one study, whatever its name).
    theirs_storage = f"sqlite:///{container_run / 'outputs/optuna_study.db'}"
    (theirs,) = optuna.get_all_study_names(theirs_storage)
    assert _records(study) == _records(optuna.load_study(study_name=theirs, storage=theirs_storage))
    print(f"   the trials equal those of the container's own run on local threads ({theirs})")


def _project_of_image(destination: Path, container_run: Path) -> Path:
    """A git + DVC project (the tests' scaffold) holding the image's pipeline, library and data
    and the container run's params: the driver runs the very trial code of its worker."""
    from conftest import commit, make_project

    project = make_project(destination)
    for name in ("stages", "data"):
        shutil.rmtree(project / name)
        ignored = shutil.ignore_patterns("__pycache__", "prepared")
        shutil.copytree(SOURCE / name, project / name, ignore=ignored, symlinks=True)
    shutil.copy2(SOURCE / "dvc.yaml", project / "dvc.yaml")
    shutil.copy2(container_run / "params.yaml", project / "params.yaml")
    commit(project, "the image's pipeline and the container run's params")
    return project


def _compare_packages(theirs: dict[str, str], their_python: str) -> None:
    """The container's packages are the host's pins (constraints.txt); Python may differ in
    its patch release only (the stand-in base has Debian's 3.11.2)."""
    pins = {}
    for line in (SOURCE / "constraints.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[_canonical(name)] = version.strip()
    theirs = {_canonical(name): version for name, version in theirs.items()}
    differ = {name: (pins[name], v) for name, v in theirs.items() if pins.get(name, v) != v}
    assert not differ, f"container packages differ from constraints.txt (pin, theirs): {differ}"
    ours = platform.python_version()
    assert ours.split(".")[:2] == their_python.split(".")[:2], (ours, their_python)
    pinned = len(set(theirs) & set(pins))
    print(f"   container: {pinned} packages, all as pinned in constraints.txt; Python "
          f"{their_python} (host {ours}: Dask warns about that difference, harmless)")  # fmt: skip


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _records(study: optuna.Study) -> list[tuple]:
    return [
        (t.number, t.state.name, t.params, t.value, t.intermediate_values) for t in study.trials
    ]


def _wait_for_worker(client) -> str:
    deadline = time.monotonic() + 120
    while True:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        named = {info.get("name"): address for address, info in workers.items()}
        if WORKER_NAME in named:
            assert len(workers) == 1, f"other workers than the container's: {sorted(named)}"
            return named[WORKER_NAME]
        assert time.monotonic() < deadline, "the container's dask worker never connected"
        time.sleep(0.5)


# The functions below run in the Dask worker (in the container) and in the scheduler (host).


def _where_hpo_runs() -> dict[str, object]:
    import platform

    import hpo.execution.dask

    return {"hpo": hpo.execution.dask.__file__, "python": platform.python_version(),
            "uid": os.getuid(), "cwd": os.getcwd()}  # fmt: skip


def _installed() -> dict[str, str]:
    from importlib import metadata

    return {dist.metadata["Name"]: dist.version for dist in metadata.distributions()}


def _trial_tasks_run(dask_worker) -> dict[str, int]:
    """How many distinct trial tasks this worker took to memory, and its total task count."""
    log = dask_worker.state.log
    done = {e[0] for e in log if str(e[0]).startswith(TRIAL_TASK) and "memory" in e[1:3]}
    return {"trial_tasks": len(done), "executed_count": dask_worker.state.executed_count}


def _trial_task_counts(dask_scheduler) -> dict[str, int]:
    prefix = dask_scheduler.task_prefixes.get(TRIAL_TASK)
    return dict(prefix.state_counts) if prefix is not None else {}


if __name__ == "__main__":
    main()
