"""Helpers for the Q4 tests: a network guard for child processes (the ultralytics worker).

The session guard in conftest.py patches sockets in the pytest process only. The worker is
a separate interpreter, so these tests put a ``sitecustomize.py`` on its PYTHONPATH that
refuses (and records) every non-loopback connection and DNS lookup.
"""

from __future__ import annotations

import os
from pathlib import Path

GUARD = '''
import ipaddress, os, socket

_LOG = os.environ.get("VF_TEST_NET_LOG")


def _local(host):
    return host is None or (isinstance(host, str) and (
        host == "" or host.startswith("127.") or host in ("localhost", "::1")))


def _record(what):
    if _LOG:
        with open(_LOG, "a") as fh:
            fh.write(what + "\\n")


_connect = socket.socket.connect
_gai = socket.getaddrinfo


def connect(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(host):
        _record(f"connect {host}")
        raise OSError(f"test network guard (child): connection to {host} refused")
    return _connect(self, address)


def _literal(host):
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def getaddrinfo(host, *args, **kwargs):
    host_s = host.decode() if isinstance(host, bytes) else host
    if not _local(host_s) and not _literal(host_s):  # literals need no DNS; connect checks them
        _record(f"resolve {host}")
        raise socket.gaierror(f"test network guard (child): lookup of {host} refused")
    return _gai(host, *args, **kwargs)


socket.socket.connect = connect
socket.getaddrinfo = getaddrinfo
'''


def install_child_guard(tmp_path: Path, monkeypatch) -> Path:
    """Every child Python process refuses non-loopback network; returns the attempts log."""
    d = tmp_path / "netguard"
    d.mkdir()
    (d / "sitecustomize.py").write_text(GUARD)
    log = tmp_path / "net-attempts.log"
    old = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(d) + (os.pathsep + old if old else ""))
    monkeypatch.setenv("VF_TEST_NET_LOG", str(log))
    return log


def attempts(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []
