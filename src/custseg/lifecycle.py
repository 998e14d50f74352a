"""Task bodies of the lifecycle DAGs: new customers arrive, are scored, and drift retrains.

- `watch_inbox` claims customer files dropped into the inbox folder (one per run) and
  announces each on the `custseg_new_customers` asset, with its path in the event's extra.
- `score_customers` runs on that asset (or by hand with `input_path`): it scores the file
  with the promoted model into `ARTIFACTS/scores/<run_id>/` and, when the drift verdict is
  significant, writes the retraining table (the promoted run's training data plus the new
  customers, deduplicated by customer id) and asks `customer_segmentation` to retrain on it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from custseg.errors import InputError
from custseg.orchestration import (
    _attach_to_task_log,
    allowed_roots,
    confine_path,
    default_artifacts_root,
    fail_fast_on_input_errors,
)
from custseg.sanitize import logger

log = logger(__name__)

ENV_INBOX = "CUSTSEG_INBOX"
TABLE_SUFFIXES = (".csv", ".parquet", ".gz", ".bz2", ".xz", ".zst", ".zip")
RETRAIN_FILE = "training.csv"


def default_inbox(home: str | os.PathLike[str]) -> str:
    """`$CUSTSEG_INBOX`, else `<artifacts root>/inbox`."""
    return os.environ.get(ENV_INBOX) or str(Path(default_artifacts_root(home)) / "inbox")


def score_params(home: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Keyword arguments of the `score_customers` DAG's `Param`s."""
    return {
        "input_path": {"default": None, "type": ["null", "string"], "title": "New customers",
                       "description": "File to score. Empty: the path in the triggering "
                       "asset event's extra (input_path)."},
        "artifacts_root": {"default": default_artifacts_root(home), "type": "string",
                           "minLength": 1, "title": "Artifacts root",
                           "description": "Scores with its promoted model (latest.json); "
                           "score sets go to ARTIFACTS/scores/<run_id>/."},
        "retrain_on_drift": {"default": True, "type": "boolean", "title": "Retrain on drift",
                             "description": "Trigger customer_segmentation when the overall "
                             "drift verdict is significant."},
        "psi_moderate": {"default": 0.1, "type": "number", "exclusiveMinimum": 0,
                         "title": "PSI of moderate drift", "description": "Feature and "
                         "segment-mix PSI at which drift is moderate."},
        "psi_significant": {"default": 0.2, "type": "number", "exclusiveMinimum": 0,
                            "title": "PSI of significant drift", "description": "PSI at "
                            "which drift is significant (and retrains)."},
    }  # fmt: skip


def event_input_paths(events: Any) -> list[str]:
    """The `input_path` of each triggering asset event's extra, oldest first."""
    out = []
    for batch in (events or {}).values():
        for event in batch:
            extra = getattr(event, "extra", None) or {}
            if isinstance(extra, Mapping) and extra.get("input_path"):
                out.append(str(extra["input_path"]))
    return out


def _input_of(params: Mapping[str, Any], events: Any, *, home: str | os.PathLike[str]) -> str:
    given = params.get("input_path") or None
    announced = event_input_paths(events)
    path = given or (announced[-1] if announced else None)
    if not path:
        raise InputError("input_path is missing: give it in the trigger conf, or trigger "
                         "score_customers through the custseg_new_customers asset with "
                         "{\"input_path\": ...} in the event's extra")  # fmt: skip
    if len(announced) > 1 and not given:
        log.warning("%d new-customer events arrived together; scoring the newest, %s (the "
                    "others: %s)", len(announced), path, announced[:-1])  # fmt: skip
    return confine_path(path, roots=allowed_roots(home), home=home, what="input_path")


def model_options(run: Any) -> dict[str, Any]:
    """The options that shaped `run`'s model, for a retraining that keeps them: its config
    as recorded, with the transform it resolved (a run on an order log retrains on the
    table it built, so `auto` would otherwise change meaning)."""
    request = run.record().request
    config = {k: v for k, v in request.config.to_dict().items() if v is not None}
    return {**config, "transform": request.model_transform}


