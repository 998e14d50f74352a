"""Segment profiles with plain-language labels, plots, and the analyst's HTML report."""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any

import numpy as np
import pandas as pd

from custseg.sanitize import logger

log = logger(__name__)

_SHORT_NAMES = {"income": "income", "spending": "spending", "spend": "spending", "age": "age"}
_LEVELS = ("low", "mid", "high")


def short_feature_name(column: str) -> str:
    """A one-word name for labels: `Annual Income (k$)` -> `income`."""
    words = re.findall(r"[a-z]+", re.sub(r"\(.*?\)", "", column.lower()))
    for word in words:
        if word in _SHORT_NAMES:
            return _SHORT_NAMES[word]
    return " ".join(words) or column


def level_of(value: float, low: float, high: float) -> str:
    """`low`, `mid` or `high` against the feature's tertile cut points."""
    if value < low:
        return "low"
    if value > high:
        return "high"
    return "mid"


def segment_label(centroid: np.ndarray, cuts: np.ndarray, features: tuple[str, ...]) -> str:
    """`high income · low spending`: each feature's level at the centroid."""
    return " · ".join(
        f"{level_of(float(c), float(lo), float(hi))} {short_feature_name(f)}"
        for c, (lo, hi), f in zip(centroid, cuts, features, strict=True)
    )


