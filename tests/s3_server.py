"""A real S3 endpoint for tests: moto's server in its own process on a free 127.0.0.1 port.

Clients reach it like any S3-compatible store (MinIO, Ceph): s3fs with `endpoint_url`, or
`FSSPEC_S3_ENDPOINT_URL` plus AWS credentials in the environment of another process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_s3(log_dir: Path, *, timeout: float = 60) -> Iterator[str]:
    """Run moto_server until the block ends; yields its URL. Skips if moto or s3fs is absent."""
    pytest.importorskip("s3fs", reason="s3fs not installed (extra `s3`)")
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    if server is None:
        pytest.skip("moto_server not installed (dev dependency moto[server])")
    port = _free_port()
    log = Path(log_dir) / "moto.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text()[-2000:]
                    raise RuntimeError(f"moto_server did not start: {tail}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def use_endpoint(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    """Point this process's fsspec `s3://` at `url` with the test credentials."""
    import fsspec

    for key, value in CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": url})
