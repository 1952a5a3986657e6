"""One code identity per model family names the study and gates the Dask workers: the trial
code's sources, the family's module, and the versions of the libraries that shape a trial."""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, evidence_of, tiered
from optuna.trial import TrialState

from hpo.config import Params, load_params
from hpo.execution.dask import StaleWorkerError, evaluate_on_worker
from hpo.models import Setup
from hpo.protocol.identity import TRIAL_CODE, TRIAL_LIBRARIES, this_process_identity
from hpo.search.evaluation import TrainingData
from hpo.search.trial import TrialTask
from hpo.session import study_name

PARAMS = load_params(REPO / "params.yaml")
FAMILIES = ("xgboost", "lightgbm")
TRAIN_SHA256 = "0" * 64


@pytest.fixture
def fresh_identity() -> Iterator[None]:
    """The identity is computed once per process; recompute it around a changed library."""
    this_process_identity.cache_clear()
    yield
    this_process_identity.cache_clear()


def _other(family: str) -> str:
    return next(f for f in FAMILIES if f != family)


def _updated(params: Params, section: str, **values: object) -> Params:
    """`params` with keys of one section changed (a copy: the settings are frozen)."""
    return params.model_copy(update={section: getattr(params, section).model_copy(update=values)})


def _with_family(family: str) -> Params:
    return _updated(PARAMS, "model", family=family)


def _identities() -> dict[str, str]:
    this_process_identity.cache_clear()
    return {family: this_process_identity(family) for family in FAMILIES}


def _worker_data(family: str) -> TrainingData:
    """A training split of four rows: all a worker needs to take or refuse a trial."""
    x = pd.DataFrame({"feature": [0.0, 1.0, 2.0, 3.0]})
    pruner = PARAMS.tune.pruner
    return TrainingData(x, np.arange(4.0), family, Setup("regression", 0, 0), "mse", 2, 0, pruner)


def test_each_family_has_its_own_identity(fresh_identity: None) -> None:
    identities = _identities()

    assert identities["xgboost"] != identities["lightgbm"]
    assert _identities() == identities  # a pure function of what it hashes


@pytest.mark.parametrize("family", FAMILIES)
def test_another_version_of_the_family_s_library_makes_a_new_study_and_a_stale_worker(
    family: str, monkeypatch: pytest.MonkeyPatch, fresh_identity: None
) -> None:
    params = _with_family(family)
    name, before = study_name(params, TRAIN_SHA256), _identities()
    assert study_name(params, TRAIN_SHA256) == name

    monkeypatch.setattr(importlib.import_module(family), "__version__", "0.0.1")
    after = _identities()

    assert after[family] != before[family]
    assert after[_other(family)] == before[_other(family)]  # the other family's studies stay
    assert study_name(params, TRAIN_SHA256) != name
    # A worker with the new version refuses a task from a driver with the old one.
    task = TrialTask(0, {"n_estimators": 1}, evidence_of([]))
    with pytest.raises(StaleWorkerError):
        evaluate_on_worker(task, _worker_data(family), digest=before[family])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_worker_with_the_driver_s_identity_runs_the_trial(
    family: str, monkeypatch: pytest.MonkeyPatch, fresh_identity: None
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as a Dask nanny sets it: one thread a task
    task = TrialTask(0, {"n_estimators": 1}, evidence_of([]))
    outcome = evaluate_on_worker(task, _worker_data(family), this_process_identity(family))

    assert outcome.state == TrialState.COMPLETE, outcome.error


@pytest.mark.parametrize(
    "library",
    tiered([pytest.param(name, id=name) for name in TRIAL_LIBRARIES], default={"numpy"}),
)
def test_a_shared_library_s_version_changes_every_family_s_identity(
    library: str, monkeypatch: pytest.MonkeyPatch, fresh_identity: None
) -> None:
    before = _identities()
    monkeypatch.setattr(importlib.import_module(library), "__version__", "0.0.1")
    after = _identities()

    assert all(after[family] != before[family] for family in FAMILIES)


def _edited_copy(module: str, folder: Path) -> str:
    """A copy of the module's source with one more line, as an edit leaves it."""
    copy = folder / Path(importlib.import_module(module).__file__).name
    shutil.copyfile(importlib.import_module(module).__file__, copy)
    copy.write_text(copy.read_text() + "# edited\n")
    return str(copy)


@pytest.mark.parametrize(
    "module",
    tiered(
        [
            pytest.param(name, id=name)
            for name in (*TRIAL_CODE, *(f"hpo.models.{f}" for f in FAMILIES))
        ],
        default={"hpo.models.xgboost", "hpo.models.lightgbm", "hpo.search.evaluation"},
    ),
)
def test_an_edit_to_the_trial_code_changes_the_identities_it_shapes(
    module: str, monkeypatch: pytest.MonkeyPatch, fresh_identity: None, tmp_path: Path
) -> None:
    """An edit to a family's module renames that family's studies; one to the shared trial
    code renames every family's."""
    before = _identities()
    monkeypatch.setattr(importlib.import_module(module), "__file__", _edited_copy(module, tmp_path))
    after = _identities()
    shaped = {f for f in FAMILIES if module in (f"hpo.models.{f}", *TRIAL_CODE)}

    assert {f for f in FAMILIES if after[f] != before[f]} == shaped


def test_the_budget_does_not_name_the_study() -> None:
    grown = _updated(PARAMS, "tune", n_trials=PARAMS.tune.n_trials + 20)

    assert study_name(grown, TRAIN_SHA256) == study_name(PARAMS, TRAIN_SHA256)


CHANGES: dict[str, Callable[[Params], Params]] = {
    "the family": lambda p: _updated(p, "model", family=_other(p.model.family)),
    "the metric": lambda p: _updated(p, "tune", metric="rmse"),
    "the model seed": lambda p: _updated(p, "model", seed=p.model.seed + 1),
    "the fold seed": lambda p: _updated(p, "tune", cv_seed=p.tune.cv_seed + 1),
    "the sampler seed": lambda p: _updated(
        p, "tune", sampler=p.tune.sampler.model_copy(update={"seed": p.tune.sampler.seed + 1})
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_what_shapes_the_trials_names_a_new_study(change: str) -> None:
    changed = CHANGES[change](PARAMS)
    name = study_name(changed, TRAIN_SHA256)

    assert name != study_name(PARAMS, TRAIN_SHA256)
    assert name.startswith(f"{changed.model.family}-{changed.metric}-")


def test_another_training_split_names_a_new_study() -> None:
    assert study_name(PARAMS, "1" * 64) != study_name(PARAMS, TRAIN_SHA256)
