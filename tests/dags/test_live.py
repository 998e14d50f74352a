"""Live: `airflow standalone` in a temp home, a REST-triggered run, the UI in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.airflow_harness import (
    BIN,
    CHROMIUM,
    AirflowApi,
    Stack,
    airflow_env,
    chromium,
    start_on_free_port,
    wait_for,
    write_password_file,
)
from tests.conftest import missing

# the outer deadline covers the inner waits: bind 300 + health 300 + DAG 180 + run 420
# + inbox 540 + load test 600 + browser 150, plus start and stop
pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(2490 + 300)]

ROOT = Path(__file__).resolve().parents[2]
DAG_ID = "customer_segmentation"
TASKS = ["load_data_task", "data_preprocessing_task", "build_save_model_task", "load_model_task"]
SCREENSHOT = ROOT / "test-artifacts" / "airflow-dag-customer_segmentation.png"


def task_logs(home: Path, task_id: str) -> str:
    """The Airflow task log files of `task_id`, for failure messages."""
    files = sorted((home / "logs").rglob(f"*task_id={task_id}*/**/*.log"))
    return "\n".join(f"--- {f}\n{f.read_text(errors='replace')[-3000:]}" for f in files)


@pytest.fixture
def live_dir():
    """A directory of our own (pytest's basetemp is pruned by concurrent pytest sessions of
    the same user); kept on failure for the logs, removed after a pass."""
    path = Path(tempfile.mkdtemp(prefix="custseg-live-"))
    yield path
    if (path / "PASSED").exists():
        shutil.rmtree(path, ignore_errors=True)
    else:
        print(f"live test files kept in {path}")


SEGMENTS_SHOT = ROOT / "test-artifacts" / "airflow-segments-tab.png"
IFRAME_TEXT = """(() => { const f = document.querySelector('iframe');
  try { return f && f.contentDocument && f.contentDocument.body
        ? f.contentDocument.body.innerText : ''; } catch (e) { return ''; } })()"""
CLICK_TAB = """(() => { const tab = [...document.querySelectorAll('a, button')]
  .find(e => e.textContent.trim() === 'Segments'); if (tab) { tab.click(); return true; }
  return false; })()"""


def segments_tab(browser, stack) -> str:
    """On the DAG run page, click the plugin's "Segments" tab (one click) and return the text
    of the report it shows in its iframe; a screenshot is kept."""
    wait_for("the Segments tab", lambda: browser.evaluate(CLICK_TAB), timeout=60,
             interval=1.0, stack=stack)  # fmt: skip
    text = wait_for("the segment table in the Segments tab",
                    lambda: (lambda t: t if "segment" in t and "share" in t else None)(
                        browser.evaluate(IFRAME_TEXT) or ""),
                    timeout=90, interval=1.0, stack=stack)  # fmt: skip
    browser.screenshot(SEGMENTS_SHOT)
    return str(text)


def inbox_to_scores(api, stack, artifacts: Path) -> None:
    """A file dropped into the inbox is claimed by watch_inbox, announced on the
    custseg_new_customers asset, and scored by the asset-triggered score_customers run."""
    inbox = artifacts / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "data" / "sample" / "test.csv", inbox / ".new.csv.part")
    (inbox / ".new.csv.part").rename(inbox / "new.csv")  # written whole, then renamed
    wait_for("the lifecycle DAGs to be parsed",
             lambda: api.dag("watch_inbox") and api.dag("score_customers"),
             timeout=180, stack=stack)  # fmt: skip
    api.unpause("score_customers")
    api.unpause("watch_inbox")  # its scheduled run, or this one, claims the file
    api.trigger("watch_inbox", run_id="watch-1", conf={})

    def scored():
        done = [r for r in api.runs("score_customers") if r["state"] in ("success", "failed")]
        return done[0] if done else None

    run = wait_for("an asset-triggered score_customers run", scored, timeout=360, interval=3,
                   stack=stack)  # fmt: skip
    assert run["state"] == "success", run
    assert run["run_type"] == "asset_triggered", run
    folder = artifacts / "scores" / re.sub(r"[^A-Za-z0-9_.-]", "_", run["dag_run_id"]).strip("._")
    drift = json.loads((folder / "drift.json").read_text())
    assert drift["n_rows"] == 25 and drift["reference_run_id"].startswith("live-1")
    assert not (inbox / "new.csv").exists() and len(list((inbox / "claimed").iterdir())) == 1


def load_test(api, stack, artifacts: Path) -> None:
    """8 CLI runs and 4 DAG runs started at once into one artifacts root all complete; every
    read of latest.json meanwhile names a complete run; every run records its reference."""
    # forced past the promotion gate: this is about latest.json under concurrency, and these
    # runs on another table do not continue live-1's segments
    conf = {"k_max": 6, "n_init": 2, "select": "elbow", "artifacts_root": str(artifacts),
            "force_promote": True}  # fmt: skip
    dag_runs = [f"load-{i}" for i in range(4)]
    for run_id in dag_runs:
        api.trigger(DAG_ID, run_id=run_id, conf=conf)
    cli = [subprocess.Popen(
        [str(BIN / "custseg"), "run", "--input", str(ROOT / "data" / "sample" / "customers.csv"),
         "--out", str(artifacts), "--k-max", "6", "--n-init", "2", "--select", "elbow",
         "--run-id", f"cli-{i}", "--no-progress", "--force-promote"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) for i in range(8)]  # fmt: skip
    seen = set()

    def all_done() -> bool:
        latest = json.loads((artifacts / "latest.json").read_text())
        run_dir = Path(latest["run_dir"])
        assert (run_dir / "metrics.json").exists() and (run_dir / "model.skops").exists()
        seen.add(latest["run_id"])
        return all(p.poll() is not None for p in cli) and all(
            api.run_state(DAG_ID, r) in ("success", "failed") for r in dag_runs
        )

    wait_for("8 CLI and 4 DAG runs to finish", all_done, timeout=600, interval=0.5, stack=stack)
    for proc in cli:
        out, err = proc.communicate()
        assert proc.returncode == 0, err
    for run_id in dag_runs:
        assert api.run_state(DAG_ID, run_id) == "success", run_id
    names = [f"cli-{i}" for i in range(8)] + dag_runs
    for name in names:
        run_dir = next(d for d in (artifacts / "runs").iterdir() if re.fullmatch(
            rf"{name}(-try\d)?", d.name))  # fmt: skip
        for file in ("model.skops", "metrics.json", "report.html", "assignments.parquet"):
            assert (run_dir / file).exists(), (run_dir, file)
        record = json.loads((run_dir / "work" / "run.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert record["reference"] is not None  # live-1 was promoted before any of them
        assert metrics["reference_run_id"] == record["reference"]["run_id"]
    assert len(seen) >= 2  # latest.json moved while the runs finished


def test_standalone_runs_the_dag_from_rest_and_the_ui_shows_it(live_dir):
    if not Path(CHROMIUM).exists():
        missing(f"{CHROMIUM} not installed (.ci/run installs it: apt-get install chromium)")
    tmp_path = live_dir
    home, logs, artifacts = tmp_path / "airflow", tmp_path / "logs", tmp_path / "artifacts"
    write_password_file(home)

    def launch(port: int) -> tuple[list[str], dict[str, str]]:
        return [str(BIN / "airflow"), "standalone"], airflow_env(home, port=port, extra={
            "CUSTSEG_HOME": str(ROOT),
            "CUSTSEG_ARTIFACTS_ROOT": str(artifacts),
            "CUSTSEG_ALLOWED_ROOTS": os.pathsep.join([str(ROOT), str(tmp_path)]),
            # each DAG is unpaused when the test needs it: fewer writers on SQLite at once
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        })  # fmt: skip

    with Stack() as stack:
        # the API port is read back from the server's own sockets; a clash starts over
        _, port = start_on_free_port(stack, "standalone", launch, log_dir=logs, timeout=300)
        base = f"http://127.0.0.1:{port}"
        api = AirflowApi(base)
        try:
            wait_for("the API server and scheduler to be healthy", api.healthy, timeout=300,
                     stack=stack)  # fmt: skip
            # without a token the API refuses; with admin/admin from the preset file it answers
            assert api.http.get(f"/api/v2/dags/{DAG_ID}").status_code == 401
            wait_for("the dag-processor to register the DAG", lambda: api.dag(DAG_ID),
                     timeout=180, stack=stack)  # fmt: skip
            api.unpause(DAG_ID)
            conf = {"k_max": 6, "sweep_batches": 2, "artifacts_root": str(artifacts)}
            api.trigger(DAG_ID, run_id="live-1", conf=conf)
            state = api.wait_run(DAG_ID, "live-1", timeout=420, stack=stack)
            tis = {(t["task_id"], t["map_index"]): t["state"]
                   for t in api.task_instances(DAG_ID, "live-1")}  # fmt: skip
            assert state == "success", f"{tis}\n{stack.logs(80)}"
            assert tis[("sweep_k_task", 0)] == tis[("sweep_k_task", 1)] == "success"
            latest = json.loads((artifacts / "latest.json").read_text())
            # a manual REST run has no logical_date: the run directory is named by the run id
            # (`-try<n>` if the scheduler retried load_data_task, e.g. on a starved machine)
            assert re.fullmatch(r"live-1(-try\d)?", latest["run_id"]), task_logs(
                home, "load_data_task"
            )
            metrics = json.loads((Path(latest["run_dir"]) / "metrics.json").read_text())
            assert metrics["k_range"] == [1, 6] and metrics["predictions"]["n_rows"] == 25
            inbox_to_scores(api, stack, artifacts)
            load_test(api, stack, artifacts)

            with chromium(stack, logs) as browser:
                # The UI authenticates with the JWT in the `_token` cookie (what the login
                # form sets after POST /auth/token); set it directly, then open the DAG page.
                browser.set_cookie(base, "_token", api.token())
                browser.navigate(f"{base}/dags/{DAG_ID}/runs/live-1")
                text = wait_for("the DAG page to show the task ids",
                                lambda: (lambda t: t if all(x in t for x in TASKS) else None)(
                                    browser.text()),
                                timeout=90, interval=1.0, stack=stack)  # fmt: skip
                browser.screenshot(SCREENSHOT)
                segments = segments_tab(browser, stack)
            assert DAG_ID in text and "Sign in" not in text
            assert SCREENSHOT.stat().st_size > 10_000
            # one click from the DAG run page: the run's report, its segment table first
            assert "Customer segments" in segments and "Segments" in segments
            assert all(f"{i}\t" in segments for i in range(int(metrics["chosen_k"])))
            assert SEGMENTS_SHOT.stat().st_size > 10_000
        finally:
            api.close()
    for proc in stack.procs:
        assert not proc.alive(), proc.name
    (live_dir / "PASSED").touch()
