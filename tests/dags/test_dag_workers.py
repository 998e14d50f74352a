"""Inside Airflow tasks (`dag.test()`, in-process) the sweep and the stability check run on
worker processes, and give the CLI's results."""

from __future__ import annotations

import json
import logging

import pytest

from custseg.generate import generate_customers, write_table
from custseg.options import PipelineConfig
from custseg.rundir import safe_run_id
from tests.dags.test_dag_run import cli_metrics, run_dag
from tests.helpers import comparable

pytestmark = pytest.mark.airflow


def test_dag_tasks_use_worker_processes_and_match_the_cli(dag, tmp_base, caplog, monkeypatch):
    # the worker count follows the usable cores: pin it so the log lines do not depend on them
    monkeypatch.setattr("custseg.sweep.default_workers", lambda: 2)
    src = tmp_base / "workers.csv"
    write_table(generate_customers(2_000, segments=4, seed=5), str(src))
    root = tmp_base / "workers"
    with caplog.at_level(logging.INFO, logger="custseg.sweep"):
        dr, tis = run_dag(dag, input_path=str(src), test_path=None, artifacts_root=str(root),
                          k_max=8, sweep_batches=2)  # fmt: skip
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    # two mapped batches of 4 ks each, then the stability check: k = 2..8, 5 resamples each
    assert caplog.text.count("sweep: 4 tasks on 2 worker processes") == 2
    assert "stability: 7 tasks on 2 worker processes" in caplog.text
    assert "in-process" not in caplog.text
    metrics = json.loads((root / "runs" / safe_run_id(dr.run_id) / "metrics.json").read_text())
    cli, _ = cli_metrics(tmp_base / "workers-cli", PipelineConfig(k_max=8), src, None)
    assert comparable(metrics) == comparable(cli)
    assert metrics["chosen_k"] == 4