def score_task(
    params: Mapping[str, Any], *, run_id: str, home: str | os.PathLike[str], events: Any = None
) -> dict[str, Any]:
    """Score the new customers with the promoted model; on significant drift (and
    `retrain_on_drift`), add the retraining table to the score set and say how to retrain."""
    from custseg.drift import Thresholds
    from custseg.rundir import ArtifactStore, safe_run_id
    from custseg.sanitize import csv_bytes
    from custseg.scoring import (
        drift_summary,
        retraining_table,
        score_customers_with_drift,
        write_score_set,
    )

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        root = confine_path(params["artifacts_root"], roots=allowed_roots(home), home=home,
                            what="artifacts_root")  # fmt: skip
        input_path = _input_of(params, events, home=home)
        thresholds = Thresholds.from_psi(params["psi_moderate"], params["psi_significant"],
                                         spelled=("psi_moderate", "psi_significant"))  # fmt: skip
        store = ArtifactStore(root)
        run = store.latest()
        if run is None:
            raise InputError(f"{store.latest_uri}: no promoted model to score with; run "
                             "customer_segmentation first")  # fmt: skip
        score = score_customers_with_drift(run, input_path, thresholds=thresholds)
        drift = score.drift
        retrain = drift["overall"] == "significant" and bool(params["retrain_on_drift"])
        extra, rule = {}, None
        if retrain:
            table, rule = retraining_table(run, input_path)
            extra[RETRAIN_FILE] = csv_bytes(table)
        folder = write_score_set(score, Path(root) / "scores" / safe_run_id(run_id), extra=extra)
    summary = drift_summary(drift)
    log.info("scored %d customers of %s with run %s -> %s", drift["n_rows"], input_path,
             run.run_id, folder)  # fmt: skip
    for name, f in drift["features"].items():
        log.info("  %s: PSI %.3f, KS %.3f (%s)", name, f["psi"], f["ks_stat"], f["verdict"])
    log.info("  segment mix PSI %.3f (%s); novelty share %.1f%%; distance ratio %.2f",
             drift["segments"]["psi"], drift["segments"]["verdict"], 100 * drift["novelty_share"],
             drift["distance_ratio"])  # fmt: skip
    log.info("overall drift verdict: %s", drift["overall"].upper())
    out: dict[str, Any] = {"score_dir": str(folder), "input_path": input_path,
                           "overall": drift["overall"], "reference_run_id": run.run_id,
                           "n_rows": drift["n_rows"], "novelty_share": drift["novelty_share"],
                           "retrain": None}  # fmt: skip
    if retrain:
        reason = f"{summary} in {folder} (scored against run {run.run_id})"
        out["retrain"] = {"input_path": str(folder / RETRAIN_FILE), "artifacts_root": root,
                          "reason": reason, **model_options(run)}  # fmt: skip
        log.info("retraining: %s; training data: %s", reason, rule)
    elif drift["overall"] == "significant":
        log.info("significant drift, but retrain_on_drift is off: nothing is retrained")
    else:
        log.info("no significant drift: nothing is retrained")
    return out


def claim_inbox_file(inbox: str | os.PathLike[str]) -> str | None:
    """Move the oldest customer file of `inbox` into `inbox/claimed/` and return its new
    path (None if there is none). The rename is atomic, so two watchers never claim one file;
    hidden and partial files (`.name`, `*.part`, `*.tmp`) are left for their writer."""
    folder = Path(inbox)
    if not folder.is_dir():
        return None
    claimed = folder / "claimed"
    candidates = []
    for entry in folder.iterdir():
        name = entry.name
        if name.startswith(".") or not name.lower().endswith(TABLE_SUFFIXES):
            continue
        try:
            if entry.is_file():
                candidates.append((entry.stat().st_mtime, name, entry))
        except FileNotFoundError:
            continue
    for _, name, entry in sorted(candidates):
        claimed.mkdir(exist_ok=True)
        target = claimed / f"{os.getpid()}-{os.urandom(3).hex()}-{name}"
        try:
            os.rename(entry, target)
        except FileNotFoundError:  # another watcher took it first
            continue
        log.info("claimed %s -> %s", entry, target)
        return str(target)
    return None


def watch_task(home: str | os.PathLike[str]) -> Any:
    """One poke of the inbox sensor: done (with the claimed path) when a file was there."""
    from airflow.sdk import PokeReturnValue

    _attach_to_task_log()
    inbox = default_inbox(home)
    path = claim_inbox_file(inbox)
    if path is None:
        log.info("inbox %s: no new customer file yet", inbox)
    return PokeReturnValue(is_done=path is not None, xcom_value={"input_path": path})


__all__ = [
    "claim_inbox_file",
    "default_inbox",
    "event_input_paths",
    "score_params",
    "score_task",
    "watch_task",
]
