"""Defect 4: the REST listener must hold against many slow connections (it used to refuse everyone)."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import requests

pytestmark = pytest.mark.timeout(120)

SLOW = 1100  # more than the old server's 1,024-connection semaphore


def _slow_connections(port: int, n: int) -> list[socket.socket]:
    """n connections that each sent the start of a request line and nothing more."""
    out = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /v1/models/leukemia HTTP/1.1\r\nHo")
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def test_listen_backlog_is_real(server):
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{server.rest_port}"], capture_output=True, text=True, check=True
    ).stdout
    backlog = int(out.split()[2])  # Send-Q of a listening socket: its backlog
    assert backlog >= 1024


def test_answers_while_many_slow_connections_are_held(server):
    slow = _slow_connections(server.rest_port, SLOW)
    try:
        start = time.perf_counter()
        r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia", timeout=10)
        assert r.status_code == 200 and time.perf_counter() - start < 2.0
        assert requests.get(f"http://127.0.0.1:{server.rest_port}/", timeout=10).status_code == 200  # the page too
    finally:
        for s in slow:
            s.close()


def test_a_trickling_client_is_cut_off_at_the_header_deadline(server):
    server._rest.header_timeout_s = 1.0
    try:
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=5) as s:
            start, answer = time.perf_counter(), b""
            for byte in b"GET /v1/models/leukemia HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40:
                try:
                    s.sendall(bytes([byte]))  # one byte every 0.2 s: an idle timeout would restart each time
                except OSError:
                    break
                time.sleep(0.2)
                s.setblocking(False)
                try:
                    answer = s.recv(4096)
                except BlockingIOError:
                    pass
                finally:
                    s.setblocking(True)
                if answer or time.perf_counter() - start > 5:
                    break
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert time.perf_counter() - start < 3.0
    finally:
        server._rest.header_timeout_s = 10.0


def test_connections_beyond_the_cap_get_a_clear_503(server):
    rest = server._rest
    rest.max_connections = rest.open_connections + 3
    held = _slow_connections(server.rest_port, 3)
    try:
        r = requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia", timeout=10)
        assert r.status_code == 503 and "open connections" in r.json()["error"]
    finally:
        for s in held:
            s.close()
        rest.max_connections = 2048
    time.sleep(0.2)
    assert requests.get(f"http://127.0.0.1:{server.rest_port}/v1/models/leukemia", timeout=10).status_code == 200
