"""The real-framework suite: run with `make integration` (torch 2.14.1, torchvision, ultralytics, mmengine).

Every module here skips, with the reason printed, when its framework is not installed (as in
the `make test` venv). Offline by construction: ultralytics is told it is offline before it is
imported, and every test fails if anything in the test process opens a connection to a host
that is not this one (a download of weights, fonts or data would).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="detloss-yolo-config-"))
os.environ["YOLO_OFFLINE"] = "1"  # ultralytics' is_online() answers False: no update check, no hub
os.environ["YOLO_AUTOINSTALL"] = "false"  # no pip install of a missing requirement
os.environ.setdefault("YOLO_VERBOSE", "false")

INSTALL_HINT = "not installed: run make integration"
_LOCAL = ("localhost", "127.0.0.1", "::1", "", None)
ATTEMPTS: list[str] = []


def _host(address: Any) -> Any:
    return address[0] if isinstance(address, tuple) else address


def _guard(original: Any, host_of: Any) -> Any:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        host = host_of(*args, **kwargs)
        if host not in _LOCAL and not (isinstance(host, str) and host.startswith("127.")):
            ATTEMPTS.append(str(host))
            raise OSError(f"the integration suite is offline: no connection to {host}")
        return original(*args, **kwargs)

    return guarded


@pytest.fixture(scope="session", autouse=True)
def _offline() -> Iterator[None]:
    """Refuse every connection to another host (and name lookups of one) for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", _guard(socket.getaddrinfo, lambda host, *a, **k: host))
        connection = _guard(socket.create_connection, lambda address, *a, **k: _host(address))
        mp.setattr(socket, "create_connection", connection)
        mp.setattr(socket.socket, "connect", _guard(socket.socket.connect, lambda self, address: _host(address)))
        mp.setattr(socket.socket, "connect_ex", _guard(socket.socket.connect_ex, lambda self, address: _host(address)))
        yield


@pytest.fixture(autouse=True)
def _no_download() -> Iterator[None]:
    """A test fails if it tried to reach the network, even where the framework swallowed the error."""
    start = len(ATTEMPTS)
    yield
    assert ATTEMPTS[start:] == [], f"tried to connect to {ATTEMPTS[start:]}"
