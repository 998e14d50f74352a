"""Score new customers with a trained run: predictions and drift against the run's reference.

`score_customers_with_drift` computes (library function); `write_score_set` writes a score set
(`predictions.csv`, `drift.json`, `drift.html`) into a new folder, atomically: it is built
beside the target and renamed into place, so no half-written score set is ever visible.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from custseg import storage
from custseg.drift import Thresholds, drift_report, novelty_limits
from custseg.rundir import RunDir
from custseg.sanitize import csv_bytes_arrow, logger

log = logger(__name__)

FAULT_IN_SCORE_SET = "CUSTSEG_FAULT_IN_SCORE_SET"
"""Fault injection for tests: the process SIGKILLs itself with the score set half-written."""


@dataclass(frozen=True)
class ScoreSet:
    """Predictions for new customers and their drift report."""

    predictions: pd.DataFrame
    drift: dict[str, Any]


def score_customers_with_drift(
    run: RunDir, input_path: str, *, thresholds: Thresholds | None = None
) -> ScoreSet:
    """Segment, name, distance, margin and novelty of every customer of `input_path`, and
    the drift of those customers against the run's training reference."""
    from custseg.io import load_customers
    from custseg.model import assigned_frame, model_info

    model = run.load_model(verify=True)
    metrics, reference = run.metrics(), run.reference()
    info = model_info(model)
    table = load_customers(input_path, features=info.features, categories=info.categories,
                           needed_by=f"the model in {run.uri}")  # fmt: skip
    names = {int(s["segment"]): s.get("name") or s["label"] for s in metrics["segments"]}
    assigned = assigned_frame(model, table, names)
    out, X, ok = assigned.frame, assigned.X, assigned.ok
    nearest, dist = assigned.nearest, assigned.distance
    p99 = novelty_limits(metrics)
    limits = np.array([p99.get(s, np.inf) for s in range(info.k)])
    novel = dist > limits[nearest]
    out["novel"] = False
    out.loc[ok, "novel"] = novel
    drift = drift_report(reference, X[ok], info.features, nearest, dist, novel,
                         reference_run_id=run.run_id, thresholds=thresholds)  # fmt: skip
    drift["input"] = str(input_path)
    drift["n_rows_unscored"] = int((~ok).sum())
    log.info("scored %d customers with run %s: drift %s (novelty share %.1f%%)", int(ok.sum()),
             run.run_id, drift["overall"], 100 * drift["novelty_share"])  # fmt: skip
    return ScoreSet(out, drift)


def drift_html(drift: dict[str, Any]) -> str:
    """A one-page summary of `drift.json` for a person."""
    rows = "".join(
        f"<tr><td>{html.escape(f)}</td><td>{v['psi']:.3f}</td><td>{v['ks_stat']:.3f}</td>"
        f"<td>{v['ks_p']:.3g}</td><td>{v['verdict']}</td></tr>"
        for f, v in drift["features"].items()
    )
    seg = drift["segments"]
    mix = "".join(
        f"<tr><td>{i}</td><td>{a:.1%}</td><td>{b:.1%}</td></tr>"
        for i, (a, b) in enumerate(zip(seg["training"], seg["scoring"], strict=True))
    )
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Drift against run {html.escape(drift["reference_run_id"])}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem auto;max-width:900px}}
td,th{{padding:.25rem .6rem;border-bottom:1px solid #ddd}}</style></head><body>
<h1>Drift: {html.escape(drift["overall"])}</h1>
<p>{drift["n_rows"]} customers scored against run {html.escape(drift["reference_run_id"])};
novelty share {drift["novelty_share"]:.1%}; mean distance {drift["distance_ratio"]:.2f}x
training. Verdicts: {html.escape(json.dumps(drift["verdicts"]))}.</p>
<h2>Features</h2><table><tr><th>feature</th><th>PSI</th><th>KS</th><th>KS p</th>
<th>verdict</th></tr>{rows}</table>
<h2>Segment mix (PSI {seg["psi"]:.3f}, chi-square p {seg["chi2_p"]:.3g}:
{html.escape(seg["verdict"])})</h2>
<table><tr><th>segment</th><th>training</th><th>scoring</th></tr>{mix}</table></body></html>
"""


def retraining_table(run: RunDir, new_input: str) -> tuple[pd.DataFrame, str]:
    """The run's training data plus the customers of `new_input`, deduplicated by customer
    id (a customer in both keeps the new row), as a table of id and features; and the rule
    applied, in words. Without an id column in both, every row of both is kept."""
    from custseg.io import decoded_frame, load_customers
    from custseg.model import model_info

    info = model_info(run.load_model(verify=True))
    features, cats = info.features, tuple(info.categories)
    training = run.metrics()["input"]
    old = load_customers(training, features=features, categorical=cats,
                         needed_by=f"the model in {run.uri}")  # fmt: skip
    new = load_customers(new_input, features=features, categorical=cats,
                         needed_by=f"the model in {run.uri}")  # fmt: skip
    old_frame = decoded_frame(old).rename(columns=dict(zip(old.features, features, strict=True)))
    new_frame = decoded_frame(new).rename(columns=dict(zip(new.features, features, strict=True)))
    if old.id_column and new.id_column:
        new_frame = new_frame.rename(columns={new.id_column: old.id_column})
        both = pd.concat([old_frame, new_frame], ignore_index=True)
        merged = both.drop_duplicates(subset=[old.id_column], keep="last")
        rule = (f"{len(old_frame)} training rows of {training} and {len(new_frame)} new rows of "
                f"{new_input}, deduplicated by {old.id_column} (the new row wins): "
                f"{len(merged)} customers")  # fmt: skip
    else:
        merged = pd.concat([old_frame, new_frame], ignore_index=True)
        rule = (
            f"{len(old_frame)} training rows of {training} and {len(new_frame)} new rows of "
            f"{new_input}, all kept (no customer id column in both): {len(merged)} rows"
        )
    return merged, rule


def drift_summary(drift: dict[str, Any]) -> str:
    """One line on what drifted, for logs and for the reason of a retraining run."""
    parts = [f"{name} PSI {f['psi']:.2f}" for name, f in drift["features"].items()
             if f["verdict"] != "none"]  # fmt: skip
    if drift["segments"]["verdict"] != "none":
        parts.append(f"segment mix PSI {drift['segments']['psi']:.2f}")
    if drift["verdicts"].get("novelty", "none") != "none":
        parts.append(f"novelty share {drift['novelty_share']:.0%}")
    if drift["verdicts"].get("distance", "none") != "none":
        parts.append(f"mean distance {drift['distance_ratio']:.2f}x training")
    return f"drift {drift['overall']}" + (f": {'; '.join(parts)}" if parts else "")


def write_score_set(
    score: ScoreSet, folder: str | os.PathLike[str], *, extra: dict[str, bytes] | None = None
) -> Path:
    """Write `predictions.csv`, `drift.json`, `drift.html` (and the `extra` files) into the
    new folder `folder`, atomically (built beside it, then renamed); refuses an existing
    folder."""
    from custseg.errors import InputError
    from custseg.rundir import json_bytes

    target = Path(folder).absolute()
    if target.exists():
        raise InputError(f"{target}: exists already; score into a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        (tmp / "predictions.csv").write_bytes(csv_bytes_arrow(score.predictions))
        if os.environ.get(FAULT_IN_SCORE_SET):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        (tmp / "drift.json").write_bytes(json_bytes(score.drift))
        (tmp / "drift.html").write_text(drift_html(score.drift))
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        os.chmod(tmp, 0o777 & ~storage.umask())
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
