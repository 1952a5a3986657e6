"""The three environment settings: checked for form, and never shown with their passwords."""

from __future__ import annotations

import pytest

from hpo.errors import PipelineError
from hpo.storage.settings import (
    DASK_VAR,
    STORAGE_VAR,
    TRACKING_VAR,
    from_environment,
)

SECRET = "s3cr3t-P%40ss"  # URL-quoted "s3cr3t-P@ss"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (DASK_VAR, STORAGE_VAR, TRACKING_VAR):
        monkeypatch.delenv(name, raising=False)


def test_unset_means_local() -> None:
    backends = from_environment()
    assert (backends.dask_address, backends.study_storage, backends.tracking_uri) == (
        None,
        None,
        None,
    )


def test_good_settings_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DASK_VAR, "tcp://127.0.0.1:8786")
    monkeypatch.setenv(STORAGE_VAR, f"postgresql://hpo:{SECRET}@127.0.0.1:5432/hpo")
    monkeypatch.setenv(TRACKING_VAR, "http://127.0.0.1:5000")
    backends = from_environment()
    assert backends.dask_address == "tcp://127.0.0.1:8786"
    assert backends.study_storage.password == "s3cr3t-P@ss"
    assert backends.tracking_uri == "http://127.0.0.1:5000"


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
        (STORAGE_VAR, "sqlite:////no/such/folder/study.db"),
        (TRACKING_VAR, "ftp://127.0.0.1/runs"),
        (TRACKING_VAR, "sqlite:///mlflow.db"),  # a server only: the local store is the default
        (TRACKING_VAR, f"http://hpo:{SECRET}@127.0.0.1:5000"),  # credentials belong elsewhere
        (TRACKING_VAR, f"http://hpo:{SECRET}@:5000"),  # no host
        (TRACKING_VAR, f"http://hpo:{SECRET}@127.0.0.1:port"),
        # raw (unquoted) passwords: a / or an @ inside must not end the redaction early
        (STORAGE_VAR, "postgresql://hpo:s3cr3t-P/ss@127.0.0.1:notaport/hpo"),
        (STORAGE_VAR, "postgresql://hpo:s3cr3t-P@ss@127.0.0.1:notaport/hpo"),
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
        from_environment()
    message = str(raised.value)
    assert message.startswith(f"{variable}:")
    assert "\n" not in message
    assert SECRET not in message
    assert "s3cr3t-P@ss" not in message
    assert "s3cr3t-P" not in message


@pytest.fixture
def in_a_project(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs").mkdir()
    return monkeypatch


def test_the_default_study_store_named_explicitly_is_the_default(in_a_project) -> None:
    in_a_project.setenv(STORAGE_VAR, "sqlite:///outputs/optuna_store.db")
    assert from_environment().study_storage is None


def test_the_stage_output_cannot_be_the_study_store(in_a_project) -> None:
    in_a_project.setenv(STORAGE_VAR, "sqlite:///outputs/optuna_study.db")
    with pytest.raises(PipelineError, match="tune stage's output, rewritten by every run"):
        from_environment()
