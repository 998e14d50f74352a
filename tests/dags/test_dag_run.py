"""The real DAG end to end with `dag.test()`: same artifacts as the CLI, clear failures."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
from custseg.rundir import safe_run_id
from tests.helpers import comparable

pytestmark = pytest.mark.airflow

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "sample"
ARTIFACT_FILES = {"model.skops", "metrics.json", "sse.csv", "elbow.png", "segments.png",
                  "profile.csv", "predictions.csv", "report.html"}  # fmt: skip


def run_dag(dag, **conf):
    """Run a freshly parsed DAG in-process (dag.test() keeps run_conf in dag.params, so a
    reused DAG object would carry one test's conf into the next); assert the state after,
    as dag.test() does not raise."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags")).dags[dag.dag_id]
    dr = dag.test(run_conf=conf)
    return dr, {ti.task_id: ti for ti in dr.get_task_instances()}


def cli_metrics(out: Path, config: PipelineConfig, input_path: Path, test_path: Path | None):
    summary = run_pipeline(config, input_path=str(input_path), out=str(out),
                           test_path=str(test_path) if test_path else None)  # fmt: skip
    return json.loads((Path(summary["run_dir"]) / "metrics.json").read_text()), summary


def latest(root: Path) -> dict:
    return json.loads((root / "latest.json").read_text())


@pytest.fixture(scope="module")
def sample_runs(dag, tmp_base):
    """One CLI run and two DAG runs (1 and 3 sweep batches) on the bundled sample, k<=6."""
    root = tmp_base / "sample"
    conf = {"input_path": str(SAMPLE / "customers.csv"), "test_path": str(SAMPLE / "test.csv"),
            "k_max": 6, "artifacts_root": str(root)}  # fmt: skip
    runs = {}
    for batches in (1, 3):
        dr, tis = run_dag(dag, **conf, sweep_batches=batches)
        assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
        runs[batches] = (dr, tis, latest(root))
    # the CLI's runs into one root mirror the DAG's: the second aligns to the first
    cli = [
        cli_metrics(
            tmp_base / "sample-cli",
            PipelineConfig(k_max=6),
            SAMPLE / "customers.csv",
            SAMPLE / "test.csv",
        )[0]
        for _ in range(2)
    ]
    return root, runs, cli


def test_dag_run_writes_the_artifacts_and_matches_the_cli(sample_runs):
    root, runs, cli = sample_runs
    dr, tis, promoted = runs[1]
    run_dir = root / "runs" / safe_run_id(dr.run_id)  # named after the Airflow run id
    assert promoted == {"run_id": safe_run_id(dr.run_id), "run_dir": str(run_dir)}
    assert ARTIFACT_FILES <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["segment_alignment"] is None and metrics["reference_run_id"] is None
    assert comparable(metrics) == comparable(cli[0])
    assert metrics["k_range"] == [1, 6] and metrics["predictions"]["n_rows"] == 25
    assert set(tis) == {"load_data_task", "data_preprocessing_task", "plan_sweep_task",
                        "sweep_k_task", "build_save_model_task", "align_segments_task",
                        "profile_segments_task", "load_model_task"}  # fmt: skip
    assert all(ti.state == "success" for ti in tis.values())


def test_three_sweep_batches_give_identical_metrics(sample_runs):
    root, runs, cli = sample_runs
    dr3, _, promoted = runs[3]
    mapped = [ti for ti in dr3.get_task_instances() if ti.task_id == "sweep_k_task"]
    assert sorted(ti.map_index for ti in mapped) == [0, 1, 2]
    assert sorted(ti.rendered_map_index for ti in mapped) == ["k=1..2", "k=3..4", "k=5..6"]
    metrics = json.loads((Path(promoted["run_dir"]) / "metrics.json").read_text())
    # aligned to the first DAG run, recorded when this run started; compared with the CLI's
    # second run, which aligned to the CLI's first
    assert metrics["reference_run_id"] == runs[1][2]["run_id"]
    assert metrics["segment_alignment"]["aligned"] is True
    assert metrics["segment_alignment"]["kept_ids"] == metrics["chosen_k"]
    assert comparable(metrics) == comparable(cli[1])
    assert promoted["run_id"] == safe_run_id(dr3.run_id)  # promoted by the later run


def test_the_model_asset_event_carries_the_run_model_path(sample_runs):
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    _, runs, _ = sample_runs
    ours = {dr.run_id for dr, _, _ in runs.values()}  # other modules' runs share the DB
    with create_session() as session:
        events = (
            session.query(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetModel.name == "customer_segmentation_model")
            .all()
        )
        extras = [e.extra for e in events if e.source_run_id in ours]
    assert len(extras) == len(ours)
    models = {x["model"] for x in extras}
    for _, _, promoted in runs.values():
        assert str(Path(promoted["run_dir"]) / "model.skops") in models
    assert all(Path(m).is_file() for m in models)


