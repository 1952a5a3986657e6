"""Resolves every `*.example` host name to 127.0.0.1, as an /etc/hosts line would on a team's
machines: the docs' recipes name their hosts (mlflow.example, ...) and the tests run them on
loopback as written. Python imports `sitecustomize` at start-up by itself: tests/recipes.py
puts this folder on the PYTHONPATH of a recipe's processes, and loads `on_loopback` for its
own client calls.
"""

import socket
from collections.abc import Callable
from typing import Any


def on_loopback(getaddrinfo: Callable[..., Any]) -> Callable[..., Any]:
    """`getaddrinfo` that answers 127.0.0.1 for names in the reserved `.example` domain."""

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.endswith(".example"):
            host = "127.0.0.1"
        return getaddrinfo(host, *args, **kwargs)

    return resolve


if __name__ == "sitecustomize":
    socket.getaddrinfo = on_loopback(socket.getaddrinfo)
