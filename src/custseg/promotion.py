"""The promotion gate, and who moved between the promoted model and a retrained one.

A training run replaces `latest.json` only when every check of `gate_checks` passes (or the
run asks for `force_promote`); a run that fails still completes and keeps its artifacts.
`who_moved` counts, for customers present in both training sets, old segment -> new segment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from custseg.sanitize import logger

log = logger(__name__)


@dataclass(frozen=True)
class Check:
    """One gate check: its name, whether it passed, what was measured and the rule."""

    name: str
    passed: bool
    value: Any
    rule: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "passed": self.passed, "value": self.value, "rule": self.rule}


def gate_checks(
    selection: dict[str, Any],
    shares: list[float],
    alignment: dict[str, Any] | None,
    *,
    min_share: float,
    min_stability: float,
) -> list[Check]:
    """The gate's checks on a finished run: structure, confidence, stability, smallest
    segment, and (when a model was promoted before) that every old segment continues."""
    k = int(selection["chosen_k"])
    checks = [Check("structure", k >= 2, k, "at least 2 segments (k=1 means no structure)")]
    confidence = selection.get("confidence")
    checks.append(Check("confidence", confidence != "low", confidence,
                        "confidence is not low (not measured by --select elbow)"))  # fmt: skip
    stability = (selection.get("stability") or {}).get("agreement")
    checks.append(Check(
        "stability", stability is None or stability >= min_stability, stability,
        f"at least {min_stability:.0%} of the resamples choose the same k "
        "(not measured by --select elbow)",
    ))  # fmt: skip
    smallest = round(min(shares), 4) if shares else 0.0
    rule = f"every segment holds at least {min_share:.0%} of the customers"
    checks.append(Check("smallest_segment", smallest >= min_share, smallest, rule))
    if alignment is not None:
        checks.append(_continuity(alignment))
    return checks


def _continuity(alignment: dict[str, Any]) -> Check:
    rule = ("every segment of the promoted model maps to a new one within the alignment's "
            "distance (half the gap between its two closest centroids)")  # fmt: skip
    if not alignment.get("aligned"):
        return Check("continuity", False, alignment.get("why"), rule)
    previous_k = int(alignment["previous_k"])
    kept = int(alignment["kept_ids"])
    return Check("continuity", kept == previous_k, f"{kept} of {previous_k} kept", rule)


def promotion_decision(checks: list[Check], *, force: bool) -> dict[str, Any]:
    """`{promoted, forced, checks, reason}` for `metrics.json`."""
    failed = [c for c in checks if not c.passed]
    if not failed:
        reason = "every check of the promotion gate passed"
    else:
        reason = "; ".join(f"{c.name} failed ({c.value}; rule: {c.rule})" for c in failed)
        reason = ("forced despite the gate: " if force else "not promoted: ") + reason
    return {"promoted": not failed or force, "forced": bool(failed) and force,
            "checks": [c.to_dict() for c in checks], "reason": reason}  # fmt: skip


def who_moved(
    previous: pd.DataFrame, current: pd.DataFrame, id_column: str | None,
    alignment: dict[str, Any] | None,
) -> dict[str, Any]:  # fmt: skip
    """For customers in both training sets (matched by `id_column`), how many went from
    each old segment to each new one; segments born (no old one continues into them) and
    dissolved (they continue into no new one)."""
    out: dict[str, Any] = {"born": [], "dissolved": []}
    if alignment and alignment.get("aligned"):
        previous_k = int(alignment["previous_k"])
        continued = {m["previous_id"] for m in alignment["matches"] if m["previous_id"] is not None}
        out["born"] = [m["id"] for m in alignment["matches"] if m["previous_id"] is None]
        out["dissolved"] = [i for i in range(previous_k) if i not in continued]
    if not id_column or id_column not in previous or id_column not in current:
        return {**out, "customers_in_both": None, "moved": None, "table": [],
                "why": "no customer id column in both training sets"}  # fmt: skip
    before, after = _segments_of_both(previous, current, id_column)
    width = int(max(before.max(initial=0), after.max(initial=0))) + 1
    counts = np.bincount(before * width + after, minlength=width * width)
    table = [{"from": int(i // width), "to": int(i % width), "customers": int(counts[i])}
             for i in np.flatnonzero(counts)]  # fmt: skip
    moved = int((before != after).sum())
    return {**out, "customers_in_both": len(before), "moved": moved, "table": table}


def _segments_of_both(
    previous: pd.DataFrame, current: pd.DataFrame, id_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """The old and the new segment of each customer in both tables (matched by id). A retrain
    on the same customers in the same order is compared row by row: at 10M rows a join
    takes seconds and 1.5 GB."""
    old_seg = previous["segment"].to_numpy(np.int64)
    new_seg = current["segment"].to_numpy(np.int64)
    if previous[id_column].equals(current[id_column]):
        return old_seg, new_seg
    old = pd.DataFrame({id_column: previous[id_column], "segment_old": old_seg})
    new = pd.DataFrame({id_column: current[id_column], "segment_new": new_seg})
    both = old.merge(new, on=id_column)
    return both["segment_old"].to_numpy(np.int64), both["segment_new"].to_numpy(np.int64)


def moved_matrix(moves: dict[str, Any]) -> pd.DataFrame:
    """`who_moved`'s table as old segment (rows) x new segment (columns) counts."""
    if not moves.get("table"):
        return pd.DataFrame()
    frame = pd.DataFrame(moves["table"])
    return frame.pivot_table(index="from", columns="to", values="customers", aggfunc="sum",
                             fill_value=0)  # fmt: skip
