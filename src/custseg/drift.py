"""Drift of new customers against a training run: what training keeps, and how it is compared.

Training keeps a small reference (`reference.json`), not the table: a 1,001-point quantile
sketch of each feature, the segment shares, and the mean distance to the assigned centroid
(each segment's distance percentiles are in `metrics.json`). Scoring compares new customers
with it:

- per feature: PSI over the training deciles, and the two-sample KS statistic against the
  sketch's distribution function (p-value for the two sample sizes);
- the segment mix: PSI and a chi-square test of the new counts against the training shares;
- the novelty share (customers beyond their segment's training p99 distance) and the ratio of
  the mean distance to the training mean distance.

Verdicts: PSI below `moderate` (0.1) is none, below `significant` (0.2) moderate, else
significant; novelty share above 5% moderate, above 20% significant; distance ratio above
1.25 moderate, above 1.5 significant. The overall verdict is the worst of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SKETCH_POINTS = 1001
EPS = 1e-4
LEVELS = ("none", "moderate", "significant")


@dataclass(frozen=True)
class Thresholds:
    """Where each signal turns moderate and significant."""

    psi_moderate: float = 0.1
    psi_significant: float = 0.2
    novelty_moderate: float = 0.05
    novelty_significant: float = 0.2
    distance_moderate: float = 1.25
    distance_significant: float = 1.5

    @classmethod
    def from_psi(
        cls, moderate: float, significant: float, *, spelled: tuple[str, str]
    ) -> Thresholds:
        """The defaults with these PSI levels, checked; `spelled` names the two as the
        caller offers them (CLI flags or DAG params) in the error."""
        from custseg.errors import InputError

        if not 0 < moderate < significant:
            raise InputError(f"{spelled[0]}={moderate} must be > 0 and below "
                             f"{spelled[1]}={significant}")  # fmt: skip
        return cls(psi_moderate=moderate, psi_significant=significant)


def training_reference(
    X: np.ndarray, features: tuple[str, ...], labels: np.ndarray, distances: np.ndarray, k: int
) -> dict[str, Any]:
    """The reference a training run keeps for drift (JSON-ready)."""
    probs = np.linspace(0, 1, SKETCH_POINTS)
    counts = np.bincount(np.asarray(labels), minlength=k)
    return {
        "n_rows": int(len(X)),
        "features": {
            f: [float(v) for v in np.quantile(X[:, j], probs)] for j, f in enumerate(features)
        },  # fmt: skip
        "shares": [float(c) / max(len(labels), 1) for c in counts],
        "mean_distance": float(np.mean(distances)) if len(distances) else 0.0,
    }


def novelty_limits(metrics: dict[str, Any]) -> dict[int, float]:
    """Each segment's novelty limit (its training p99 distance) from a run's metrics.json;
    empty for runs trained before the percentiles were recorded."""
    return {int(k): float(v["p99"]) for k, v in (metrics.get("segment_distances") or {}).items()}


def _level(value: float, moderate: float, significant: float) -> str:
    return LEVELS[2] if value >= significant else LEVELS[1] if value >= moderate else LEVELS[0]


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors (each summing to 1)."""
    e = np.clip(np.asarray(expected, dtype=float), EPS, None)
    a = np.clip(np.asarray(actual, dtype=float), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def feature_drift(sketch: list[float], values: np.ndarray, n_train: int,
                  t: Thresholds) -> dict[str, Any]:  # fmt: skip
    """PSI over the training deciles and the KS statistic against the training sketch."""
    from scipy.stats import kstwo

    q = np.asarray(sketch)
    edges = q[np.linspace(0, len(q) - 1, 11).round().astype(int)][1:-1]

    def shares(x: np.ndarray) -> np.ndarray:
        return np.bincount(np.searchsorted(edges, x, side="right"), minlength=10) / len(x)

    # the training shares come from the sketch too: tied values (integer features) make
    # the deciles unequal, and the new data must be measured on the same footing
    p = psi(shares(q), shares(values))
    grid = np.unique(np.concatenate([q, values]))
    f_train = np.searchsorted(q, grid, side="right") / len(q)
    f_new = np.searchsorted(np.sort(values), grid, side="right") / len(values)
    ks = float(np.max(np.abs(f_train - f_new)))
    n_eff = max(1, round(n_train * len(values) / (n_train + len(values))))
    return {"psi": round(p, 6), "ks_stat": round(ks, 6),
            "ks_p": float(kstwo.sf(ks, n_eff)),
            "verdict": _level(p, t.psi_moderate, t.psi_significant)}  # fmt: skip


def segment_drift(shares: list[float], segments: np.ndarray, t: Thresholds) -> dict[str, Any]:
    """The segment mix of new customers against the training shares."""
    from scipy.stats import chisquare

    k = len(shares)
    counts = np.bincount(segments, minlength=k)[:k]
    new = counts / max(counts.sum(), 1)
    p = psi(np.asarray(shares), new)
    expected = np.clip(np.asarray(shares), EPS, None)
    expected = expected / expected.sum() * counts.sum()
    chi = chisquare(counts, expected)
    return {
        "training": [round(s, 6) for s in shares],
        "scoring": [round(float(s), 6) for s in new],
        "psi": round(p, 6),
        "chi2": round(float(chi.statistic), 6),
        "chi2_p": float(chi.pvalue),
        "verdict": _level(p, t.psi_moderate, t.psi_significant),
    }


def drift_report(
    reference: dict[str, Any],
    X: np.ndarray,
    features: tuple[str, ...],
    segments: np.ndarray,
    distances: np.ndarray,
    novel: np.ndarray,
    *,
    reference_run_id: str,
    thresholds: Thresholds | None = None,
) -> dict[str, Any]:
    """`drift.json`: per-feature, segment-mix, novelty and distance signals with verdicts.

    The contract other tools read: `overall` (none, moderate or significant), `features`
    (name -> psi, ks_stat, ks_p, verdict), `segments`, `novelty_share`, `reference_run_id`.
    """
    t = thresholds or Thresholds()
    n_train = int(reference["n_rows"])
    feats = {f: feature_drift(reference["features"][f], X[:, j], n_train, t)
             for j, f in enumerate(features)}  # fmt: skip
    mix = segment_drift(reference["shares"], segments, t)
    share = float(np.mean(novel)) if len(novel) else 0.0
    ratio = float(np.mean(distances)) / max(reference["mean_distance"], 1e-12)
    verdicts = {
        "features": max((v["verdict"] for v in feats.values()), key=LEVELS.index),
        "segments": mix["verdict"],
        "novelty": _level(share, t.novelty_moderate, t.novelty_significant),
        "distance": _level(ratio, t.distance_moderate, t.distance_significant),
    }
    return {
        "overall": max(verdicts.values(), key=LEVELS.index),
        "verdicts": verdicts,
        "features": feats,
        "segments": mix,
        "novelty_share": round(share, 6),
        "distance_ratio": round(ratio, 6),
        "n_rows": int(len(X)),
        "reference_run_id": reference_run_id,
        "thresholds": vars(t),
    }
