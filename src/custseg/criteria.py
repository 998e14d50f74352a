"""Criteria for choosing k beside the elbow, and the default `auto` rule that combines them.

Silhouette, Calinski-Harabasz, Davies-Bouldin, the gap statistic and a BIC are computed per k
from the sweep's own fits (`CriteriaScorer` is called by `sweep_k`), so they cost no extra
K-Means fit on the data; only the gap's uniform references are fit. Costs are bounded whatever
the input size: silhouette on at most `SILHOUETTE_ROWS` rows, references of at most `GAP_ROWS`
rows; the BIC is a pass over the labelled rows.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from custseg.sanitize import logger
from custseg.scores import (
    adjusted_rand,
    beta_sf,
    bic_columns,
    bic_diagonal,
    label_scores,
    nearest_center,
    nearest_distance,
)
from custseg.select import Selection, elbow_k
from custseg.sweep import SweepResult, fit_k, fit_k_tables, run_tasks, sweep_k

log = logger(__name__)

CRITERIA_K_MAX = 16
"""Criteria are computed for k <= 16: more segments are rarely actionable, the indices get
unreliable with few rows per cluster, and the gap's SE rule needs k + 1 to confirm k <= 15."""
SILHOUETTE_ROWS = 4000
GAP_REFERENCES = 10
GAP_ROWS = 2000
GAP_N_INIT = 1
HOPKINS_ROWS = 500
HOPKINS_ALPHA = 0.01
STABILITY_RESAMPLES = 5
STABILITY_ROWS = 2000
STABILITY_N_INIT = 2
CRITERIA: tuple[str, ...] = ("silhouette", "calinski_harabasz", "davies_bouldin", "gap", "bic")
VOTERS: tuple[str, ...] = CRITERIA
"""Every criterion votes (the name stays apart from CRITERIA for what is scored)."""
LOWER_IS_BETTER = frozenset({"davies_bouldin", "bic"})


def _rng(seed: int, *salt: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *salt]))


class CriteriaScorer:
    """Per-k criteria of one K-Means fit on `X`, with fixed samples and gap references.

    Built the same way from the same `X` and `seed` in every worker, so mapped sweeps agree.
    """

    def __init__(
        self,
        X: np.ndarray,
        *,
        seed: int,
        k_max: int = CRITERIA_K_MAX,
        n_refs: int = GAP_REFERENCES,
        ref_rows: int = GAP_ROWS,
        silhouette_rows: int = SILHOUETTE_ROWS,
    ) -> None:
        X = np.asarray(X, dtype=np.float64)
        n, d = X.shape
        self.X, self.seed, self.k_max = X, seed, k_max
        rng = _rng(seed, 1)
        self.sil_idx = np.sort(rng.choice(n, size=min(n, silhouette_rows), replace=False))
        lo, hi = X.min(axis=0), X.max(axis=0)
        m = min(n, ref_rows)
        self.refs = [_rng(seed, 2, b).uniform(lo, hi, size=(m, d)) for b in range(n_refs)]
        # a column of two values (a one-hot category) is drawn from its own values: uniform
        # between them has a third of its variance, which made any category look like noise
        for j in (j for j in range(d) if len(np.unique(X[:, j])) == 2):
            for b, ref in enumerate(self.refs):
                ref[:, j] = _rng(seed, 3, b, j).choice(X[:, j], size=m)
        self.log_scale = math.log(n / m)
        self.bic_cols, self.bic_floor = bic_columns(X)

    def ref_log_w(self, k: int) -> np.ndarray:
        """log W_k of each uniform reference (scaled to the data's row count)."""
        return reference_log_w(self.refs, k, seed=self.seed, log_scale=self.log_scale)

    def __call__(self, k: int, labels: np.ndarray, sse: float) -> dict[str, float | None]:
        """Silhouette, CH, DB (k >= 2), gap with its standard error and BIC, for k <= `k_max`."""
        if k > self.k_max:
            return {}
        out: dict[str, float | None] = dict.fromkeys(CRITERIA)
        out["gap_sd"] = None
        used = len(np.unique(labels))
        if k >= 2 and 2 <= used < len(self.X):
            out.update(label_scores(self.X, labels, self.sil_idx, reuse=True))
        out["bic"] = bic_diagonal(self.X[:, self.bic_cols], labels, self.bic_floor)
        if sse > 0 and self.refs:
            out["gap"], out["gap_sd"] = gap_and_sd(self.ref_log_w(k), sse)
        return out


