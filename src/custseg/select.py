"""Choosing k from the sweep: the mission's elbow (kneed) and the recorded decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from custseg.sanitize import logger
from custseg.sweep import SweepResult

log = logger(__name__)


@dataclass(frozen=True)
class Selection:
    """The chosen k, the method that chose it, why, and the evidence."""

    method: str
    chosen_k: int
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as stored under `selection` in `metrics.json`)."""
        return {
            "method": self.method,
            "chosen_k": self.chosen_k,
            "reason": self.reason,
            **self.details,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        """Read back what `to_dict` wrote."""
        details = dict(data)
        return cls(details.pop("method"), int(details.pop("chosen_k")), details.pop("reason"),
                   details)  # fmt: skip


def elbow_k(ks: list[int], sse: list[float]) -> int | None:
    """The knee of the SSE curve by `kneed.KneeLocator` (convex, decreasing), or None."""
    if len(ks) < 3:
        return None
    from kneed import KneeLocator

    knee = KneeLocator(ks, sse, curve="convex", direction="decreasing").knee
    return None if knee is None else int(knee)


def choose_elbow(sweep: SweepResult) -> Selection:
    """The mission's rule: the knee of the SSE curve; if there is none, say so and use k_min."""
    ks, sse = list(sweep.ks), list(sweep.sse)
    knee = elbow_k(ks, sse)
    details = {"knee": knee, "k_range": [ks[0], ks[-1]], "elbow_k_range": [ks[0], ks[-1]]}
    if knee is not None:
        return Selection("elbow", knee, f"KneeLocator found the elbow of the SSE curve at k={knee}",
                         details)  # fmt: skip
    if len(ks) < 3:
        why = f"only {len(ks)} k value(s) swept, too few for an elbow"
    else:
        why = "KneeLocator found no elbow in the SSE curve (it returned None)"
    log.warning("%s; falling back to k_min=%d", why, ks[0])
    return Selection("elbow", ks[0], f"{why}; using k_min={ks[0]}", details)


def choose_k(
    sweep: SweepResult,
    *,
    method: str,
    X: np.ndarray | None = None,
    seed: int = 0,
    numeric_columns: int | None = None,
) -> Selection:
    """Pick k from the sweep with `method` (`elbow` or `auto`); `X`'s columns after the first
    `numeric_columns` are one-hot categories (see `choose_auto`)."""
    if method == "elbow":
        return choose_elbow(sweep)
    from custseg.criteria import choose_auto  # the other name: options.SELECTIONS

    if X is None:
        raise ValueError("method 'auto' needs the scaled data X")
    return choose_auto(sweep, X, seed=seed, numeric_columns=numeric_columns)
