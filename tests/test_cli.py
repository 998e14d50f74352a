"""End to end through the `custseg` command, as a separate process."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # every test starts the CLI as a process

EXPECTED = {"model.skops", "metrics.json", "sse.csv", "elbow.png", "segments.png", "profile.csv",
            "predictions.csv", "report.html"}  # fmt: skip


def custseg(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "custseg.cli", *args], capture_output=True,
                          text=True, cwd=cwd)  # fmt: skip


@pytest.fixture(scope="module")
def mall_run(tmp_path_factory, mall_csv, sample_test_csv):
    out = tmp_path_factory.mktemp("out")
    res = custseg("run", "--input", str(mall_csv), "--test", str(sample_test_csv),
                  "--out", str(out), "--select", "elbow", "--run-id", "first")  # fmt: skip
    assert res.returncode == 0, res.stderr
    return out, res


def test_run_writes_the_artifact_set(mall_run):
    out, res = mall_run
    run_dir = out / "runs" / "first"
    assert EXPECTED <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    known = {
        "run_id": "first",
        "chosen_k": 6,
        "k_range": [1, 50],
        "scaler": "minmax",
        "seed": 42,
        "n_init": 10,
        "n_rows_read": 200,
        "n_rows_used": 200,
        "n_rows_dropped": {},
        "features": ["Annual Income (k$)", "Spending Score (1-100)"],
        "data_sha256": "901bc46e68f7178e84b05638d919c7d4d8e2c8b5e00e828c351af75bbcf662b4",
        "feature_min": [15.0, 1.0],
        "feature_max": [137.0, 99.0],
        "warnings": [],
    }
    assert {k: metrics[k] for k in known} == known  # --select elbow picks the knee, 6
    assert metrics["selection"]["method"] == "elbow" and metrics["selection"]["knee"] == 6
    assert len(metrics["sse"]) == 50 and metrics["sse"]["1"] > metrics["sse"]["50"] > 0
    assert metrics["created_at"].startswith("20") and len(metrics["model_sha256"]) == 64
    assert set(metrics["versions"]) == {"python", "scikit-learn", "custseg"}
    assert json.loads((out / "latest.json").read_text()) == {
        "run_id": "first",
        "run_dir": str(run_dir),
    }
    assert f"chosen k = {metrics['chosen_k']}" in res.stdout and "report:" in res.stdout
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table" in html
    for seg in metrics["segments"]:  # shares read as percentages, labels in the table
        assert f"<td>{seg['share']:.1%}</td>" in html and seg["label"] in html


def test_model_has_the_chosen_k_and_predicts_nearest_centroid(mall_run, sample_test_csv):
    out, _ = mall_run
    run_dir = out / "runs" / "first"
    from custseg.model import load_model

    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = load_model(str(run_dir / "model.skops"))
    assert model[-1].n_clusters == metrics["chosen_k"]
    assert metrics["final_sse"] == pytest.approx(metrics["sse"][str(metrics["chosen_k"])])
    pred = pd.read_csv(run_dir / "predictions.csv", dtype={"CustomerID": str})
    test = pd.read_csv(sample_test_csv, dtype={"CustomerID": str})
    feats = ["Annual Income (k$)", "Spending Score (1-100)"]
    scaled = model[0].transform(test[feats])
    nearest = ((scaled[:, None] - model[-1].cluster_centers_[None]) ** 2).sum(-1).argmin(1)
    assert pred["CustomerID"].tolist() == test["CustomerID"].tolist()
    np.testing.assert_array_equal(pred["segment"].to_numpy(), nearest)


def test_same_seed_gives_byte_identical_sse(mall_run, mall_csv):
    out, _ = mall_run
    res = custseg("run", "--input", str(mall_csv), "--out", str(out), "--select", "elbow",
                  "--run-id", "second")  # fmt: skip
    assert res.returncode == 0, res.stderr
    a = (out / "runs" / "first" / "sse.csv").read_bytes()
    b = (out / "runs" / "second" / "sse.csv").read_bytes()
    assert a == b and a.startswith(b"\xef\xbb\xbfk,sse\n1,")


def test_predict_command_uses_latest(mall_run, sample_test_csv, tmp_path):
    out, _ = mall_run
    res = custseg("predict", "--model", str(out), "--input", str(sample_test_csv),
                  "--out", str(tmp_path / "p.csv"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "scored 25 customers" in res.stdout
    assert len(pd.read_csv(tmp_path / "p.csv")) == 25


def test_bad_input_exits_2_without_traceback(tmp_path):
    res = custseg("run", "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path))
    assert res.returncode == 2
    assert "nope.csv: file not found" in res.stderr and "Traceback" not in res.stderr
    res = custseg("run", "--input", "x.csv", "--k-min", "9", "--k-max", "3", cwd=tmp_path)
    assert res.returncode == 2 and "k_min=9 > k_max=3" in res.stderr
    assert not (tmp_path / "artifacts").exists()  # nothing written, not even a log


def test_generate_writes_ground_truth(tmp_path):
    res = custseg("generate", "--rows", "1000", "--segments", "4", "--seed", "3",
                  "--out", str(tmp_path / "g.parquet"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    frame = pd.read_parquet(tmp_path / "g.parquet")
    assert len(frame) == 1000 and sorted(frame["segment"].unique()) == [0, 1, 2, 3]


def test_help_explains_commands():
    res = custseg("run", "--help")
    assert res.returncode == 0 and "--k-max" in res.stdout and "latest.json" in res.stdout


def test_output_into_a_closed_pipe_is_not_an_error(mall_run):
    """`custseg show | head -1`: the reader leaves before the output is written."""
    import os

    out, _ = mall_run
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read: every write gets EPIPE
    with os.fdopen(write_end, "wb") as closed_pipe:
        res = subprocess.run([sys.executable, "-m", "custseg.cli", "show", "--out", str(out)],
                             stdout=closed_pipe, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "internal error" not in res.stderr and "BrokenPipe" not in res.stderr


def test_show_prints_the_latest_runs_summary(mall_run, tmp_path):
    out, _ = mall_run
    latest = json.loads((out / "latest.json").read_text())
    metrics = json.loads((out / "runs" / latest["run_id"] / "metrics.json").read_text())
    res = custseg("show", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert f"custseg run {latest['run_id']}" in res.stdout
    assert f"chosen k = {metrics['chosen_k']} by" in res.stdout
    assert f"model: {latest['run_dir']}/model.skops" in res.stdout
    assert len([ln for ln in res.stdout.splitlines() if "%" in ln]) == metrics["chosen_k"]
    res = custseg("show", "--out", str(tmp_path))
    assert res.returncode == 2 and "latest.json not found" in res.stderr


def test_default_run_chooses_k_with_auto_and_prints_its_confidence(mall_csv, tmp_path):
    res = custseg("run", "--input", str(mall_csv), "--out", str(tmp_path), "--k-max", "10",
                  "--run-id", "auto")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "chosen k = 5 by auto: " in res.stdout and "criteria pick k=5" in res.stdout
    assert "  confidence " in res.stdout and "silhouette 5" in res.stdout
    run_dir = tmp_path / "runs" / "auto"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["selection"]["picks"]["silhouette"] == 5
    assert (run_dir / "selection.png").stat().st_size > 1000
