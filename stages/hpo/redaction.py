"""Secrets never shown: `redact` masks a setting's secrets, `scrub` every setting's and credential
variable's in any text. A raw password (with `/`, `@`, `:` or `%`) defeats regexes, so a value is
split by hand: its userinfo is everything between `://` and the last `@`."""

from __future__ import annotations

import os
import re
from urllib.parse import parse_qsl, quote, unquote

MASK = "***"
URL_VARS = ("OPTUNA_STORAGE", "MLFLOW_TRACKING_URI", "DASK_SCHEDULER_ADDRESS")
CREDENTIAL_VARS = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD")
# Query parameters whose values are secrets (password=, token=, api_key=, sig=, ...).
_SECRET_KEY = re.compile(r"pass|pwd|token|secret|key|auth|sig|credential", re.IGNORECASE)
# A path segment that looks like a token: long, and letters mixed with digits.
_TOKEN_SEGMENT = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9._~+=-]{20,}$")
# Shorter secrets are masked inside URLs only: replacing "p" everywhere wrecks a message.
_MIN_SECRET = 4
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")


def _split(value: str) -> tuple[str, str | None, str, str]:
    """(scheme://, userinfo or None, host and path, ?query#fragment) of a URL-like value."""
    scheme_end = value.find("://")
    if scheme_end < 0:
        return "", None, value, ""
    head, rest = value[: scheme_end + 3], value[scheme_end + 3 :]
    # The last @ anywhere: a raw password may hold /, ? or # too. An @ in a query (rare in
    # these settings) then hides more than the userinfo, never less.
    at = rest.rfind("@")
    userinfo = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
    query_at = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return head, userinfo, rest[:query_at], rest[query_at:]


def userinfo(value: str) -> str | None:
    """The `user:password` part of a URL-like setting, as typed (None without one)."""
    return _split(value)[1]


def redact(value: str) -> str:
    """The setting with its userinfo, token-like path segments and secret query values masked."""
    head, userinfo, location, tail = _split(value)
    shown = head + (f"{MASK}@" if userinfo is not None else "")
    shown += "/".join(MASK if _TOKEN_SEGMENT.match(part) else part for part in location.split("/"))
    return shown + _redact_query(tail)


def _redact_query(tail: str) -> str:
    if not tail.startswith("?"):
        return tail
    query, hash_, fragment = tail[1:].partition("#")
    parts = []
    for item in query.split("&"):
        key, eq, _value = item.partition("=")
        parts.append(f"{key}{eq}{MASK}" if eq and _SECRET_KEY.search(key) else item)
    return "?" + "&".join(parts) + hash_ + fragment


def secrets_of(value: str) -> set[str]:
    """Every secret part of a setting, as typed, URL-decoded and URL-encoded."""
    _head, userinfo, location, tail = _split(value)
    found: set[str] = set()
    if userinfo:
        found.add(userinfo)
        _user, colon, password = userinfo.partition(":")
        if colon:
            found.add(password)
    found.update(part for part in location.split("/") if _TOKEN_SEGMENT.match(part))
    query = tail[1:].partition("#")[0] if tail.startswith("?") else ""
    for item in query.split("&"):
        key, eq, secret = item.partition("=")
        if eq and _SECRET_KEY.search(key):
            found.add(secret)
            found.update(v for k, v in parse_qsl(item) if k)
    forms = set()
    for secret in found:
        forms |= {secret, unquote(secret), quote(secret, safe=""), quote(secret)}
    return {form for form in forms if form}


def configured_secrets() -> set[str]:
    """The secrets of this process's settings and credential variables."""
    found: set[str] = set()
    for name in URL_VARS:
        found |= secrets_of(os.environ.get(name, ""))
    for name in CREDENTIAL_VARS:
        if secret := os.environ.get(name, ""):
            found |= {secret, quote(secret, safe="")}
    return found


def scrub(text: str, extra: set[str] | None = None) -> str:
    """`text` with every URL in it redacted and every configured secret (plus `extra`) masked."""
    text = _URL_IN_TEXT.sub(lambda match: redact(match.group(0)), text)
    secrets = configured_secrets() | (extra or set())
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, MASK)
    return text
