"""The sweep on a sample gives the same answer as the sweep on every row (moderate data)."""

import numpy as np
import pandas as pd
import pytest

from custseg import storage
from custseg.generate import generate_customers, write_table
from custseg.options import PipelineConfig, RunRequest
from custseg.orchestration import run_staged, run_step
from custseg.rundir import run_at
from custseg.select import choose_elbow
from custseg.sweep import make_kmeans, sweep_k
from tests.helpers import comparable

pytestmark = pytest.mark.slow

ROWS = 60_000
CONFIG = PipelineConfig(k_min=1, k_max=12, n_init=3, seed=11)


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("scale")
    frame = generate_customers(ROWS, segments=5, seed=3)
    src = str(root / "customers.csv")
    write_table(frame, src)
    request = RunRequest(input_path=src, artifacts_root=str(root / "out"), config=CONFIG)
    summary = run_staged(request, run_id="sampled")
    run = run_at(summary["run_dir"])
    return run.uri, frame, run.load_sweep().points(), run.metrics()


def test_sample_sweep_matches_the_full_computation(sampled_run):
    run_dir, frame, _, metrics = sampled_run
    assert metrics["sample_size"] == 5_000 < metrics["n_rows_used"] == ROWS
    X = frame[["Annual Income (k$)", "Spending Score (1-100)"]].to_numpy(dtype=float)
    Xs = (X - X.min(axis=0)) / np.ptp(X, axis=0)
    ks = range(CONFIG.k_min, CONFIG.k_max + 1)
    full = sweep_k(Xs, ks, seed=CONFIG.seed, n_init=CONFIG.n_init)
    assert choose_elbow(full).chosen_k == metrics["chosen_k"] == 5
    best_full = min(
        make_kmeans(5, seed=s, n_init=1).fit(Xs).inertia_ for s in range(CONFIG.n_init + 2)
    )
    assert metrics["final_sse"] <= best_full * 1.01
    assignments = pd.read_parquet(storage.join(run_dir, "assignments.parquet"))
    assert len(assignments) == ROWS and assignments["CustomerID"].iloc[-1] == f"{ROWS:05d}"
    truth = pd.crosstab(frame["segment"], assignments["segment"])
    assert (truth.max(axis=1) / truth.sum(axis=1)).min() > 0.9  # segments recovered


def test_mapped_batches_give_the_single_task_sweep(sampled_run):
    run_dir, _, points, _ = sampled_run
    batches = run_at(run_dir).load_plan().batches(3)
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    merged = sorted((p for ks in reversed(batches) for p in run_step("sweep", run_dir, ks=ks)
                     .points()), key=lambda p: p["k"])  # fmt: skip
    assert [(p["k"], p["sse"]) for p in merged] == [(p["k"], p["sse"]) for p in points]


def test_sweep_is_deterministic_on_the_sample(sampled_run):
    run_dir, _, points, _ = sampled_run
    again = run_step("sweep", run_dir, ks=[2, 5, 9])
    by_k = {p["k"]: p["sse"] for p in points}
    assert list(again.sse) == [by_k[2], by_k[5], by_k[9]]


def test_large_run_artifacts_are_light_and_consistent(sampled_run):
    from custseg.io import read_table, table_metadata

    run_dir, frame, _, metrics = sampled_run
    customers = storage.join(run_dir, "work", "customers.parquet")
    assert table_metadata(customers)["sha256"] == metrics["data_sha256"]
    table = read_table(customers)
    assert isinstance(table.frame["CustomerID"].dtype, pd.ArrowDtype)  # no Python str objects
    profile = pd.read_csv(storage.join(run_dir, "profile.csv"))
    assignments = pd.read_parquet(storage.join(run_dir, "assignments.parquet"))
    assert profile["size"].sum() == ROWS
    income = frame["Annual Income (k$)"].groupby(assignments["segment"].to_numpy()).mean()
    np.testing.assert_allclose(profile["mean Annual Income (k$)"], income.round(4), atol=1e-4)


def test_one_process_run_equals_the_staged_run(sampled_run, tmp_path):
    """`run_pipeline` hands data between stages in memory; the Airflow stages use files."""
    from custseg.pipeline import run_pipeline

    run_dir, _, _, staged = sampled_run
    summary = run_pipeline(CONFIG, input_path=staged["input"], out=str(tmp_path), run_id="mem")
    metrics = run_at(summary["run_dir"]).metrics()
    assert comparable(metrics) == comparable(staged)
    assert metrics["segment_alignment"] is None is staged["segment_alignment"]
    assert metrics["data_sha256"] == staged["data_sha256"]
    assert not (tmp_path / "runs" / "mem" / "work" / "features.parquet").exists()
    pd.testing.assert_frame_equal(
        pd.read_parquet(storage.join(summary["run_dir"], "assignments.parquet")),
        pd.read_parquet(storage.join(run_dir, "assignments.parquet")),
    )


def test_the_model_file_does_not_grow_with_the_rows(sampled_run):
    """The training labels go to assignments.parquet, not into the model (O(k), not O(rows))."""
    from custseg.model import load_model

    run_dir, _, _, metrics = sampled_run
    path = run_at(run_dir).path("model.skops")
    assert len(storage.read_bytes(path)) < 100_000  # 60,000 int32 labels alone: 240 KB
    model = load_model(path)
    assert not hasattr(model[-1], "labels_")
    assert model[-1].n_clusters == metrics["chosen_k"]
