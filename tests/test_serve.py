"""`custseg serve` against a real uvicorn server in a subprocess, driven with httpx."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.rundir import ArtifactStore
from tests.airflow_harness import free_port

httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

TOKEN = "test-token-1234"
FEATURES = ["Annual Income (k$)", "Spending Score (1-100)"]


class Server:
    """`custseg serve` in a subprocess on a free port; retried on a port clash."""

    def __init__(self, model: Path, tmp: Path, *, token: str | None = TOKEN) -> None:
        self.model, self.tmp, self.token = model, tmp, token

    def __enter__(self) -> Server:
        for _attempt in range(3):
            self.port = free_port()
            args = [sys.executable, "-m", "custseg.cli", "serve", "--model", str(self.model),
                    "--port", str(self.port)]  # fmt: skip
            env = {**os.environ, "CUSTSEG_SERVE_TOKEN": self.token or ""}
            self.log = open(self.tmp / f"serve-{self.port}.log", "w")  # noqa: SIM115
            self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                         env=env)  # fmt: skip
            self.client = httpx.Client(
                base_url=f"http://127.0.0.1:{self.port}",
                timeout=30,
                headers={"Authorization": f"Bearer {self.token}"},
            )
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.client.get("/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
            self.__exit__()
            if "address already in use" not in self.text():
                raise AssertionError(f"server did not become ready:\n{self.text()}")
        raise AssertionError("no free port after 3 attempts")

    def text(self) -> str:
        self.log.flush()
        return (self.tmp / f"serve-{self.port}.log").read_text()

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory, sample_csv):
    out = tmp_path_factory.mktemp("serve") / "art"
    run_pipeline(PipelineConfig(k_max=6, n_init=2), input_path=str(sample_csv), out=str(out),
                 run_id="first")  # fmt: skip
    return out


@pytest.fixture(scope="module")
def server(root, tmp_path_factory):
    with Server(root, tmp_path_factory.mktemp("serve-logs")) as srv:
        yield srv


def test_predictions_equal_custseg_predict(server, root, sample_test_csv, tmp_path):
    from custseg.cli import main

    assert main(["predict", "--model", str(root), "--input", str(sample_test_csv),
                 "--out", str(tmp_path / "p.csv")]) == 0  # fmt: skip
    expected = pd.read_csv(tmp_path / "p.csv")
    table = pd.read_csv(sample_test_csv)
    records = table[FEATURES].to_dict(orient="records")
    res = server.client.post("/predict", json=records)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["run_id"] == "first" and len(body["predictions"]) == len(table)
    got = pd.DataFrame(body["predictions"])
    assert got["segment"].tolist() == expected["segment"].tolist()
    assert got["distance"].round(6).tolist() == expected["distance"].round(6).tolist()
    assert (got["margin"] >= 0).all() and got["segment_name"].str.len().min() > 0
    one = server.client.post("/predict", json=records[0]).json()["predictions"]
    assert one == body["predictions"][:1]


@pytest.mark.parametrize(("body", "status", "words"), [
    (b'{"Annual Income (k$)": 5', 400, "malformed JSON"),
    (json.dumps([{"Annual Income (k$)": 5}]).encode(), 422,
     "record 0: missing feature 'Spending Score (1-100)'"),
    (json.dumps([{"Annual Income (k$)": 5, "Spending Score (1-100)": 5},
                 {"Annual Income (k$)": "x", "Spending Score (1-100)": 5}]).encode(), 422,
     "record 1: field 'Annual Income (k$)' is 'x', not a number"),
    (b'{"Annual Income (k$)": NaN, "Spending Score (1-100)": 1}', 422, "not a finite number"),
    (b'{"Annual Income (k$)": 1e999, "Spending Score (1-100)": 1}', 422, "not a finite number"),
    (json.dumps({"Annual Income (k$)": 1, "Spending Score (1-100)": 1, "Age": 3}).encode(), 422,
     "record 0: unknown field(s) ['Age']"),
    (json.dumps([{"Annual Income (k$)": 1, "Spending Score (1-100)": 1}] * 10_001).encode(),
     413, "10001 customers in one request, over the limit of 10000"),
    (b"[" + b" " * (6 << 20) + b"]", 413, "over 5242880"),
    (b"[]", 422, "no customers"),
])  # fmt: skip
def test_bad_input_gets_a_clear_status_and_never_crashes(server, body, status, words):
    res = server.client.post("/predict", content=body,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    assert res.status_code == status, res.text
    assert words in res.json()["detail"]
    assert server.client.get("/health").status_code == 200  # still up


def test_auth_health_model_metrics_and_docs(server):
    anon = httpx.Client(base_url=server.client.base_url, timeout=30)
    assert anon.post("/predict", json={}).status_code == 401
    assert anon.get("/model").status_code == 401
    assert anon.get("/health").json() == {"live": True, "ready": True, "run_id": "first"}
    info = server.client.get("/model").json()
    assert info["run_id"] == "first" and info["features"] == FEATURES
    assert info["scaler"] == "minmax" and len(info["segments"]) == info["k"]
    ok = server.client.post("/predict", json={FEATURES[0]: 40, FEATURES[1]: 60})
    assert ok.status_code == 200
    text = server.client.get("/metrics").text
    assert 'custseg_requests_total{path="/predict",status="200"}' in text
    assert 'custseg_requests_total{path="/predict",status="401"}' in text
    assert "custseg_request_seconds_bucket" in text
    docs = anon.get("/openapi.json").json()
    example = docs["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert example["example"][0] == {"Annual Income (k$)": 72, "Spending Score (1-100)": 81}
    anon.close()


def test_follows_promotion_without_failing_a_request(root, sample_csv, tmp_path):
    """A new promoted run is picked up while a client keeps sending requests; a model file
    that fails its checks is refused and the previous one keeps serving."""
    own = tmp_path / "art"
    shutil.copytree(root, own)
    with Server(own, tmp_path) as srv:
        statuses, runs, stop = [], set(), threading.Event()

        def client() -> None:
            with httpx.Client(base_url=srv.client.base_url, timeout=30,
                              headers=srv.client.headers) as c:  # fmt: skip
                while not stop.is_set():
                    res = c.post("/predict", json={FEATURES[0]: 50, FEATURES[1]: 50})
                    statuses.append(res.status_code)
                    if res.status_code == 200:
                        runs.add(res.json()["run_id"])

        thread = threading.Thread(target=client)
        thread.start()
        try:
            run_pipeline(PipelineConfig(k_max=4, n_init=2), input_path=str(sample_csv),
                         out=str(own), run_id="second", force_promote=True)  # fmt: skip
            deadline = time.monotonic() + 60
            while "second" not in runs and time.monotonic() < deadline:
                time.sleep(0.1)
            # a damaged promoted model: refused, "second" keeps serving. "third" is held
            # back by the gate (no segment holds half the customers), damaged, then promoted:
            # the server never sees it whole
            summary = run_pipeline(PipelineConfig(k_max=3, n_init=2), input_path=str(sample_csv),
                                   out=str(own), run_id="third", min_segment_share=0.5)  # fmt: skip
            assert summary["promoted"] is False
            (own / "runs" / "third" / "model.skops").write_bytes(b"PK\x03\x04 not a model")
            store = ArtifactStore(own)
            store.promote(store.run("third"))
            deadline = time.monotonic() + 60
            while (
                "refused" not in srv.text()
                and "not loaded" not in srv.text()
                and (time.monotonic() < deadline)
            ):
                time.sleep(0.1)
            time.sleep(0.5)
        finally:
            stop.set()
            thread.join()
        assert "second" in runs and "third" not in runs
        assert statuses and set(statuses) == {200}, set(statuses)
        assert srv.client.get("/model").json()["run_id"] == "second"
        assert "model not loaded, keeping the previous one" in srv.text()
        assert "custseg: serving run second (k=4)" in srv.text()


def test_novelty_flags_customers_beyond_their_segments_p99(server, root):
    metrics = json.loads((root / "runs" / "first" / "metrics.json").read_text())
    p99 = {int(k): v["p99"] for k, v in metrics["segment_distances"].items()}
    assert set(p99) == {s["segment"] for s in metrics["segments"]}
    centre = next(s for s in metrics["segments"])
    near = {f: centre[f"centroid {f}"] for f in FEATURES}
    far = {FEATURES[0]: 1000, FEATURES[1]: -500}
    got = server.client.post("/predict", json=[near, far]).json()["predictions"]
    assert got[0]["segment"] == centre["segment"] and got[0]["novel"] is False
    assert got[0]["distance"] < 1e-3 and got[1]["novel"] is True  # centroids rounded to 1e-4
    assert got[1]["distance"] > p99[got[1]["segment"]]
