"""The network guard: the test suite must fail loudly, and fast, if anything reaches past loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest


def test_connection_to_the_internet_is_refused_and_logged(tmp_path, monkeypatch):
    log = tmp_path / "guard.log"
    monkeypatch.setenv("COURSE_NETGUARD_LOG", str(log))
    with pytest.raises(ConnectionRefusedError, match="203.0.113.9:443"):
        socket.create_connection(("203.0.113.9", 443), timeout=1)
    with pytest.raises(socket.gaierror, match="huggingface.co"):
        socket.getaddrinfo("huggingface.co", 443)
    assert "203.0.113.9:443" in log.read_text() and "huggingface.co" in log.read_text()


def test_loopback_still_works():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    assert client.getpeername() == server.getsockname()
    client.close()
    server.close()


def test_child_processes_are_guarded_too(tmp_path):
    env = dict(os.environ, COURSE_NETGUARD_LOG=str(tmp_path / "child.log"))
    code = "import socket\ntry:\n socket.create_connection(('198.51.100.7', 80), timeout=1)\nexcept OSError as e:\n print(e)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert "network guard" in out.stdout
    assert "198.51.100.7:80" in (tmp_path / "child.log").read_text()
