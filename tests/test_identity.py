"""One code identity names the study and gates the Dask workers: the trial code's sources and
the versions of the libraries that shape a trial."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import xgboost
from conftest import REPO

from hpo.config import load_params
from hpo.execution.dask import StaleWorkerError, evaluate_on_worker
from hpo.protocol.identity import this_process_identity
from hpo.session import study_name

PARAMS = load_params(REPO / "params.yaml")
TRAIN_SHA256 = "0" * 64


@pytest.fixture
def fresh_identity() -> Iterator[None]:
    """The identity is computed once per process; recompute it around a changed library."""
    this_process_identity.cache_clear()
    yield
    this_process_identity.cache_clear()


def test_another_xgboost_version_makes_a_new_study_and_a_stale_worker(
    monkeypatch: pytest.MonkeyPatch, fresh_identity: None
) -> None:
    name, identity = study_name(PARAMS, TRAIN_SHA256), this_process_identity()
    assert study_name(PARAMS, TRAIN_SHA256) == name  # a pure function of what it hashes

    this_process_identity.cache_clear()
    monkeypatch.setattr(xgboost, "__version__", "0.0.1")

    assert study_name(PARAMS, TRAIN_SHA256) != name
    assert this_process_identity() != identity
    # A worker with the new version refuses a task from a driver with the old one.
    with pytest.raises(StaleWorkerError):
        evaluate_on_worker(task=None, data=None, digest=identity)  # type: ignore[arg-type]


def test_the_budget_does_not_name_the_study() -> None:
    grown = PARAMS.model_copy(
        update={"tune": PARAMS.tune.model_copy(update={"n_trials": PARAMS.tune.n_trials + 20})}
    )
    assert study_name(grown, TRAIN_SHA256) == study_name(PARAMS, TRAIN_SHA256)
    assert study_name(PARAMS, "1" * 64) != study_name(PARAMS, TRAIN_SHA256)
