"""The lifecycle DAGs with `dag.test()`: score new customers, retrain on drift, watch the inbox."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.rundir import safe_run_id
from tests.dags.conftest import ROOT

pytestmark = pytest.mark.airflow

INCOME = "Annual Income (k$)"


def parse(dag_id):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def run(dag_id, **conf):
    dr = parse(dag_id).test(run_conf=conf)
    return dr, {ti.task_id: ti.state for ti in dr.get_task_instances()}


@pytest.fixture(scope="module")
def trained(tmp_base, mall_csv):
    """An artifacts root whose promoted model is the Mall data's."""
    root = tmp_base / "lifecycle"
    summary = run_pipeline(PipelineConfig(k_max=10), input_path=str(mall_csv), out=str(root),
                           run_id="mall")  # fmt: skip
    assert summary["promoted"]
    return root


def drift_of(root: Path, dr) -> dict:
    return json.loads((root / "scores" / safe_run_id(dr.run_id) / "drift.json").read_text())


def test_the_training_data_scored_again_shows_no_drift_and_retrains_nothing(
    trained, mall_csv, airflow_db
):
    dr, states = run("score_customers", input_path=str(mall_csv), artifacts_root=str(trained))
    assert dr.state == "success", states
    assert states == {
        "score_new_customers_task": "success",
        "drift_is_significant_task": "success",
        "retrain_task": "skipped",
    }
    drift = drift_of(trained, dr)
    assert drift["overall"] == "none" and drift["reference_run_id"] == "mall"
    folder = trained / "scores" / safe_run_id(dr.run_id)
    assert sorted(p.name for p in folder.iterdir()) == ["drift.html", "drift.json",
                                                        "predictions.csv"]  # fmt: skip


def test_income_up_30_percent_is_significant_drift_and_triggers_retraining(
    trained, mall_csv, tmp_base, airflow_db
):
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    shifted = tmp_base / "mall_income_up_30.csv"
    frame = pd.read_csv(mall_csv, dtype={"CustomerID": str})
    frame[INCOME] = (frame[INCOME] * 1.3).round()
    frame.to_csv(shifted, index=False)
    dr, states = run("score_customers", input_path=str(shifted), artifacts_root=str(trained))
    assert dr.state == "success", states
    assert states["retrain_task"] == "success", states
    drift = drift_of(trained, dr)
    assert drift["overall"] == "significant"
    assert drift["features"][INCOME]["verdict"] == "significant"
    assert drift["features"]["Spending Score (1-100)"]["verdict"] == "none"
    training = trained / "scores" / safe_run_id(dr.run_id) / "training.csv"
    table = pd.read_csv(training, dtype={"CustomerID": str})
    # the same 200 customer ids: deduplicated, the new (shifted) rows win
    assert len(table) == 200 and table[INCOME].tolist() == frame[INCOME].tolist()
    with create_session() as session:
        retrain = session.query(DagRun).filter(
            DagRun.dag_id == "customer_segmentation", DagRun.run_id == f"retrain__{dr.run_id}"
        ).one()  # fmt: skip
        conf = dict(retrain.conf)
    assert conf["input_path"] == str(training)
    assert conf["artifacts_root"] == str(trained)
    assert conf["reason"].startswith(f"drift significant: {INCOME} PSI ")
    # the retraining keeps the promoted model's options (features are a list, not text)
    record = json.loads((Path(conf["artifacts_root"]) / "latest.json").read_text())
    options = json.loads((Path(record["run_dir"]) / "work" / "run.json").read_text())
    assert conf["features"] == options["request"]["config"]["features"]
    assert conf["k_max"] == options["request"]["config"]["k_max"] and conf["transform"] == "none"

    # the triggered retraining, run here (dags test never runs the runs it triggers)
    dr2, states2 = run("customer_segmentation", **conf, test_path=None)
    assert dr2.state == "success", states2
    run_dir = trained / "runs" / safe_run_id(dr2.run_id)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["reason"] == conf["reason"] and metrics["input"] == str(training)
    assert metrics["reference_run_id"] == "mall"
    assert metrics["who_moved"]["customers_in_both"] == 200
    latest = json.loads((trained / "latest.json").read_text())["run_id"]
    promotion = metrics["promotion"]
    assert latest == (metrics["run_id"] if promotion["promoted"] else "mall"), promotion


def test_without_a_promoted_model_scoring_fails_with_a_clear_message(
    tmp_base, mall_csv, capfd, airflow_db
):
    empty = tmp_base / "no-model"
    dr, states = run("score_customers", input_path=str(mall_csv), artifacts_root=str(empty))
    assert dr.state == "failed" and states["score_new_customers_task"] == "failed"
    assert "no promoted model to score with; run customer_segmentation first" in (
        capfd.readouterr().out)  # fmt: skip
    assert not (empty / "scores").exists()


def test_watch_inbox_claims_a_file_and_announces_it_on_the_asset(mall_csv, airflow_db):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from tests.dags.conftest import ARTIFACTS

    inbox = ARTIFACTS / "inbox"  # the default inbox: the asset's URI is fixed at parse time
    inbox.mkdir(parents=True)
    (inbox / "later.csv.part").write_text("still being written")
    (inbox / "new.csv").write_bytes(mall_csv.read_bytes())
    dr, states = run("watch_inbox")
    assert dr.state == "success", states
    claimed = list((inbox / "claimed").iterdir())
    assert len(claimed) == 1 and claimed[0].name.endswith("-new.csv")
    assert claimed[0].read_bytes() == mall_csv.read_bytes()
    assert sorted(p.name for p in inbox.iterdir()) == ["claimed", "later.csv.part"]
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "custseg_new_customers")
            .all()
        )  # fmt: skip
        extras = [e.extra for e in events if e.source_run_id == dr.run_id]
    assert extras == [{"input_path": str(claimed[0])}]
    assert os.path.isabs(extras[0]["input_path"])
