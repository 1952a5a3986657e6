"""Resolves every `*.example` host name to 127.0.0.1 in the Python processes of a test, as an
/etc/hosts line would on a team's machines: the docs' recipes name their hosts (db.example,
mlflow.example, scheduler.example), and the tests run them on loopback as written. Put on
PYTHONPATH by tests/test_recipes.py; Python imports `sitecustomize` at start-up by itself.
"""

import socket

_getaddrinfo = socket.getaddrinfo


def _getaddrinfo_example_on_loopback(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    if isinstance(host, bytes):
        host = host.decode()
    if isinstance(host, str) and host.endswith(".example"):
        host = "127.0.0.1"
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _getaddrinfo_example_on_loopback
