"""What the Segments view shows: runs, reports and score sets of an artifacts root.

Pure lookups and HTML over `custseg.rundir`; the Airflow plugin (`custseg.airflow_plugin`)
only wires them to routes. Every name that comes from a URL is checked against `NAME` and
looked up inside the artifacts root, so a request can never reach another path.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

from custseg import storage
from custseg.rundir import REPORT, ArtifactStore, RunDir, list_runs, safe_run_id
from custseg.sanitize import logger

log = logger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
SCORES = "scores"


class NotFound(LookupError):
    """No such run or score set in the artifacts root (or a name that cannot be one)."""


@dataclass(frozen=True)
class RunRow:
    """One line of the run list."""

    run_id: str
    created_at: str | None
    airflow_run_id: str | None
    k: int | None
    confidence: str | None
    rows_used: int | None
    promoted: bool | None
    current: bool
    complete: bool
    reason: str | None


def checked_name(name: str) -> str:
    """`name` if it can be a run or score-set folder name, else `NotFound`."""
    if not NAME.fullmatch(name) or ".." in name:
        raise NotFound(name)
    return name


def run_rows(store: ArtifactStore) -> list[RunRow]:
    """Every run of the root, newest first, with what its metrics say."""
    rows = []
    for info in reversed(list_runs(store)):
        metrics: dict[str, Any] = {}
        if info.complete:
            try:
                metrics = info.run.metrics()
            except (OSError, ValueError) as exc:
                log.warning("%s: metrics unreadable (%s)", info.run.uri, exc)
        selection = metrics.get("selection") or {}
        promotion = metrics.get("promotion") or {}
        origin = metrics.get("origin") or {}
        rows.append(RunRow(
            run_id=info.run.run_id, created_at=metrics.get("created_at"),
            airflow_run_id=origin.get("airflow_run_id"), k=metrics.get("chosen_k"),
            confidence=selection.get("confidence"), rows_used=metrics.get("n_rows_used"),
            promoted=promotion.get("promoted"), current=info.promoted,
            complete=info.complete, reason=metrics.get("reason"),
        ))  # fmt: skip
    return rows


def run_report(store: ArtifactStore, run_id: str) -> bytes:
    """The report of run `run_id` (self-contained HTML: its images are inline)."""
    run = store.run(checked_name(run_id))
    if not storage.exists(run.path(REPORT)):
        raise NotFound(run_id)
    return run.read_bytes(REPORT)


def latest_report(store: ArtifactStore) -> bytes:
    """The report of the promoted run."""
    run = store.latest()
    if run is None:
        raise NotFound("latest")
    return run_report(store, run.run_id)


def run_of_dag_run(store: ArtifactStore, dag_id: str, airflow_run_id: str) -> RunDir:
    """The custseg run a DAG run made: the one whose record names it, else the folder named
    after it (`<run id>` or, after a retried first task, `<run id>-try<n>`)."""
    rows = run_rows(store)
    candidates = [r for r in rows if r.airflow_run_id == airflow_run_id]
    if not candidates:
        named = re.escape(safe_run_id(airflow_run_id)) + r"(-try\d+)?"
        candidates = [r for r in rows if re.fullmatch(named, r.run_id)]
    complete = [r for r in candidates if r.complete]
    if not (complete or candidates):
        raise NotFound(f"{dag_id}/{airflow_run_id}")
    return store.run((complete or candidates)[0].run_id)


def score_rows(store: ArtifactStore) -> list[dict[str, Any]]:
    """Every score set of the root, newest first: its id, overall verdict and rows."""
    folder = storage.join(store.root, SCORES)
    out = []
    for uri in storage.list_dirs(folder) if storage.exists(folder) else []:
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        try:
            drift = json.loads(storage.read_bytes(storage.join(uri, "drift.json")))
        except (OSError, ValueError):
            continue
        out.append({"score_id": name, "overall": drift.get("overall"),
                    "n_rows": drift.get("n_rows"), "novelty_share": drift.get("novelty_share"),
                    "reference_run_id": drift.get("reference_run_id"),
                    "mtime": storage.newest_mtime(uri)})  # fmt: skip
    return sorted(out, key=lambda r: -r["mtime"])


def drift_page(store: ArtifactStore, score_id: str) -> bytes:
    """A score set's `drift.html`."""
    uri = storage.join(store.root, SCORES, checked_name(score_id), "drift.html")
    if not storage.exists(uri):
        raise NotFound(score_id)
    return storage.read_bytes(uri)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return html.escape(str(value))


def index_html(runs: list[RunRow], scores: list[dict[str, Any]], *, base: str) -> str:
    """The Segments page: the runs (links to their reports) and the score sets."""
    run_lines = "".join(
        f"<tr><td><a href=\"{base}runs/{html.escape(r.run_id)}/report\">{html.escape(r.run_id)}"
        f"</a>{' <b>(current)</b>' if r.current else ''}</td><td>{_cell(r.created_at)}</td>"
        f"<td>{_cell(r.airflow_run_id)}</td><td>{_cell(r.k)}</td><td>{_cell(r.confidence)}</td>"
        f"<td>{_cell(r.rows_used)}</td><td>{_cell(r.promoted)}</td><td>{_cell(r.reason)}</td></tr>"
        for r in runs
    )  # fmt: skip
    score_lines = "".join(
        f"<tr><td><a href=\"{base}scores/{html.escape(s['score_id'])}/drift\">"
        f"{html.escape(s['score_id'])}</a></td><td>{_cell(s['overall'])}</td>"
        f"<td>{_cell(s['n_rows'])}</td><td>{_cell(s['reference_run_id'])}</td></tr>"
        for s in scores
    )  # fmt: skip
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Segments</title>
<style>body{{font-family:system-ui,sans-serif;margin:1rem;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0 1.5rem}}td,th{{padding:.3rem .6rem;
border-bottom:1px solid #ddd;text-align:left}}</style></head><body>
<h1>Customer segmentation runs</h1>
<p><a href="{base}latest/report">Report of the current (promoted) model</a></p>
<table><tr><th>run</th><th>time</th><th>Airflow run</th><th>k</th><th>confidence</th>
<th>rows used</th><th>passed the gate</th><th>why started</th></tr>{run_lines}</table>
<h2>Scored customers</h2>
<table><tr><th>score set</th><th>drift</th><th>customers</th><th>model run</th></tr>
{score_lines or '<tr><td colspan="4">none yet</td></tr>'}</table></body></html>
"""


def rows_json(runs: list[RunRow]) -> list[dict[str, Any]]:
    """The run list as JSON."""
    return [asdict(r) for r in runs]
