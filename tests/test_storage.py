"""Storage by URI: the whole pipeline (input, artifacts root, latest.json) on non-local storage.

`memory://` runs in-process; `s3://` runs against a real S3 endpoint (moto's server on a free
127.0.0.1 port, s3fs as the client), as on a cluster with object storage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import fsspec
import pytest

from custseg import storage
from custseg.errors import InputError
from custseg.options import PipelineConfig, RunRequest
from custseg.pipeline import run_pipeline
from custseg.rundir import ArtifactStore, json_bytes, resolve_run
from tests.helpers import comparable
from tests.s3_server import moto_s3, use_endpoint

CONFIG = PipelineConfig(k_min=1, k_max=5, n_init=3)
RUN_FILES = {
    "assignments.parquet", "elbow.png", "metrics.json", "model.skops", "predictions.csv",
    "profile.csv", "report.html", "segments.png", "sse.csv",
}  # fmt: skip


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, sample_csv, sample_test_csv) -> dict:
    """The reference: the same pipeline with a local artifacts root."""
    out = tmp_path_factory.mktemp("local-art")
    summary = run_pipeline(CONFIG, input_path=str(sample_csv), test_path=str(sample_test_csv),
                           out=str(out), run_id="local")  # fmt: skip
    return json.loads((Path(summary["run_dir"]) / "metrics.json").read_text())


def _upload(src: Path, uri: str) -> str:
    storage.write_bytes(uri, src.read_bytes())
    return uri


def _check_remote_run(summary: dict, root: str, local_metrics: dict) -> dict:
    run_dir = summary["run_dir"]
    assert run_dir.startswith(root.rstrip("/") + "/runs/")
    for name in RUN_FILES:
        assert storage.exists(storage.join(run_dir, name)), name
    latest = ArtifactStore(root).latest()
    assert (latest.run_id, latest.uri) == (summary["run_id"], run_dir)
    assert resolve_run(root).uri == run_dir
    metrics = latest.metrics()
    assert metrics["input"].startswith(root.split("://")[0] + "://")
    assert comparable(metrics) == comparable(local_metrics)
    return metrics


def test_memory_uri_pipeline_matches_local(local_run, sample_csv, sample_test_csv):
    root = f"memory://custseg-{uuid.uuid4().hex[:8]}"
    data = _upload(sample_csv, f"{root}/in/customers.csv")
    test = _upload(sample_test_csv, f"{root}/in/test.csv")
    out = f"{root}/artifacts"
    summary = run_pipeline(CONFIG, input_path=data, test_path=test, out=out, run_id="mem-1")
    _check_remote_run(summary, out, local_run)
    # a second run replaces latest.json with one put; the first run stays intact
    second = run_pipeline(CONFIG, input_path=data, out=out, run_id="mem-2")
    assert ArtifactStore(out).latest().run_id == second["run_id"] == "mem-2"
    assert storage.exists(f"{out}/runs/mem-1/model.skops")
    fs = fsspec.filesystem("memory")
    leftovers = [p for p in fs.find(out.split("://", 1)[1]) if "latest" in p]
    assert leftovers == [f"/{out.split('://', 1)[1]}/latest.json"]
    fs.rm(root.split("://", 1)[1], recursive=True)


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory):
    """A real S3 API (moto's server) on 127.0.0.1, in its own process; yields its URL."""
    with moto_s3(tmp_path_factory.mktemp("moto")) as url:
        yield url


@pytest.mark.slow
def test_s3_pipeline_on_real_endpoint(s3_endpoint, local_run, sample_csv, sample_test_csv,
                                      monkeypatch, tmp_path):  # fmt: skip
    """run_pipeline with input and artifacts on s3://, then `custseg predict` from s3 in a
    separate process configured only through the environment (as an Airflow worker would be)."""
    use_endpoint(monkeypatch, s3_endpoint)
    bucket = f"custseg-{uuid.uuid4().hex[:8]}"
    fs = fsspec.filesystem("s3", endpoint_url=s3_endpoint)
    fs.mkdir(bucket)
    root = f"s3://{bucket}"
    data = _upload(sample_csv, f"{root}/in/customers.csv")
    test = _upload(sample_test_csv, f"{root}/in/test.csv")
    out = f"{root}/artifacts"
    summary = run_pipeline(CONFIG, input_path=data, test_path=test, out=out, run_id="s3-1")
    metrics = _check_remote_run(summary, out, local_run)
    assert fs.cat(f"{bucket}/artifacts/latest.json") == json_bytes(
        {"run_id": "s3-1", "run_dir": f"{out}/runs/s3-1"}
    )
    env = {**os.environ, "FSSPEC_S3_ENDPOINT_URL": s3_endpoint}
    pred = tmp_path / "pred.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "custseg.cli", "predict", "--model", out, "--input", test,
         "--out", str(pred)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    scored = pred.read_text().splitlines()
    assert len(scored) - 1 == metrics["predictions"]["n_rows"]
    local_pred = storage.read_bytes(f"{out}/runs/s3-1/predictions.csv").decode().splitlines()
    # every column, distance and out_of_range included, as the run itself wrote them
    assert scored == local_pred
    column = scored[0].split(",").index("distance")  # after the input's columns
    distances = [float(line.split(",")[column]) for line in scored[1:]]
    assert min(distances) >= 0 and max(distances) > 0


@pytest.mark.parametrize("scheme", ["path", "file", "s3"])
def test_a_reused_run_id_is_refused_on_every_scheme(scheme, s3_endpoint, monkeypatch, tmp_path):
    """The same message on a local path, a file:// URI and s3:// (the old check looked for a
    file the pipeline never wrote, so object storage accepted a reused id)."""
    if scheme == "s3":
        use_endpoint(monkeypatch, s3_endpoint)
        bucket = f"custseg-{uuid.uuid4().hex[:8]}"
        fsspec.filesystem("s3", endpoint_url=s3_endpoint).mkdir(bucket)
        root = f"s3://{bucket}/art"
    else:
        root = str(tmp_path / "art") if scheme == "path" else f"file://{tmp_path}/art"
    store = ArtifactStore(root)
    request = RunRequest(input_path="unused.csv", artifacts_root=root)
    first = store.create_run(request, run_id="same")
    assert first.record().request == request
    with pytest.raises(InputError, match=r"run directory .*/runs/same exists already; use a new"):
        store.create_run(request, run_id="same")


@pytest.mark.slow
def test_the_segments_view_reads_runs_and_score_sets_on_s3(s3_endpoint, sample_csv,
                                                          monkeypatch):  # fmt: skip
    """What the Airflow plugin serves, from an s3:// artifacts root: the run list, reports,
    a DAG run's run, score sets; names that are no folder of the root are NotFound."""
    from custseg import views

    use_endpoint(monkeypatch, s3_endpoint)
    bucket = f"custseg-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(bucket)
    root = f"s3://{bucket}/art"
    run_pipeline(CONFIG, input_path=str(sample_csv), out=root, run_id="manual__2026-12-01T10_00")
    store = ArtifactStore(root)
    storage.write_bytes(f"{root}/scores/s1/drift.json",
                        json_bytes({"overall": "none", "n_rows": 3, "novelty_share": 0.0,
                                    "reference_run_id": "manual__2026-12-01T10_00"}))  # fmt: skip
    storage.write_bytes(f"{root}/scores/s1/drift.html", b"<h1>Drift: none</h1>")
    rows = views.run_rows(store)
    assert [r.run_id for r in rows] == ["manual__2026-12-01T10_00"] and rows[0].current
    report = views.run_report(store, "manual__2026-12-01T10_00")
    assert report == storage.read_bytes(f"{root}/runs/manual__2026-12-01T10_00/report.html")
    assert views.latest_report(store) == report
    run = views.run_of_dag_run(store, "customer_segmentation", "manual__2026-12-01T10:00")
    assert run.run_id == "manual__2026-12-01T10_00"
    assert [s["overall"] for s in views.score_rows(store)] == ["none"]
    assert views.drift_page(store, "s1") == b"<h1>Drift: none</h1>"
    for bad in ("../art/runs/x", "..", ".hidden", "nope", "a/b"):
        with pytest.raises(views.NotFound):
            views.run_report(store, bad)
