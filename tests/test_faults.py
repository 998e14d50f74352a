"""Nothing lost: `custseg run` killed with SIGKILL mid-way, and two runs at once.

The CLI runs as a real subprocess. The kill moments are found from the outside, with no
hook in the code: during the sweep by reading the progress bar the CLI draws on a
terminal (stderr is a pty), during artifact writing by polling the run directory for the
saved model. Afterwards `latest.json` must still name the previous complete run, the
killed run must be refused by `predict`, and a rerun must succeed.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from custseg.cli import main
from custseg.generate import generate_customers

pytestmark = pytest.mark.slow

FAST = ("--n-init", "1", "--no-progress")


def custseg_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "custseg.cli", *[str(a) for a in args]]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    path = root / "customers.csv"
    generate_customers(3000, segments=5, seed=1).drop(columns=["segment"]).to_csv(path, index=False)
    return path


@pytest.fixture()
def out(tmp_path, data):
    """An artifacts root whose latest.json names a complete run `good`."""
    out = tmp_path / "out"
    assert main(["run", "--input", str(data), "--out", str(out), "--run-id", "good",
                 "--k-max", "6", *FAST]) == 0  # fmt: skip
    return out


def latest(out: Path) -> dict:
    return json.loads((out / "latest.json").read_text())


def assert_previous_run_kept(capsys, out: Path, killed: Path, before: bytes, data: Path,
                             test_csv: Path) -> None:  # fmt: skip
    """latest.json unchanged and complete; the killed run is not usable; a rerun succeeds.

    (The checks after the kill run in-process: only the killed run needs its own process.)
    """
    assert (out / "latest.json").read_bytes() == before
    assert latest(out)["run_id"] == "good"
    assert (Path(latest(out)["run_dir"]) / "metrics.json").exists()
    assert not (killed / "metrics.json").exists()
    # no half-written latest.json is left that a reader could mistake for the real one
    assert [p.name for p in out.iterdir() if p.name.startswith("latest")] == ["latest.json"]
    pred = test_csv.parent / "p.csv"
    capsys.readouterr()
    assert main(["predict", "--model", str(killed), "--input", str(test_csv),
                 "--out", str(pred)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "incomplete run (no " in err and "Traceback" not in err
    assert not pred.exists()
    assert main(["predict", "--model", str(out), "--input", str(test_csv), "--out", str(pred)]) == 0
    assert "runs/good" in capsys.readouterr().out
    assert main(["run", "--input", str(data), "--out", str(out), "--k-max", "6", *FAST]) == 0
    assert latest(out)["run_id"] not in ("good", killed.name)
    assert (Path(latest(out)["run_dir"]) / "metrics.json").exists()


@pytest.fixture()
def test_csv(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("CustomerID,Annual Income (k$),Spending Score (1-100)\n1,50,50\n2,20,80\n")
    return path


def test_sigkill_during_sweep_keeps_previous_run(capsys, out, data, test_csv):
    before = (out / "latest.json").read_bytes()
    master, slave = pty.openpty()  # stderr is a terminal, so the CLI draws its progress bar
    proc = subprocess.Popen(
        custseg_cmd("run", "--input", data, "--out", out, "--run-id", "killed",
                    "--k-max", "50", "--n-init", "2"),
        stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(slave)
    seen, done = b"", None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
                bars = re.findall(rb"sweep \[[# ]*\] (\d+)/(\d+)", seen)
                if bars and int(bars[-1][0]) >= 2:
                    proc.send_signal(signal.SIGKILL)
                    done = int(bars[-1][0])
                    break
    finally:
        if proc.poll() is None and done is None:
            proc.kill()
        proc.wait(timeout=60)
        os.close(master)
    assert done is not None, f"never saw the sweep progress: {seen[-500:]!r}"
    assert proc.returncode == -signal.SIGKILL
    killed = out / "runs" / "killed"
    # killed mid-sweep: the run was created (after preprocessing), nothing of the fit exists
    assert (killed / "work" / "run.json").exists()
    assert not (killed / "sse.csv").exists() and not (killed / "model.skops").exists()
    assert_previous_run_kept(capsys, out, killed, before, data, test_csv)


def test_sigkill_during_artifact_writing_keeps_previous_run(capsys, out, data, test_csv):
    """Killed once the model is saved and the segments profiled, before the report and
    metrics.json: the fault is injected at that exact point, not raced by a poller."""
    before = (out / "latest.json").read_bytes()
    killed = out / "runs" / "killed"
    proc = subprocess.run(
        custseg_cmd("run", "--input", data, "--out", out, "--run-id", "killed", "--k-max", "6",
                    "--test", test_csv, *FAST),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300,
        env={**os.environ, "CUSTSEG_FAULT_AFTER_STEP": "profile"},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "model.skops").exists() and (killed / "profile.csv").exists()
    assert not (killed / "report.html").exists() and not (killed / "metrics.json").exists()
    assert_previous_run_kept(capsys, out, killed, before, data, test_csv)


def test_two_runs_at_once_both_complete(tmp_path, out, data):
    procs = [
        subprocess.Popen(
            custseg_cmd("run", "--input", data, "--out", out, "--k-max", "6", *FAST),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, results, strict=True):
        assert p.returncode == 0, stderr
    run_dirs = [re.search(r"^artifacts: (.+)$", s, re.M).group(1) for s, _ in results]
    assert len(set(run_dirs)) == 2
    for run_dir in run_dirs:
        assert (Path(run_dir) / "metrics.json").exists() and (
            Path(run_dir) / "model.skops"
        ).exists()
    assert latest(out)["run_dir"] in run_dirs
    metrics = json.loads((Path(latest(out)["run_dir"]) / "metrics.json").read_text())
    assert metrics["run_id"] == latest(out)["run_id"]
    log_text = (out / "custseg.log").read_text()
    assert all(f"promoted run {Path(d).name}" in log_text for d in run_dirs)
