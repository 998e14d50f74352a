"""Run directories, JSON artifacts and the atomic promotion of `latest.json`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from typing import Any

from custseg import storage
from custseg.errors import InputError

log = logging.getLogger(__name__)

LATEST = "latest.json"
RUNS = "runs"
MODEL_FILE = "model.skops"


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique run id: `20261128T204512Z-3fa9c1`."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def safe_run_id(run_id: str) -> str:
    """A run id usable as a directory name (Airflow's contain `:` and `+`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).strip("._") or "run"


def run_dir_of(out: str, run_id: str) -> str:
    """`OUT/runs/<run_id>`."""
    return storage.join(out, RUNS, safe_run_id(run_id))


def create_run_dir(out: str, run_id: str) -> str:
    """Create a new, empty run directory; fail if the run id was used before."""
    run_dir = run_dir_of(out, run_id)
    if storage.is_remote(run_dir):
        if storage.exists(storage.join(run_dir, "work", "config.json")):
            raise InputError(f"run directory {run_dir} exists already; use a new run id")
        return run_dir
    path = storage.local_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise InputError(f"run directory {run_dir} exists already; use a new run id") from None
    return run_dir


def json_bytes(obj: Any) -> bytes:
    """Stable, readable JSON (sorted keys, 2-space indent, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(uri: str, obj: Any, *, atomic: bool = False) -> None:
    """Write JSON into a run directory; `atomic` for a file whose presence means "complete"."""
    if atomic:
        storage.replace_atomic(uri, json_bytes(obj))
    else:
        storage.write_bytes(uri, json_bytes(obj))


def read_json(uri: str) -> Any:
    """Read a JSON file."""
    return json.loads(storage.read_bytes(uri))


def check_complete(run_dir: str) -> str:
    """`run_dir` if it holds a finished run (model and metrics.json), else an `InputError`.

    `metrics.json` is written atomically as the last file before promotion, so a run killed
    or failed half-way never has one.
    """
    names = (MODEL_FILE, "metrics.json")
    missing = [n for n in names if not storage.exists(storage.join(run_dir, n))]
    if missing:
        raise InputError(
            f"{run_dir}: incomplete run (no {' and no '.join(missing)}): it failed or was "
            "stopped before it finished; use a complete run or rerun `custseg run`"
        )
    return run_dir


def promote(out: str, *, run_id: str, run_dir: str) -> str:
    """Point `OUT/latest.json` at a complete run, atomically; returns its URI."""
    if not storage.exists(storage.join(run_dir, "metrics.json")):
        raise RuntimeError(f"refusing to promote incomplete run {run_dir}: no metrics.json")
    target = storage.join(out, LATEST)
    storage.replace_atomic(target, json_bytes({"run_id": run_id, "run_dir": run_dir}))
    log.info("promoted run %s as %s", run_id, target)
    return target


def read_latest(out: str) -> dict[str, Any] | None:
    """The content of `OUT/latest.json`, or None if no run was promoted yet."""
    target = storage.join(out, LATEST)
    if not storage.exists(target):
        return None
    try:
        latest = read_json(target)
        str(latest["run_dir"])
    except (ValueError, KeyError, TypeError):
        raise InputError(
            f"{target}: not a valid latest.json (JSON with run_id and run_dir); "
            "delete it and rerun `custseg run`, or pass --model RUN_DIR"
        ) from None
    return latest


RUN_SPECIFIC_METRICS = ("run_id", "created_at", "input", "test")


def comparable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics.json` without what differs between two runs of the same data and seed (run id,
    time, input/test locations, predictions path), to check that two runs agree."""
    out = {k: v for k, v in metrics.items() if k not in RUN_SPECIFIC_METRICS}
    if out.get("predictions"):
        out["predictions"] = {k: v for k, v in out["predictions"].items() if k != "path"}
    return out


def resolve_run_dir(path: str) -> str:
    """A complete run directory from a run directory, a model file, or an artifacts root.

    An artifacts root resolves through its latest.json; a run that did not finish (no
    metrics.json) is refused with an `InputError`.
    """
    text = str(path)
    if text.endswith(".skops"):
        if not storage.exists(text):
            raise InputError(f"{text}: model file not found; check --model")
        return check_complete(text.rsplit("/", 1)[0] if "/" in text else ".")
    if storage.exists(storage.join(text, MODEL_FILE)) or storage.exists(storage.join(text, "work")):
        return check_complete(text)
    latest = read_latest(text)
    if latest is not None:
        return check_complete(str(latest["run_dir"]))
    raise InputError(
        f"{text}: neither a run directory (no {MODEL_FILE}) nor an artifacts root "
        f"(no {LATEST}); run `custseg run` first or pass --model RUN_DIR"
    )
