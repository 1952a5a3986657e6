"""Secrets in settings are found by parsing, and masked in any text, whoever wrote it."""

from __future__ import annotations

import pytest

from hpo.redaction import configured_secrets, redact, scrub, secrets_of

PASSWORDS = ["s3cr3t-P/ss", "s3cr3t-P@ss", "s3cr3t%P:ss", "s3cr3t-P%40ss"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "template",
    [
        "postgresql://hpo:{}@db.example:5432/hpo",
        "postgresql+psycopg://hpo:{}@db.example:notaport/hpo?sslmode=require",
        "https://hpo:{}@mlflow.example/path",
        "tcp://hpo:{}@127.0.0.1:8786",
        "ws://hpo:{}@127.0.0.1:1",
    ],
)
def test_a_raw_password_is_masked_whatever_it_contains(template: str, password: str) -> None:
    url = template.format(password)
    shown = redact(url)
    assert "s3cr3t" not in shown
    assert shown.startswith(url.split("://")[0] + "://***@")
    assert shown.endswith(url.rsplit("@", 1)[1])  # the host and path are kept
    assert password in secrets_of(url)


def test_tokens_in_the_query_and_the_path_are_masked() -> None:
    url = "https://mlflow.example/t/ghp_0123456789abcdefghijXYZ/api?token=abc123&run=7&sig=zz9"
    assert redact(url) == "https://mlflow.example/t/***/api?token=***&run=7&sig=***"
    assert {"ghp_0123456789abcdefghijXYZ", "abc123", "zz9"} <= secrets_of(url)


def test_a_setting_without_secrets_is_shown_as_is() -> None:
    for url in ("http://127.0.0.1:5000", "tcp://127.0.0.1:8786", "sqlite:///outputs/x.db"):
        assert redact(url) == url
        assert secrets_of(url) == set()


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize(
    "variable", ["OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "DASK_SCHEDULER_ADDRESS"]
)
def test_scrub_masks_every_configured_secret_in_a_library_message(
    monkeypatch: pytest.MonkeyPatch, variable: str, password: str
) -> None:
    monkeypatch.setenv(variable, f"tcp://hpo:{password}@db.example:1")
    # Libraries repeat the setting, or only the password, or its URL-decoded form.
    message = (
        f"cannot reach tcp://hpo:{password}@db.example:1; auth failed for '{password}' "
        f"(user hpo:{password})"
    )
    cleaned = scrub(message)
    assert "s3cr3t" not in cleaned
    assert "tcp://***@db.example:1" in cleaned


def test_scrub_masks_the_credential_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-long")
    monkeypatch.setenv("PGPASSWORD", "pg-secret")
    assert scrub("login hunter2-long / pg-secret refused") == "login *** / *** refused"


def test_a_short_password_does_not_wreck_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql://u:p@db.example/hpo")
    assert "p" in configured_secrets()
    cleaned = scrub("could not connect to postgresql://u:p@db.example/hpo: password rejected")
    assert cleaned == "could not connect to postgresql://***@db.example/hpo: password rejected"
