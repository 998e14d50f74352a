"""Helpers shared by tests: comparing the metrics of two runs of the same data and seed."""

from __future__ import annotations

from typing import Any

RUN_SPECIFIC = ("run_id", "created_at", "input", "test", "reference_run_id", "model_sha256")


def comparable(metrics: dict[str, Any], *, keep_paths: bool = False) -> dict[str, Any]:
    """`metrics.json` without what differs between two runs of the same data, seed and
    reference: run id, time, where the input and predictions live, and which earlier run
    the segment ids were aligned to (its ids and its matches are kept), and the model file's
    hash (skops names array members by object id, so equal models differ in bytes)."""
    drop = RUN_SPECIFIC[:2] + (() if keep_paths else RUN_SPECIFIC[2:4]) + RUN_SPECIFIC[4:]
    drop += ("origin",)  # who started the run: the CLI (None) or an Airflow DAG run
    out = {k: v for k, v in metrics.items() if k not in drop}
    if out.get("predictions"):
        out["predictions"] = {k: v for k, v in out["predictions"].items() if k != "path"}
    if out.get("transactions") and not keep_paths:  # where the built table is kept
        out["transactions"] = {k: v for k, v in out["transactions"].items() if k != "out"}
    if out.get("segment_alignment"):
        out["segment_alignment"] = {
            k: v for k, v in out["segment_alignment"].items()
            if k not in ("previous_run_id", "previous_run_dir")
        }  # fmt: skip
    return out