def reference_log_w(refs: list[np.ndarray], k: int, *, seed: int, log_scale: float) -> np.ndarray:
    """log W_k of each of the gap's reference tables (one K-Means fit each), plus `log_scale`
    (log of the data's rows over a reference's) so that they compare with the data's SSE."""
    seeds = [seed * 1000 + b for b in range(len(refs))]
    fits = fit_k_tables(refs, k, seeds=seeds, n_init=GAP_N_INIT)
    return np.array([math.log(max(f.inertia, 1e-300)) + log_scale for f in fits])


def gap_and_sd(ref_log_w: np.ndarray, sse: float) -> tuple[float, float]:
    """Tibshirani's gap at one k (mean reference log W_k minus the data's) and its s_k."""
    gap = ref_log_w.mean() - math.log(max(sse, 1e-300))
    return float(gap), float(ref_log_w.std() * math.sqrt(1 + 1 / len(ref_log_w)))


def hopkins(X: np.ndarray, *, seed: int, m: int | None = None) -> tuple[float, float]:
    """Hopkins statistic H (d-th power form) and its p-value against uniform data.

    H = sum(u^d) / (sum(u^d) + sum(w^d)), u the distances from m uniform points in the data's
    bounding box to the nearest row, w from m sampled rows to their nearest other row. Under
    uniformity H ~ Beta(m, m) (Lawson & Jurs 1990); clustered data gives H near 1.
    """
    X = np.unique(np.asarray(X, dtype=np.float64), axis=0)
    n, d = X.shape
    if n < 4:
        return 0.5, 1.0
    m = m or int(min(max(n // 10, 10), HOPKINS_ROWS, n - 1))
    rng = _rng(seed, 3)
    lo, hi = X.min(axis=0), X.max(axis=0)
    uniform = rng.uniform(lo, hi, size=(m, d))
    u = nearest_distance(uniform, X)
    rows = rng.choice(n, size=m, replace=False)
    w = nearest_distance(X[rows], X, skip=rows)
    # normalise before the power so that d up to ~50 neither under- nor overflows
    scale = float(np.concatenate([u, w]).mean()) or 1.0
    su, sw = ((u / scale) ** d).sum(), ((w / scale) ** d).sum()
    h = float(su / (su + sw)) if su + sw > 0 else 0.5
    return h, beta_sf(h, m, m)


def gap_pick(ks: list[int], gap: list[float], sd: list[float]) -> int | None:
    """Tibshirani's rule: the smallest k with Gap(k) >= Gap(k+1) - s(k+1); else the max gap."""
    if not ks:
        return None
    for i in range(len(ks) - 1):
        if ks[i + 1] == ks[i] + 1 and gap[i] >= gap[i + 1] - sd[i + 1]:
            return ks[i]
    return ks[int(np.argmax(gap))]


def criterion_picks(values: dict[str, dict[int, float]]) -> dict[str, int | None]:
    """Each criterion's own k: max silhouette, max CH, min DB, min BIC (when scored: older
    records have none), the gap's SE rule."""
    picks: dict[str, int | None] = {}
    for name in ("silhouette", "calinski_harabasz"):
        v = values.get(name, {})
        picks[name] = max(v, key=lambda k: (v[k], -k)) if v else None
    for name in ("davies_bouldin", "bic")[: 2 if "bic" in values else 1]:
        v = values.get(name, {})
        picks[name] = min(v, key=lambda k: (v[k], k)) if v else None
    g, s = values.get("gap", {}), values.get("gap_sd", {})
    ks = sorted(k for k in g if k in s)
    picks["gap"] = gap_pick(ks, [g[k] for k in ks], [s[k] for k in ks])
    return picks


def normalised(values: dict[str, dict[int, float]]) -> dict[str, dict[int, float]]:
    """Each criterion scaled to 0..1 over k, 1 = best (Davies-Bouldin and BIC inverted)."""
    out: dict[str, dict[int, float]] = {}
    for name in CRITERIA:
        v = values.get(name, {})
        if not v:
            continue
        arr = np.array(list(v.values()), dtype=float)
        lo, hi = float(arr.min()), float(arr.max())
        span = hi - lo or 1.0
        best_low = name in LOWER_IS_BETTER
        out[name] = {k: (hi - x) / span if best_low else (x - lo) / span for k, x in v.items()}
    return out


GAP_PLATEAU_CHECKS = 2
"""Larger k the gap must have been scored at to confirm a plateau (`gap_bic_plateau`)."""


def gap_bic_plateau(
    values: dict[str, dict[int, float]], picks: dict[str, int | None]
) -> int | None:
    """The k (>= 2) the gap and the BIC both pick, when the gap confirms it as a plateau: no
    larger k (at least `GAP_PLATEAU_CHECKS` of them scored) has a gap more than one standard
    error above Gap(k). Else None.

    The two model-based criteria then outrank the geometric indices' vote: silhouette, CH and
    DB keep favouring k = 2 when clusters overlap or live in 10+ dimensions (issue #16). The
    plateau is what separates those cases from real tables whose gap keeps rising past the SE
    rule's stop (wine, breast cancer: 4 or 12-15 by both gap and BIC, 4-8 SE below the gap at
    a larger k); the one-k look-ahead of the SE rule alone cannot tell them apart.
    """
    k = picks.get("gap")
    if k is None or k < 2 or picks.get("bic") != k:
        return None
    g, s = values.get("gap", {}), values.get("gap_sd", {})
    later = [g[j] for j in g if j > k]
    if k not in s or len(later) < GAP_PLATEAU_CHECKS or max(later) > g[k] + s[k]:
        return None
    return k


def combine(values: dict[str, dict[int, float]], picks: dict[str, int | None]) -> int:
    """The k most criteria pick (k >= 2); ties go to the higher mean normalised score. When
    the gap and the BIC agree on a k that the gap confirms as a plateau (`gap_bic_plateau`),
    that k instead."""
    plateau = gap_bic_plateau(values, picks)
    if plateau is not None:
        return plateau
    votes = Counter(k for name, k in picks.items() if name in VOTERS and k is not None and k >= 2)
    norm = normalised(values)

    def mean_score(k: int) -> float:
        s = [norm[c][k] for c in norm if k in norm[c]]
        return float(np.mean(s)) if s else 0.0

    if not votes:
        ks = sorted({k for v in values.values() for k in v if k >= 2})
        return max(ks, key=mean_score) if ks else 1
    top = max(votes.values())
    tied = [k for k, c in votes.items() if c == top]
    return max(tied, key=lambda k: (mean_score(k), -k))


def collect(sweep: SweepResult, X: np.ndarray, *, seed: int) -> dict[str, dict[int, float]]:
    """Per-criterion values by k from the sweep's scores; k the sweep did not score is refit."""
    ks = [k for k in sweep.ks if k <= CRITERIA_K_MAX]
    scores = dict(getattr(sweep, "scores", None) or {})
    missing = [k for k in ks if not scores.get(k)]
    if missing:
        log.info("criteria: scoring k=%s (not scored by the sweep)", missing)
        refit = sweep_k(X, missing, seed=seed, n_init=10, scorer=CriteriaScorer(X, seed=seed))
        scores.update(refit.scores)
    values: dict[str, dict[int, float]] = {name: {} for name in (*CRITERIA, "gap_sd")}
    for k in ks:
        for name, v in scores[k].items():
            if v is not None and name in values and math.isfinite(v):
                values[name][k] = float(v)
    return {name: v for name, v in values.items() if v}


@dataclass(frozen=True)
class Stability:
    """How often resamples (other rows, other seed) lead to the same k, and their mean ARI."""

    agreement: float
    ks: tuple[int, ...]
    ari: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"agreement": _round(self.agreement), "resample_ks": list(self.ks),
                "mean_ari": _round(self.ari)}  # fmt: skip


def _round(x: float, digits: int = 3) -> float | None:
    """Rounded, or None when not finite (JSON has no NaN)."""
    return round(float(x), digits) if math.isfinite(x) else None


def stability(
    X: np.ndarray,
    chosen_k: int,
    ks: Iterable[int],
    *,
    seed: int,
    resamples: int,
    workers: int | None = None,
) -> Stability:
    """Redo the choice (without the gap) on `resamples` subsamples with other seeds.

    Each k is a task of `custseg.sweep.run_tasks` (on `workers` processes, default the usable
    cores) fitting every resample at that k, deterministic on its own, so the result does
    not depend on the number of workers.
    """
    X = np.asarray(X, dtype=np.float64)
    rows = min(int(0.8 * len(X)), STABILITY_ROWS)
    ks = list(itertools.takewhile(lambda k: k < rows, (k for k in ks if k >= 2)))
    ref_labels = None
    if chosen_k >= 2:
        ref_labels = fit_k(X, chosen_k, seed=seed, n_init=STABILITY_N_INIT).labels
    parts = [X[_rng(seed, 4, r).choice(len(X), size=rows, replace=False)] for r in range(resamples)]
    resampled = Resamples(X, parts, [bic_columns(part) for part in parts], seed, chosen_k,
                          ref_labels)  # fmt: skip
    fits: dict[int, list[tuple[dict[str, float | None] | None, float | None]]] = {}
    run_tasks(_resample_fits, resampled, sorted(ks, reverse=True), done=fits.__setitem__,
              workers=workers, rows=rows, what="stability")  # fmt: skip
    found, aris = [], []
    for r in range(resamples):
        values: dict[str, dict[int, float]] = {c: {} for c in CRITERIA}
        for k in ks:
            scores, ari = fits[k][r]
            for name, v in (scores or {}).items():
                if v is not None:
                    values[name][k] = v
            if ari is not None:
                aris.append(ari)
        values = {c: v for c, v in values.items() if v}
        found.append(combine(values, criterion_picks(values)) if values else 1)
    if chosen_k == 1:
        agreement = float("nan")
    else:
        agreement = sum(k == chosen_k for k in found) / max(len(found), 1)
    return Stability(agreement, tuple(found), float(np.mean(aris)) if aris else float("nan"))


@dataclass(frozen=True)
class Resamples:
    """What every stability task shares: the data, its resamples (drawn once) with their BIC
    columns, the seed, the chosen k and the full data's labels at it."""

    X: np.ndarray
    parts: list[np.ndarray]
    bic: list[tuple[np.ndarray, np.ndarray]]
    seed: int
    chosen_k: int
    ref_labels: np.ndarray | None


def _resample_fits(
    state: Resamples, k: int
) -> list[tuple[dict[str, float | None] | None, float | None]]:
    """Per resample r, the criteria of its fit at k (None with fewer than two clusters used),
    and its ARI against the full data's labels when k is the chosen k."""
    seeds = [state.seed + 7919 * (r + 1) for r in range(len(state.parts))]
    fits = fit_k_tables(state.parts, k, seeds=seeds, n_init=STABILITY_N_INIT)
    out: list[tuple[dict[str, float | None] | None, float | None]] = []
    for part, (cols, floor), fit in zip(state.parts, state.bic, fits, strict=True):
        if len(np.unique(fit.labels)) < 2:
            out.append((None, None))
            continue
        scores: dict[str, float | None] = dict(
            label_scores(part, fit.labels, np.arange(min(len(part), SILHOUETTE_ROWS)), reuse=True)
        )
        scores["bic"] = bic_diagonal(part[:, cols], fit.labels, floor)
        ari = None
        if k == state.chosen_k and state.ref_labels is not None:
            ari = adjusted_rand(state.ref_labels, nearest_center(state.X, fit.centers))
        out.append((scores, ari))
    return out


@dataclass(frozen=True)
class Decision:
    """The k the criteria decide on, each criterion's pick, and why k = 1 when it is."""

    k: int
    picks: dict[str, int | None]
    one_reason: str | None
    gap_gain: float | None
    plateau: bool = False
    """k is the one the gap and BIC agree on, confirmed by the gap's plateau (outranking the
    other criteria's vote)."""
    axes_gain: float | None = None
    """`principal_axes_gain` at the voted k, when it was needed."""


def decide(
    values: dict[str, dict[int, float]],
    h: float,
    p: float,
    *,
    has_k1: bool,
    mixed: bool,
    axes_gain: Callable[[int], float] | None = None,
) -> Decision:
    """The auto rule on per-k criteria and the Hopkins test (H, p), pure but for `axes_gain`
    (k -> `principal_axes_gain` at k), so the benchmark replays it from cached data. k = 1 when
    Hopkins does not reject uniform data, or (not on mixed data) the gap at the voted k is not
    one SE above k = 1 against the bounding-box reference or against the principal-axes one;
    else the vote."""
    picks = criterion_picks(values)
    k = combine(values, picks)
    gap_gain = _gap_gain(values, k)
    one_reason, axes = None, None
    if has_k1:
        if p >= HOPKINS_ALPHA:
            one_reason = f"Hopkins H={h:.2f} (p={p:.2g}; uniform data gives 0.5)"
        elif gap_gain is not None and gap_gain <= 0 and not mixed:
            one_reason = (f"the gap statistic at k={k} is not above k=1 by one standard error "
                          f"(Hopkins H={h:.2f} only says the data is not uniform)")  # fmt: skip
        elif axes_gain is not None and k >= 2 and not mixed:
            axes = axes_gain(k)
            if axes <= 0:
                one_reason = (f"one blob: against uniform data over the box of its principal"
                              f" axes, the gap at k={k} is not above k=1 by one standard"
                              " error")  # fmt: skip
    plateau = one_reason is None and gap_bic_plateau(values, picks) == k
    return Decision(1 if one_reason else k, picks, one_reason, gap_gain, plateau, axes)


def principal_axes_gain(
    X: np.ndarray, sse_1: float, sse_k: float, k: int, *, seed: int, n_refs: int = GAP_REFERENCES
) -> float:
    """Gap(k) - Gap(1) - s(k) against uniform references over the box of X's principal
    components (Tibshirani, Walther & Hastie 2001's second reference; `sse_*` are X's own).

    The bounding box of the features is far larger than an elongated or tilted blob, so
    against it one blob split in two looks like structure (the gap said k = 2 on a single
    elongated 6-d Gaussian). Aligned with the data's own axes, the reference has the blob's
    shape, and only real groups beat it. Used as a second test for k = 1, not as a voter:
    as a voter it lost overlapping 3-d clusters (bench/choose_k.py).
    """
    n, d = X.shape
    m = min(n, GAP_ROWS)
    mean = X.mean(axis=0)
    _, _, axes = np.linalg.svd(X - mean, full_matrices=False)
    rotated = (X - mean) @ axes.T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    refs = [
        _rng(seed, 9, b).uniform(lo, hi, size=(m, len(lo))) @ axes + mean for b in range(n_refs)
    ]
    gap_1, _ = gap_and_sd(reference_log_w(refs, 1, seed=seed, log_scale=math.log(n / m)), sse_1)
    gap_k, sd_k = gap_and_sd(reference_log_w(refs, k, seed=seed, log_scale=math.log(n / m)), sse_k)
    return gap_k - gap_1 - sd_k


def axes_gain_of(X: np.ndarray, sweep: SweepResult, *, seed: int) -> Callable[[int], float]:
    """k -> `principal_axes_gain` of X at k, from the sweep's SSE at 1 and k (`decide`'s
    `axes_gain`)."""
    sse = dict(zip(sweep.ks, sweep.sse, strict=True))
    return lambda k: principal_axes_gain(X, sse[1], sse[k], k, seed=seed)


def choose_auto(
    sweep: SweepResult, X: np.ndarray, *, seed: int, numeric_columns: int | None = None
) -> Selection:
    """The default rule: k = 1 unless the data has clustering tendency, else the criteria's vote.

    k = 1 ("no clear segment structure") when the Hopkins test does not reject uniform data,
    or when the gap statistic's SE rule stops at k = 1. Otherwise most of silhouette,
    Calinski-Harabasz, Davies-Bouldin, gap and BIC decide (`decide`), unless the gap and BIC
    agree on a k the gap confirms as a plateau (`gap_bic_plateau`); the agreement is
    recorded, and the choice is checked on resamples with other seeds.

    With one-hot categories after the first `numeric_columns` columns, the tendency test is
    Hopkins on the numeric columns alone: discrete columns always look clustered to Hopkins,
    and a category's spread dilutes the gap until its one-SE rule answers 1 on clustered data.
    """
    X = np.asarray(X, dtype=np.float64)
    values = collect(sweep, X, seed=seed)
    mixed = numeric_columns is not None and numeric_columns < X.shape[1]
    h, p = hopkins(X[:, :numeric_columns] if mixed else X, seed=seed)
    crit_ks = sorted({k for v in values.values() for k in v})
    # the elbow is computed once, on the whole swept range, and reported the same everywhere
    elbow = elbow_k(list(sweep.ks), list(sweep.sse))
    decision = decide(values, h, p, has_k1=1 in sweep.ks, mixed=mixed,
                      axes_gain=axes_gain_of(X, sweep, seed=seed))  # fmt: skip
    k, picks, gap_gain, axes = decision.k, decision.picks, decision.gap_gain, decision.axes_gain
    voters = {c: picks[c] for c in VOTERS if picks.get(c) is not None}
    agree = sorted(c for c, kk in voters.items() if kk == k)
    disagree = {c: kk for c, kk in voters.items() if kk != k}
    stab = stability(X, k, crit_ks, seed=seed, resamples=STABILITY_RESAMPLES)
    criteria_agreement = len(agree) / max(len(voters), 1)
    confidence = _confidence(k, criteria_agreement, stab, p)
    reason = f"{_why(decision, agree, disagree, stab)} (confidence {confidence})"
    details = {
        "confidence": confidence,
        "criteria_agreement": round(criteria_agreement, 3),
        "stability": stab.to_dict(),
        "picks": {**picks, "elbow": elbow},
        "disagree": disagree,
        "hopkins": {"statistic": _round(h, 4), "p_value": _round(p, 12), "alpha": HOPKINS_ALPHA},
        "hopkins_columns": "numeric" if mixed else "all",
        "gap_gain_over_k1": None if gap_gain is None else _round(gap_gain, 6),
        "axes_gap_gain_over_k1": _round(math.nan if axes is None else axes, 6),
        "values": {c: {str(kk): _round(v, 6) for kk, v in values[c].items()} for c in values},
        "criteria_k_range": [crit_ks[0], crit_ks[-1]] if crit_ks else None,
        "knee": elbow,
        "elbow_k_range": [sweep.ks[0], sweep.ks[-1]],
    }
    return Selection("auto", k, reason, details)


def _why(decision: Decision, agree: list[str], disagree: dict[str, int], stab: Stability) -> str:
    """The decision in words: which criteria pick k, which disagree, how the resamples vote."""
    k = decision.k
    if k == 1:
        return f"no clear segment structure: {decision.one_reason or 'k_max=1'}"
    why = f"{len(agree)} of {len(agree) + len(disagree)} criteria pick k={k} ({', '.join(agree)})"
    if decision.plateau and disagree:
        why += (" (gap and BIC agree, and no larger k raises the gap by one SE: this outranks"
                " the other criteria)")  # fmt: skip
    if disagree:
        why += "; " + ", ".join(f"{c} says {kk}" for c, kk in disagree.items())
    if not math.isnan(stab.agreement):
        why += f"; {stab.agreement:.0%} of {len(stab.ks)} resamples agree"
    return why


def _gap_gain(values: dict[str, dict[int, float]], k: int) -> float | None:
    """Gap(k) - Gap(1) - s(k): positive when k clusters beat one by one standard error."""
    g, s = values.get("gap", {}), values.get("gap_sd", {})
    if 1 not in g or k not in g or k not in s:
        return None
    return g[k] - g[1] - s[k]


def _confidence(k: int, criteria_agreement: float, stab: Stability, p: float) -> str:
    if k == 1:
        return "high" if p > 0.1 else "medium"
    agreement = 0.0 if math.isnan(stab.agreement) else stab.agreement
    if criteria_agreement >= 0.75 and agreement >= 0.8:
        return "high"
    if criteria_agreement >= 0.5 and agreement >= 0.6:
        return "medium"
    return "low"
