"""The three environment settings, each checked for form in the module that uses it, and never
shown with their passwords: DASK_SCHEDULER_ADDRESS (hpo.execution.dask), OPTUNA_STORAGE
(hpo.storage.studies), MLFLOW_TRACKING_URI (hpo.tracking.mlflow)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from hpo.errors import PipelineError
from hpo.execution import dask
from hpo.storage import studies
from hpo.tracking import mlflow as tracking

SECRET = "s3cr3t-P%40ss"  # URL-quoted "s3cr3t-P@ss"
DASK_VAR, STORAGE_VAR, TRACKING_VAR = dask.DASK_VAR, studies.STORAGE_VAR, tracking.TRACKING_VAR
CHECKS: dict[str, Callable[[], Any]] = {
    DASK_VAR: dask.address_from_environment,
    STORAGE_VAR: studies.storage_url_from_environment,
    TRACKING_VAR: tracking.tracking_uri_from_environment,
}


@pytest.fixture(autouse=True)
def in_a_project(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A project root (dvc.yaml names the default stores, hpo.paths) as the working directory,
    with the three variables unset."""
    shutil.copy2(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "outputs").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in CHECKS:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.mark.parametrize("variable", list(CHECKS))
@pytest.mark.parametrize("value", ["", "  "])
def test_unset_or_blank_means_local(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert CHECKS[variable]() is None


def test_good_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DASK_VAR, "tcp://127.0.0.1:8786")
    monkeypatch.setenv(STORAGE_VAR, f"postgresql://hpo:{SECRET}@127.0.0.1:5432/hpo")
    monkeypatch.setenv(TRACKING_VAR, "http://127.0.0.1:5000")
    assert dask.address_from_environment() == "tcp://127.0.0.1:8786"
    url = studies.storage_url_from_environment()
    assert url is not None
    assert (url.host, url.port, url.database) == ("127.0.0.1", 5432, "hpo")
    assert url.password == "s3cr3t-P@ss"
    assert tracking.tracking_uri_from_environment() == "http://127.0.0.1:5000"


def test_another_sqlite_file_is_a_study_store_of_its_own(
    monkeypatch: pytest.MonkeyPatch, in_a_project: Path
) -> None:
    monkeypatch.setenv(STORAGE_VAR, "sqlite:///outputs/other_studies.db")
    url = studies.storage_url_from_environment()
    assert url is not None
    assert Path(url.database).resolve() == in_a_project / "outputs/other_studies.db"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (DASK_VAR, "127.0.0.1"),  # no port
        (DASK_VAR, "tcp://127.0.0.1:port"),
        (DASK_VAR, "tcp://:8786"),
        (STORAGE_VAR, "not a url"),
        (STORAGE_VAR, f"mysql://hpo:{SECRET}@127.0.0.1/hpo"),  # not a supported database
        (STORAGE_VAR, f"postgresql://hpo:{SECRET}@/hpo"),  # no host
        (STORAGE_VAR, "sqlite://"),  # no file
        (STORAGE_VAR, "sqlite:///:memory:"),
        pytest.param(STORAGE_VAR, f"sqlite://hpo:{SECRET}@/"),
        (STORAGE_VAR, "sqlite:////no/such/folder/study.db"),
        (TRACKING_VAR, "ftp://127.0.0.1/runs"),
        (TRACKING_VAR, "sqlite:///mlflow.db"),  # a server only: the local store is the default
        (TRACKING_VAR, f"http://hpo:{SECRET}@127.0.0.1:5000"),  # credentials belong elsewhere
        (TRACKING_VAR, f"http://hpo:{SECRET}@:5000"),  # no host
        (TRACKING_VAR, f"http://hpo:{SECRET}@127.0.0.1:port"),
        (TRACKING_VAR, "http://127.0.0.1:port"),  # a bad port, without credentials
        # raw (unquoted) passwords: a / or an @ inside must not end the redaction early
        (STORAGE_VAR, "postgresql://hpo:s3cr3t-P/ss@127.0.0.1:notaport/hpo"),
        (STORAGE_VAR, "postgresql://hpo:s3cr3t-P@ss@127.0.0.1:notaport/hpo"),
        (STORAGE_VAR, "postgresql://hpo:s3cr3t-P@ss@127.0.0.1:5432/hpo"),  # a raw @ misread
        (TRACKING_VAR, "https://hpo:s3cr3t-P/ss@mlflow.example"),
        (TRACKING_VAR, "http://[::1"),
        (DASK_VAR, "tcp://hpo:s3cr3t-P@ss@127.0.0.1:port"),
        (DASK_VAR, "tcp://hpo:s3cr3t-P@ss@127.0.0.1:8786"),  # Dask takes no credentials
        (DASK_VAR, "tls://127.0.0.1:8786"),  # without Dask's TLS settings
        (DASK_VAR, "http://127.0.0.1:8787"),  # the dashboard, not the scheduler
        (DASK_VAR, "inproc://127.0.0.1/1/1"),
        (DASK_VAR, "ucx://127.0.0.1:8786"),
    ],
)
def test_a_malformed_setting_names_its_variable_without_the_password(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(PipelineError) as raised:
        CHECKS[variable]()
    message = str(raised.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message
    assert SECRET not in message
    assert "s3cr3t-P@ss" not in message
    assert "s3cr3t-P" not in message


@pytest.mark.parametrize(
    "value",
    ["sqlite:///outputs/optuna_store.db", "sqlite:///./outputs/../outputs/optuna_store.db"],
)
def test_the_default_study_store_named_explicitly_is_the_default(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(STORAGE_VAR, value)
    assert studies.storage_url_from_environment() is None


def test_the_stage_output_cannot_be_the_study_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_VAR, "sqlite:///outputs/optuna_study.db")
    with pytest.raises(PipelineError, match="tune stage's output, rewritten by every run"):
        studies.storage_url_from_environment()


def test_the_stores_are_named_by_their_file_or_their_redacted_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert studies.label(None) == "outputs/optuna_store.db"
    assert tracking.label() == "outputs/mlflow.db"
    monkeypatch.setenv(STORAGE_VAR, f"postgresql://hpo:{SECRET}@db.example:5432/hpo")
    monkeypatch.setenv(TRACKING_VAR, "https://mlflow.example/t/ghp_0123456789abcdefghijXYZ")
    shown = studies.label(studies.storage_url_from_environment())
    assert shown == f"{STORAGE_VAR} postgresql://***@db.example:5432/hpo"
    assert tracking.label() == f"{TRACKING_VAR} https://mlflow.example/t/***"