@pytest.mark.slow
def test_mall_customers_at_defaults_matches_the_cli(dag, tmp_base, mall_csv):
    """The canonical data, the full k = 1..50 sweep, split over 2 mapped batches."""
    root = tmp_base / "mall"
    dr, tis = run_dag(dag, input_path=str(mall_csv), test_path=None, artifacts_root=str(root),
                      sweep_batches=2)  # fmt: skip
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    metrics = json.loads((root / "runs" / safe_run_id(dr.run_id) / "metrics.json").read_text())
    # the DAG resolves symlinks in paths (confinement), so give the CLI the same real path
    cli, _ = cli_metrics(tmp_base / "mall-cli", PipelineConfig(), mall_csv.resolve(), None)
    assert comparable(metrics) == comparable(cli)
    assert metrics["k_range"] == [1, 50] and metrics["n_rows_used"] == 200


def test_an_order_log_is_segmented_like_the_cli(dag, tmp_base):
    """transactions_path: the DAG builds the customer table from CDNOW and segments it, as
    `custseg run --transactions` does (the form's default input_path gives way to it)."""
    from tests.conftest import shared_file

    cdnow = shared_file("cdnow_transactions.csv").resolve()
    root = tmp_base / "orders"
    dr, tis = run_dag(dag, transactions_path=str(cdnow), test_path=None, k_max=6,
                      artifacts_root=str(root))  # fmt: skip
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    metrics = json.loads((root / "runs" / safe_run_id(dr.run_id) / "metrics.json").read_text())
    assert metrics["transactions"]["n_customers"] == 23_570 and metrics["n_rows_used"] == 23_570
    assert metrics["features"] == ["recency_days", "frequency", "monetary_mean"]
    assert metrics["transform"] == "log1p"
    cli = run_pipeline(PipelineConfig(k_max=6), input_path="", out=str(tmp_base / "orders-cli"),
                       transactions_path=str(cdnow))  # fmt: skip
    cli_metrics = json.loads((Path(cli["run_dir"]) / "metrics.json").read_text())
    assert comparable(metrics) == comparable(cli_metrics)


def test_a_categorical_feature_is_segmented_like_the_cli(dag, tmp_base, mall_csv):
    """features with Gender: the DAG one-hot encodes it inside the model, as the CLI does."""
    root = tmp_base / "gender"
    features = ["Gender", "Annual Income (k$)", "Spending Score (1-100)"]
    dr, tis = run_dag(dag, input_path=str(mall_csv), test_path=str(SAMPLE / "test.csv"),
                      features=features, k_max=6, artifacts_root=str(root))  # fmt: skip
    assert dr.state == "success", {t: ti.state for t, ti in tis.items()}
    metrics = json.loads((root / "runs" / safe_run_id(dr.run_id) / "metrics.json").read_text())
    assert metrics["categories"] == {"Genre": ["Female", "Male"]}
    assert {"share Genre=Female", "share Genre=Male"} <= set(metrics["segments"][0])
    cli, _ = cli_metrics(tmp_base / "gender-cli", PipelineConfig(features=tuple(features), k_max=6),
                         mall_csv.resolve(), SAMPLE / "test.csv")  # fmt: skip
    assert comparable(metrics) == comparable(cli)


def _failed_at_load(dag, capfd, conf, root):
    before = (root / "latest.json").read_bytes()
    dr, tis = run_dag(dag, **conf)
    log = capfd.readouterr()
    assert dr.state == "failed"
    assert tis["load_data_task"].state == "failed"
    assert tis["load_data_task"].try_number == 1  # AirflowFailException: no retries
    assert tis["data_preprocessing_task"].state == "upstream_failed"
    assert (root / "latest.json").read_bytes() == before
    return log.out + log.err


def test_bad_input_fails_at_load_with_the_message_and_keeps_latest(
    dag, sample_runs, tmp_base, capfd
):
    root, _, _ = sample_runs
    bad = tmp_base / "no_spending.csv"
    bad.write_text("CustomerID,Annual Income (k$),Age\n1,15,20\n2,16,30\n")
    text = _failed_at_load(dag, capfd, {"input_path": str(bad), "artifacts_root": str(root)},
                           root)  # fmt: skip
    assert "AirflowFailException" in text
    assert str(bad) in text and "Spending Score (1-100)" in text


def test_k_min_above_k_max_fails_the_first_task(dag, sample_runs, capfd):
    root, _, _ = sample_runs
    text = _failed_at_load(dag, capfd, {"k_min": 8, "k_max": 3, "artifacts_root": str(root)},
                           root)  # fmt: skip
    assert "k_min=8 > k_max=3" in text


def test_an_unknown_conf_key_fails_at_load_naming_the_option(dag, sample_runs, capfd):
    root, _, _ = sample_runs
    text = _failed_at_load(dag, capfd, {"kmax": 5, "artifacts_root": str(root)}, root)
    assert "unknown option 'kmax': did you mean k_max?" in text


def test_a_path_outside_the_allowed_roots_is_rejected(dag, sample_runs, capfd):
    root, _, _ = sample_runs
    escape = str(ROOT / ".." / ".." / "etc" / "passwd")
    text = _failed_at_load(dag, capfd, {"input_path": escape, "artifacts_root": str(root)}, root)
    assert "outside the allowed roots" in text and "etc/passwd" in text
    outside = Path(tempfile.gettempdir()) / f"custseg-outside-{uuid.uuid4().hex[:8]}"
    text = _failed_at_load(dag, capfd, {"artifacts_root": str(outside)}, root)
    assert f"artifacts_root '{outside}'" in text
    assert not outside.exists()