def profile_segments(
    X: np.ndarray, labels: np.ndarray, centroids: np.ndarray, features: tuple[str, ...]
) -> pd.DataFrame:
    """One row per segment: size, share, centroid and mean of each feature, and a label.

    Levels are relative to the data's own tertiles, so `high income` means the top third.
    """
    cuts = np.quantile(X, [1 / 3, 2 / 3], axis=0).T
    n = len(labels)
    k = len(centroids)
    counts = np.bincount(labels, minlength=k)
    # per-segment sums in one pass per feature (no per-segment copies of the rows)
    sums = np.stack([np.bincount(labels, weights=X[:, j], minlength=k) for j in range(X.shape[1])])
    rows: list[dict[str, Any]] = []
    for seg, centroid in enumerate(centroids):
        row: dict[str, Any] = {
            "segment": seg,
            "size": int(counts[seg]),
            "share": round(float(counts[seg]) / n, 4) if n else 0.0,
            "label": segment_label(centroid, cuts, features),
        }
        for j, f in enumerate(features):
            row[f"centroid {f}"] = round(float(centroid[j]), 4)
        for j, f in enumerate(features):
            mean = sums[j, seg] / counts[seg] if counts[seg] else None
            row[f"mean {f}"] = None if mean is None else round(float(mean), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def _figure(figsize: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes without pyplot's global state, so plots can be drawn on any
    thread (the CLI draws some while K-Means runs)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _figure_png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def elbow_png(ks: list[int], sse: list[float], *, chosen_k: int, knee: int | None) -> bytes:
    """SSE against k, the chosen k marked (and the elbow, when it differs)."""
    fig, ax = _figure((7, 4))
    ax.plot(ks, sse, marker="o", markersize=3, color="#1f77b4", label="SSE (inertia)")
    sse_at = dict(zip(ks, sse, strict=True))
    ax.axvline(chosen_k, color="#d62728", linestyle="--", label=f"chosen k = {chosen_k}")
    ax.scatter([chosen_k], [sse_at[chosen_k]], color="#d62728", zorder=5, s=50)
    if knee is not None and knee != chosen_k:
        ax.axvline(knee, color="#7f7f7f", linestyle=":", label=f"elbow (kneed) = {knee}")
    ax.set_xlabel("number of segments k")
    ax.set_ylabel("SSE (within-cluster sum of squares)")
    ax.set_title("Elbow: SSE against k")
    ax.grid(alpha=0.3)
    ax.legend()
    return _figure_png(fig)


def segments_png(
    X: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    features: tuple[str, ...],
    names: list[str],
    *,
    max_points: int = 20000,
    seed: int = 0,
) -> bytes:
    """The first two features, coloured by segment, centroids marked (sampled when large)."""
    if len(X) > max_points:
        pick = np.random.default_rng(seed).choice(len(X), max_points, replace=False)
        X, labels = X[pick], labels[pick]
    fig, ax = _figure((8.5, 5.5))
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(centroids) <= 10 else "tab20"]
    xj, yj = (0, 1) if X.shape[1] > 1 else (0, 0)
    for seg in range(len(centroids)):
        pts = X[labels == seg]
        ax.scatter(pts[:, xj], pts[:, yj], s=12, alpha=0.7, color=cmap(seg % cmap.N),
                   label=f"{seg}: {names[seg]}")  # fmt: skip
    ax.scatter(centroids[:, xj], centroids[:, yj], marker="X", s=160, color="black",
               edgecolor="white", linewidth=1.2, label="centroids", zorder=5)  # fmt: skip
    ax.set_xlabel(features[xj])
    ax.set_ylabel(features[yj])
    ax.set_title(f"{len(centroids)} customer segments")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _figure_png(fig)


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def report_html(metrics: dict[str, Any], profile: pd.DataFrame, images: dict[str, bytes]) -> str:
    """One self-contained HTML page: summary, plots and the segment table."""
    sel = metrics.get("selection", {})
    dropped = metrics.get("n_rows_dropped", {})
    dropped_text = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in dropped.items()) or "none"
    summary = [
        ("Input", metrics.get("input", "")),
        ("Rows read / used", f"{metrics['n_rows_read']} / {metrics['n_rows_used']}"),
        ("Rows dropped", dropped_text),
        ("Features", ", ".join(metrics["features"])),
        ("Scaler", metrics["scaler"]),
        ("Segments (k)", str(metrics["chosen_k"])),
        ("How k was chosen", f"{sel.get('method', '')}: {sel.get('reason', '')}"),
        ("k range swept", f"{metrics['k_range'][0]}..{metrics['k_range'][1]}"),
        ("Run", f"{metrics['run_id']} ({metrics['created_at']})"),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary
    )
    shown = profile.assign(share=[f"{v:.1%}" for v in profile["share"]])
    table = shown.to_html(index=False, classes="segments", border=0, float_format="{:.2f}".format)
    warnings = metrics.get("warnings") or []
    warn_html = (
        "<h2>Warnings</h2><ul>" + "".join(f"<li>{html.escape(w)}</li>" for w in warnings) + "</ul>"
        if warnings
        else ""
    )
    lifecycle = _promotion_html(metrics) + _who_moved_html(metrics)
    plots = "".join(
        f"<figure>{_img(png, name)}<figcaption>{html.escape(name)}</figcaption></figure>"
        for name, png in images.items()
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Customer segments: run {html.escape(metrics["run_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ padding: .3rem .7rem; border-bottom: 1px solid #ddd; text-align: left; }}
table.segments td {{ text-align: right; }}
figure {{ display: inline-block; margin: .5rem; }} img {{ max-width: 520px; }}
</style></head><body>
<h1>Customer segments</h1>
<p>{metrics["chosen_k"]} segments found in {metrics["n_rows_used"]} customers.</p>
<table class="summary">{rows}</table>
{warn_html}
{lifecycle}
<h2>Plots</h2>{plots}
<h2>Segments</h2>{table}
</body></html>
"""


def selection_png(selection: dict[str, Any]) -> bytes:
    """Every criterion of the `auto` choice against k, scaled 0..1 (1 = best), picks marked."""
    values = selection.get("values", {})
    picks = selection.get("picks", {})
    fig, ax = _figure((7, 4))
    styles = {"silhouette": ("#1f77b4", "o"), "calinski_harabasz": ("#2ca02c", "s"),
              "davies_bouldin": ("#9467bd", "^"), "gap": ("#ff7f0e", "D")}  # fmt: skip
    for name, (color, marker) in styles.items():
        v = {int(k): x for k, x in values.get(name, {}).items()}
        if not v:
            continue
        ks = sorted(v)
        y = np.array([v[k] for k in ks], dtype=float)
        span = float(y.max() - y.min()) or 1.0
        y = (y.max() - y) / span if name == "davies_bouldin" else (y - y.min()) / span
        pick = picks.get(name)
        ax.plot(ks, y, marker=marker, markersize=3, color=color, label=f"{name} (picks {pick})")
        if pick in v:
            ax.scatter([pick], [y[ks.index(pick)]], s=110, facecolors="none", edgecolors=color,
                       linewidths=2, zorder=5)  # fmt: skip
    chosen = selection.get("chosen_k")
    ax.axvline(chosen, color="#d62728", linestyle="--", label=f"chosen k = {chosen}")
    ax.set_xlabel("number of segments k")
    ax.set_ylabel("criterion, scaled 0..1 (1 = best)")
    conf = selection.get("confidence")
    ax.set_title("Choosing k: every criterion" + (f" (confidence {conf})" if conf else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_png(fig)


def _promotion_html(metrics: dict[str, Any]) -> str:
    """The promotion gate's checks and decision."""
    promotion = metrics.get("promotion")
    if not promotion:
        return ""
    head = "Promoted" if promotion["promoted"] else "Not promoted: the previous model stays"
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td>{'pass' if c['passed'] else 'FAIL'}</td>"
        f"<td>{html.escape(str(c['value']))}</td><td>{html.escape(c['rule'])}</td></tr>"
        for c in promotion["checks"]
    )
    return (f"<h2>{head}</h2><p>{html.escape(promotion['reason'])}</p>"
            "<table class=\"gate\"><tr><th>check</th><th>result</th><th>value</th><th>rule</th>"
            f"</tr>{rows}</table>")  # fmt: skip


def _who_moved_html(metrics: dict[str, Any]) -> str:
    """Old segment -> new segment counts since the reference run."""
    from custseg.promotion import moved_matrix

    moves = metrics.get("who_moved")
    if not moves:
        return ""
    ref = html.escape(str(metrics.get("reference_run_id")))
    if moves.get("customers_in_both") is None:
        return f"<h2>Who moved since {ref}</h2><p>{html.escape(str(moves.get('why')))}</p>"
    matrix = moved_matrix(moves)
    matrix.index.name, matrix.columns.name = "old segment", "new segment"
    notes = "".join(f"<li>segments {w}: {moves[w]}</li>" for w in ("born", "dissolved")
                    if moves[w])  # fmt: skip
    return (f"<h2>Who moved since {ref}</h2><p>{moves['moved']} of "
            f"{moves['customers_in_both']} customers present in both training sets changed "
            f"segment (rows: old segment, columns: new).</p><ul>{notes}</ul>"
            + matrix.to_html(classes="moved", border=0))  # fmt: skip
