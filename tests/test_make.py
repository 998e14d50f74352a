"""The Makefile's promises that need no run: listening addresses, what `make run` installs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def dry_run(*args: str) -> str:
    if shutil.which("make") is None:  # pragma: no cover - make is part of the two commands
        pytest.fail("make not installed")
    return subprocess.run(["make", "-n", "-B", *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


def test_make_airflow_listens_on_loopback_and_moves_the_log_servers_with_its_port():
    text = dry_run("airflow", "AIRFLOW_PORT=9000")
    assert "AIRFLOW__API__HOST=127.0.0.1" in text and "AIRFLOW__API__PORT=9000" in text
    assert "WORKER_LOG_SERVER_PORT=$(( 9000 + 713 ))" in text
    assert "TRIGGER_LOG_SERVER_PORT=$(( 9000 + 714 ))" in text


def test_make_run_installs_no_dev_tools_and_prints_no_package_list():
    text = dry_run("run")
    sync = next(line for line in text.splitlines() if " sync " in line)
    assert "--no-dev" in sync and "--quiet" in sync
    assert "custseg show" in text
