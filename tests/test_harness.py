"""The Airflow test harness's port handling: a server's port is read back from its own
sockets, and a port someone else holds makes it start again on another one."""

from __future__ import annotations

import os
import socket
import sys

from tests.airflow_harness import Stack, free_port, listeners, start_on_free_port

SERVER = (
    "import http.server as h, sys; "
    "h.HTTPServer(('127.0.0.1', int(sys.argv[1])), h.BaseHTTPRequestHandler).serve_forever()"
)


def test_listeners_names_the_process_holding_a_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert os.getpid() in listeners(port)
    assert os.getpid() not in listeners(port)


def test_a_taken_port_is_retried_and_the_bound_one_read_back(tmp_path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        spare = free_port()
        with Stack() as stack:
            proc, port = start_on_free_port(
                stack, "http", lambda p: ([sys.executable, "-c", SERVER, str(p)], {}),
                log_dir=tmp_path, timeout=60, ports=iter([taken, spare]),
            )  # fmt: skip
            assert port == spare and proc.popen.pid in listeners(spare)
            assert [p.name for p in stack.procs] == ["http-retry1"]
            # the first server (told to bind the taken port) was stopped, not left behind
            assert (tmp_path / "http.log").exists() and listeners(taken) == {os.getpid()}
