"""`custseg score`: predictions and drift of new customers against the training reference, on
the shared Mall data (its own copy, income +30%, a new far-away cluster)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from custseg.cli import main
from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.rundir import resolve_run
from custseg.scoring import score_customers_with_drift

INCOME, SCORE = "Annual Income (k$)", "Spending Score (1-100)"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mall_csv):
    out = tmp_path_factory.mktemp("drift") / "art"
    run_pipeline(PipelineConfig(), input_path=str(mall_csv), out=str(out), run_id="mall")
    return out


def test_the_same_data_shows_no_drift(trained, mall_csv):
    drift = score_customers_with_drift(resolve_run(str(trained)), str(mall_csv)).drift
    assert drift["overall"] == "none" and drift["reference_run_id"] == "mall"
    assert set(drift["features"]) == {INCOME, SCORE}
    for f in drift["features"].values():
        assert set(f) == {"psi", "ks_stat", "ks_p", "verdict"}
        assert f["psi"] < 0.01 and f["ks_stat"] < 0.01 and f["verdict"] == "none"
    assert drift["segments"]["psi"] < 1e-6 and drift["segments"]["verdict"] == "none"
    assert drift["distance_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert drift["novelty_share"] <= 0.05


def test_income_up_30_percent_is_significant_drift_on_income(trained, mall_csv, tmp_path):
    frame = pd.read_csv(mall_csv)
    frame[INCOME] = frame[INCOME] * 1.3
    path = tmp_path / "richer.csv"
    frame.to_csv(path, index=False)
    drift = score_customers_with_drift(resolve_run(str(trained)), str(path)).drift
    assert drift["features"][INCOME]["verdict"] == "significant"
    assert drift["features"][INCOME]["ks_p"] < 0.001
    assert drift["features"][SCORE]["verdict"] == "none"
    assert drift["overall"] == "significant"


def test_a_new_far_cluster_shows_a_high_novelty_share(trained, mall_csv, tmp_path):
    rng = np.random.default_rng(0)
    far = pd.DataFrame(
        {
            "CustomerID": [f"9{i:03d}" for i in range(60)],
            INCOME: rng.normal(250, 5, 60),
            SCORE: rng.normal(150, 5, 60),
        }
    )
    frame = pd.concat([pd.read_csv(mall_csv, dtype={"CustomerID": str}).iloc[:140], far])
    path = tmp_path / "far.csv"
    frame.to_csv(path, index=False)
    result = score_customers_with_drift(resolve_run(str(trained)), str(path))
    assert result.drift["novelty_share"] >= 0.3 and result.drift["verdicts"]["novelty"] == (
        "significant"
    )
    assert result.predictions["novel"].iloc[140:].all()
    assert result.predictions["novel"].iloc[:140].mean() < 0.05


def test_the_cli_writes_a_score_set_and_changes_nothing_else(trained, mall_csv, capsys):
    before = (trained / "latest.json").read_bytes()
    assert main(["score", "--model", str(trained), "--input", str(mall_csv)]) == 0
    out = capsys.readouterr().out
    assert "drift: none" in out
    (folder,) = (trained / "scores").iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["drift.html", "drift.json",
                                                        "predictions.csv"]  # fmt: skip
    pred = pd.read_csv(folder / "predictions.csv", dtype={"CustomerID": str})
    # the input's columns are kept, in the file's order (Genre and Age too)
    assert list(pred.columns) == ["CustomerID", "Genre", "Age", INCOME, SCORE, "segment",
                                  "segment_name", "distance", "margin", "novel"]  # fmt: skip
    assert len(pred) == 200 and pred["CustomerID"].iloc[0] == "0001"
    mall = pd.read_csv(mall_csv, dtype={"CustomerID": str})
    assert pred["Genre"].tolist() == mall["Genre"].tolist()
    assert pred["Age"].tolist() == mall["Age"].tolist()
    assert (pred["margin"] >= 0).all() and pred["segment_name"].str.len().min() > 0
    assert json.loads((folder / "drift.json").read_text())["overall"] == "none"
    assert "Drift: none" in (folder / "drift.html").read_text()
    assert (trained / "latest.json").read_bytes() == before


def test_bad_score_options_and_inputs_exit_2(trained, mall_csv, tmp_path, capsys):
    rc = main(["score", "--model", str(trained), "--input", str(mall_csv), "--psi-moderate",
               "0.3", "--psi-significant", "0.2"])  # fmt: skip
    assert rc == 2 and "--psi-moderate=0.3 must be > 0 and below" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("CustomerID,Age\n1,2\n")
    rc = main(["score", "--model", str(trained), "--input", str(bad), "--out",
               str(tmp_path / "s")])  # fmt: skip
    assert rc == 2 and "the model in" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_score_killed_mid_write_leaves_no_score_set(trained, mall_csv, tmp_path):
    """SIGKILL after predictions.csv, before drift.json: the score set's folder does not
    exist (only a hidden build folder beside it), and latest.json is untouched."""
    import os
    import signal
    import subprocess
    import sys

    before = (trained / "latest.json").read_bytes()
    target = tmp_path / "scores" / "killed"
    res = subprocess.run(
        [sys.executable, "-m", "custseg.cli", "score", "--model", str(trained), "--input",
         str(mall_csv), "--out", str(target)],
        env={**os.environ, "CUSTSEG_FAULT_IN_SCORE_SET": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not target.exists()
    leftovers = list(target.parent.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".killed.")
    assert sorted(p.name for p in leftovers[0].iterdir()) == ["predictions.csv"]
    assert (trained / "latest.json").read_bytes() == before


def test_scoring_while_training_runs_scores_against_a_complete_promoted_run(
    trained, mall_csv, tmp_path
):
    """A training run promotes while customers are scored: every score set is whole and
    names a run that was complete when it was read."""
    import threading

    from custseg.scoring import write_score_set

    root = tmp_path / "root"
    shutil.copytree(trained, root)
    done = threading.Event()

    def train() -> None:
        try:
            for i in range(2):
                run_pipeline(PipelineConfig(k_max=10), input_path=str(mall_csv), out=str(root),
                             run_id=f"again-{i}")  # fmt: skip
        finally:
            done.set()

    thread = threading.Thread(target=train)
    thread.start()
    seen, n = set(), 0
    while not done.is_set() or n < 3:
        result = score_customers_with_drift(resolve_run(str(root)), str(mall_csv))
        folder = write_score_set(result, tmp_path / "scores" / f"s{n}")
        assert sorted(p.name for p in folder.iterdir()) == ["drift.html", "drift.json",
                                                            "predictions.csv"]  # fmt: skip
        seen.add(result.drift["reference_run_id"])
        n += 1
    thread.join()
    assert seen <= {"mall", "again-0", "again-1"} and len(seen) >= 1
    for run_id in seen:
        assert (root / "runs" / run_id / "metrics.json").exists()
    assert json.loads((root / "latest.json").read_text())["run_id"] == "again-1"
