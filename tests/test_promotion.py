"""The promotion gate (a run replaces latest.json only when sound) and who moved on a retrain."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.promotion import gate_checks, promotion_decision, who_moved
from custseg.rundir import ArtifactStore

MALL = PipelineConfig(k_max=10)


def _metrics(root, run_id):
    return json.loads((root / "runs" / run_id / "metrics.json").read_text())


@pytest.fixture(scope="module")
def promoted_mall(tmp_path_factory, mall_csv):
    """An artifacts root whose promoted run is the Mall data at k=5."""
    root = tmp_path_factory.mktemp("gate") / "out"
    summary = run_pipeline(MALL, input_path=str(mall_csv), out=str(root), run_id="mall")
    assert summary["promoted"] and summary["chosen_k"] == 5
    return root


def test_each_check_of_the_gate_says_what_failed():
    selection = {"chosen_k": 4, "confidence": "low", "stability": {"agreement": 0.4}}
    alignment = {"aligned": True, "previous_k": 5, "kept_ids": 3, "matches": []}
    checks = gate_checks(selection, [0.5, 0.3, 0.19, 0.01], alignment, min_share=0.02,
                         min_stability=0.6)  # fmt: skip
    assert {c.name: c.passed for c in checks} == {
        "structure": True, "confidence": False, "stability": False,
        "smallest_segment": False, "continuity": False,
    }  # fmt: skip
    decision = promotion_decision(checks, force=False)
    assert decision["promoted"] is False and decision["forced"] is False
    assert decision["reason"].startswith("not promoted: confidence failed (low;")
    assert "smallest_segment failed (0.01;" in decision["reason"]
    assert "continuity failed (3 of 5 kept;" in decision["reason"]
    forced = promotion_decision(checks, force=True)
    assert forced["promoted"] is True and forced["forced"] is True
    assert forced["reason"].startswith("forced despite the gate: confidence failed")
    good = gate_checks({"chosen_k": 5, "confidence": "high", "stability": {"agreement": 1.0}},
                       [0.2] * 5, None, min_share=0.02, min_stability=0.6)  # fmt: skip
    assert promotion_decision(good, force=False) == {
        "promoted": True, "forced": False, "checks": [c.to_dict() for c in good],
        "reason": "every check of the promotion gate passed",
    }  # fmt: skip


def test_a_structureless_training_set_completes_but_is_not_promoted(promoted_mall, tmp_path):
    rng = np.random.default_rng(3)
    noise = tmp_path / "noise.csv"
    pd.DataFrame({"CustomerID": range(1, 301),
                  "Annual Income (k$)": rng.uniform(15, 140, 300).round(1),
                  "Spending Score (1-100)": rng.uniform(1, 100, 300).round(1)}).to_csv(
        noise, index=False)  # fmt: skip
    before = (promoted_mall / "latest.json").read_bytes()
    summary = run_pipeline(MALL, input_path=str(noise), out=str(promoted_mall), run_id="noise")
    assert summary["promoted"] is False and summary["latest"] is None
    assert (promoted_mall / "latest.json").read_bytes() == before
    metrics = _metrics(promoted_mall, "noise")
    assert metrics["chosen_k"] == 1
    assert metrics["promotion"]["reason"].startswith("not promoted: structure failed (1;")
    # it completed: every artifact is there, and the report says why it was not promoted
    run = ArtifactStore(promoted_mall).run("noise").check_complete()
    assert "Not promoted: the previous model stays" in run.read_bytes("report.html").decode()


def test_a_tiny_training_set_is_not_promoted(promoted_mall, tmp_path, mall_csv):
    tiny = tmp_path / "tiny.csv"
    pd.read_csv(mall_csv).head(12).to_csv(tiny, index=False)
    summary = run_pipeline(MALL, input_path=str(tiny), out=str(promoted_mall), run_id="tiny")
    assert summary["promoted"] is False
    assert ArtifactStore(promoted_mall).latest().run_id == "mall"
    failed = [c["name"] for c in _metrics(promoted_mall, "tiny")["promotion"]["checks"]
              if not c["passed"]]  # fmt: skip
    assert failed  # e.g. low confidence, or segments that do not continue the promoted ones


def test_force_promote_overrides_the_gate_and_is_recorded(tmp_path, mall_csv, capsys):
    from custseg.cli import main

    out = tmp_path / "out"
    tiny = tmp_path / "tiny.csv"
    pd.read_csv(mall_csv).head(12).to_csv(tiny, index=False)
    args = ["run", "--input", str(tiny), "--out", str(out), "--k-max", "4", "--n-init", "2",
            "--select", "elbow", "--no-progress"]  # fmt: skip
    assert main([*args, "--run-id", "gated"]) == 0
    text = capsys.readouterr().out
    assert "NOT PROMOTED, the previous model stays: not promoted: structure failed" in text
    assert "pass --force-promote to promote it anyway" in text
    assert not (out / "latest.json").exists()
    assert main([*args, "--run-id", "forced", "--force-promote"]) == 0
    assert "promoted by --force-promote: forced despite the gate" in capsys.readouterr().out
    assert json.loads((out / "latest.json").read_text())["run_id"] == "forced"
    promotion = _metrics(out, "forced")["promotion"]
    assert promotion["promoted"] is True and promotion["forced"] is True


def test_who_moved_on_a_retrain_with_ten_percent_new_customers(promoted_mall, tmp_path,
                                                               mall_csv):  # fmt: skip
    """20 new customers (10%) in a far corner: the 200 known ones are counted old -> new,
    and the new corner is a segment born in the retrain."""
    mall = pd.read_csv(mall_csv, dtype={"CustomerID": str})
    rng = np.random.default_rng(7)
    new = pd.DataFrame({"CustomerID": [f"N{i:03d}" for i in range(20)], "Genre": "Female",
                        "Age": 30, "Annual Income (k$)": rng.normal(135, 2, 20).round(),
                        "Spending Score (1-100)": rng.normal(50, 2, 20).round()})  # fmt: skip
    grown = tmp_path / "grown.csv"
    pd.concat([mall, new]).to_csv(grown, index=False)
    root = tmp_path / "out"
    run_pipeline(MALL, input_path=str(mall_csv), out=str(root), run_id="before")
    summary = run_pipeline(MALL, input_path=str(grown), out=str(root), run_id="after")
    metrics = _metrics(root, "after")
    moves = metrics["who_moved"]
    assert moves["customers_in_both"] == 200
    assert sum(r["customers"] for r in moves["table"]) == 200
    before = pd.read_parquet(root / "runs" / "before" / "assignments.parquet")
    after = pd.read_parquet(root / "runs" / "after" / "assignments.parquet")
    both = before.merge(after, on="CustomerID", suffixes=("_old", "_new"))
    assert moves["moved"] == int((both["segment_old"] != both["segment_new"]).sum())
    counts = both.groupby(["segment_old", "segment_new"]).size()
    assert {(r["from"], r["to"]): r["customers"] for r in moves["table"]} == {
        (int(a), int(b)): int(n) for (a, b), n in counts.items()}  # fmt: skip
    alignment = metrics["segment_alignment"]
    assert moves["born"] == [m["id"] for m in alignment["matches"] if m["previous_id"] is None]
    assert metrics["chosen_k"] == 6 and moves["born"] == [5] and moves["dissolved"] == []
    newcomers = after[after["CustomerID"].str.startswith("N")]["segment"]
    assert set(newcomers) == {5}
    assert moves["moved"] == 5  # 4 old customers joined the new corner, 1 moved next door
    assert "Who moved since before" in (root / "runs" / "after" / "report.html").read_text()
    assert summary["promoted"] is True  # the 5 old segments all continue


def test_who_moved_without_an_id_column_says_why():
    old = pd.DataFrame({"segment": [0, 1]})
    moves = who_moved(old, old, None, None)
    assert moves["customers_in_both"] is None and moves["why"].startswith("no customer id")


def test_who_moved_row_by_row_and_by_join_count_the_same():
    """Same customers in the same order are compared row by row (no join); shuffled, they
    are joined by id: both give the join's counts."""
    rng = np.random.default_rng(3)
    ids = pd.Series([f"C{i:05d}" for i in range(5000)], dtype="str")
    old = pd.DataFrame({"CustomerID": ids, "segment": rng.integers(0, 4, 5000)})
    new = pd.DataFrame({"CustomerID": ids, "segment": rng.integers(0, 6, 5000)})
    shuffled = new.sample(frac=1.0, random_state=1).reset_index(drop=True).iloc[:4000]
    assert not shuffled["CustomerID"].equals(old["CustomerID"])
    for current in (new, shuffled):
        both = old.merge(current, on="CustomerID", suffixes=("_old", "_new"))
        counts = both.groupby(["segment_old", "segment_new"]).size()
        moves = who_moved(old, current, "CustomerID", None)
        assert moves["customers_in_both"] == len(current)
        assert [(r["from"], r["to"], r["customers"]) for r in moves["table"]] == [
            (int(a), int(b), int(n)) for (a, b), n in counts.items()]  # fmt: skip
        assert moves["moved"] == int((both["segment_old"] != both["segment_new"]).sum())
