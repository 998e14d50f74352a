"""The real DAG with input, artifacts root and latest.json on object storage (`s3://` served by
moto on 127.0.0.1), as on a cluster whose workers share no disk: same metrics as a local run."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from custseg import storage
from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.rundir import ArtifactStore
from tests.dags.test_dag_run import run_dag
from tests.helpers import comparable
from tests.s3_server import moto_s3, use_endpoint

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"


def test_dag_on_s3_matches_local_run(dag, tmp_path, monkeypatch):
    with moto_s3(tmp_path) as endpoint:
        use_endpoint(monkeypatch, endpoint)
        import fsspec

        bucket = f"custseg-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3", endpoint_url=endpoint).mkdir(bucket)
        root = f"s3://{bucket}/custseg"
        # the allowed root is the artifacts root itself, as the README's S3 deployment has it
        monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", os.pathsep.join([str(ROOT), root]))
        for name in ("customers.csv", "test.csv"):
            storage.write_bytes(f"{root}/in/{name}", (SAMPLE / name).read_bytes())
        out = root
        dr, tis = run_dag(dag, input_path=f"{root}/in/customers.csv",
                          test_path=f"{root}/in/test.csv", k_max=5, artifacts_root=out,
                          sweep_batches=2)  # fmt: skip
        assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
        latest = ArtifactStore(out).latest()
        assert latest.uri.startswith(f"{out}/runs/")
        for name in ("model.skops", "report.html", "predictions.csv"):
            assert latest.exists(name), name
        metrics = latest.metrics()
    local = run_pipeline(
        PipelineConfig(k_max=5), input_path=str(SAMPLE / "customers.csv"),
        test_path=str(SAMPLE / "test.csv"), out=str(tmp_path / "local"),
    )  # fmt: skip
    expected = json.loads((Path(local["run_dir"]) / "metrics.json").read_text())
    assert metrics["input"] == f"{root}/in/customers.csv"
    assert comparable(metrics) == comparable(expected)
