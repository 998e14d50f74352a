"""Segment profiles with plain-language labels, plots, and the analyst's HTML report."""

from __future__ import annotations

import base64
import html
import io
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from custseg.sanitize import logger

log = logger(__name__)

_SHORT_NAMES = {"income": "income", "spending": "spending", "spend": "spending", "age": "age"}
LEVEL_Z = 0.5
"""A segment is `high` (`low`) on a feature when its mean is at least this many standard
deviations of all customers above (below) the mean of all customers; else `average`."""
MAX_LABEL_FEATURES = 3


def short_feature_name(column: str) -> str:
    """A one-word name for labels: `Annual Income (k$)` -> `income`."""
    words = re.findall(r"[a-z]+", re.sub(r"\(.*?\)", "", column.lower()))
    for word in words:
        if word in _SHORT_NAMES:
            return _SHORT_NAMES[word]
    return " ".join(words) or column


def _part(short: str, z: float, rel: float | None, *, always_size: bool = False) -> str:
    word = "high" if z >= LEVEL_Z else "low" if z <= -LEVEL_Z else "average"
    if rel is None or (word == "average" and not always_size):
        return f"{word} {short}"
    return f"{word} {short} ({rel:+.0%})"


def segment_labels(
    means: np.ndarray, population: np.ndarray, features: tuple[str, ...]
) -> list[str]:
    """Each segment described against all customers, with the size of the difference:
    `high income (+58%) · low spending (-43%)`. A feature is high or low when the segment's
    mean is `LEVEL_Z` standard deviations from the mean of all customers; the percentage is
    the difference of the means. With more than `MAX_LABEL_FEATURES` features only the most
    distinctive ones are named. Labels within a run are unique (sizes are added, then the
    segment number, until they are)."""
    mu = population.mean(axis=0)
    sd = population.std(axis=0)
    z = np.where(sd > 0, (means - mu) / np.where(sd > 0, sd, 1), 0.0)
    rel = np.where(np.abs(mu) > 1e-12, (means - mu) / np.where(np.abs(mu) > 1e-12, np.abs(mu), 1),
                   np.nan)  # fmt: skip
    shorts = [short_feature_name(f) for f in features]

    def label(i: int, always_size: bool) -> str:
        order = range(len(features))
        if len(features) > MAX_LABEL_FEATURES:
            top = np.argsort(-np.abs(z[i]), kind="stable")[:MAX_LABEL_FEATURES]
            order = sorted(int(j) for j in top)
        return " · ".join(
            _part(shorts[j], float(z[i, j]), None if np.isnan(rel[i, j]) else float(rel[i, j]),
                  always_size=always_size)
            for j in order
        )  # fmt: skip

    labels = [label(i, False) for i in range(len(means))]
    for always_size in (True, None):
        seen: dict[str, int] = {}
        for text in labels:
            seen[text] = seen.get(text, 0) + 1
        if all(n == 1 for n in seen.values()):
            break
        for i, text in enumerate(labels):
            if seen[text] > 1:
                labels[i] = label(i, True) if always_size else f"{text} (segment {i})"
    return labels


def k_decision_text(selection: dict[str, Any]) -> str:
    """The k decision in a few sentences an analyst can act on (the technical table of the
    criteria stays below it in the report)."""
    k = int(selection["chosen_k"])
    lo, hi = (selection.get("elbow_k_range") or selection.get("k_range")
              or selection.get("criteria_k_range") or ["?", "?"])  # fmt: skip
    knee = selection.get("knee")
    elbow = (f"the elbow of the SSE curve (k = {lo}..{hi}) is at {knee}" if knee is not None
             else f"the SSE curve (k = {lo}..{hi}) has no clear elbow")  # fmt: skip
    if selection.get("method") == "elbow":
        if knee is None:
            return (f"{k} segment(s): {elbow}, so k_min was used. Try select = auto, which "
                    "weighs four measures and checks the choice on resamples.")  # fmt: skip
        return f"{k} segments: {elbow}. (select = auto would also check it on resamples.)"
    if k == 1:
        return ("No clear segment structure: the customers look like one group "
                f"({selection.get('reason', '').split(': ', 1)[-1]}); {elbow}. Segments forced "
                "on such data are arbitrary. Try other features, or more customers.")  # fmt: skip
    picks = {c: v for c, v in (selection.get("picks") or {}).items() if c != "elbow"}
    voters = [c for c, v in picks.items() if v is not None]
    agree = sum(picks[c] == k for c in voters)
    stab = selection.get("stability") or {}
    resamples = stab.get("resample_ks") or []
    held = sum(r == k for r in resamples)
    text = f"{k} segments. {agree} of {len(voters)} measures agree"
    if resamples:
        text += f" and the choice held in {held} of {len(resamples)} resamples"
    text += f"; {elbow}."
    confidence = selection.get("confidence")
    others = sorted({v for c, v in picks.items() if v is not None and v != k})
    if confidence == "high":
        return text + " Confidence is high."
    if confidence == "medium":
        alt = f" compare with k = {', '.join(map(str, others))}" if others else ""
        return text + f" Confidence is medium: the segments are usable;{alt or ' check them'}."
    alt = ", ".join(map(str, others)) or "a few other values"
    return (text + " Confidence is low: treat the segments as tentative. Try other features, "
            f"a k range around {alt} (k_min, k_max), or more customers.")  # fmt: skip


CATEGORY_LIFT = 0.15
"""A segment is labelled `mostly <value>` when a value's share in it exceeds its share among
all customers by at least 15 points."""


def category_label(shares: dict[str, Any], seg: int) -> str:
    """`mostly Female (genre, 78%)` parts for a segment whose categories stand out."""
    parts = []
    for name, (cats, within, overall) in shares.items():
        lift = within[seg] - overall
        top = int(np.argmax(lift))
        if lift[top] >= CATEGORY_LIFT:
            parts.append(f"mostly {cats[top]} ({short_feature_name(name)}, "
                         f"{within[seg, top]:.0%})")  # fmt: skip
    return " · ".join(parts)


def profile_segments(
    X: np.ndarray,
    labels: np.ndarray,
    centroids: np.ndarray,
    features: tuple[str, ...],
    *,
    categories: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per segment: size, share, label, and each numeric feature's centroid (the
    model's) and mean (of the segment's customers), in original units; for each categorical
    feature (`categories`: values, shares per segment, shares overall) each value's share.
    Files for people show the means and shares only (`for_people`)."""
    n = len(labels)
    k = len(centroids)
    counts = np.bincount(labels, minlength=k)
    # per-segment sums in one pass per feature (no per-segment copies of the rows)
    sums = np.stack([np.bincount(labels, weights=X[:, j], minlength=k) for j in range(X.shape[1])])
    means = np.where(counts > 0, sums / np.maximum(counts, 1), np.asarray(centroids).T).T
    names = segment_labels(means, X, features)
    rows: list[dict[str, Any]] = []
    for seg, centroid in enumerate(centroids):
        row: dict[str, Any] = {
            "segment": seg,
            "size": int(counts[seg]),
            "share": round(float(counts[seg]) / n, 4) if n else 0.0,
            "label": names[seg],
        }
        for j, f in enumerate(features):
            row[f"centroid {f}"] = round(float(centroid[j]), 4)
        for j, f in enumerate(features):
            row[f"mean {f}"] = round(float(means[seg, j]), 4) if counts[seg] else None
        for f, (cats, within, _) in (categories or {}).items():
            for c, value in enumerate(cats):
                row[f"share {f}={value}"] = round(float(within[seg, c]), 4)
        extra = category_label(categories or {}, seg)
        if extra:
            row["label"] = f"{row['label']} · {extra}" if row["label"] else extra
        rows.append(row)
    return pd.DataFrame(rows)


MAX_NAME_LENGTH = 80


def read_segment_names(path: str) -> dict[int, str]:
    """A names file: YAML or JSON mapping segment ids to names; an `InputError` names the
    file and the entry that is wrong."""
    import yaml

    from custseg import storage
    from custseg.errors import InputError

    try:
        data = yaml.safe_load(storage.read_bytes(path).decode("utf-8-sig"))
    except (OSError, FileNotFoundError) as exc:
        raise InputError(f"{path}: names file not readable ({exc}); check the path") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{path}: not a YAML or JSON names file ({first}); write one "
                         "`<segment id>: <name>` per line") from None  # fmt: skip
    if not isinstance(data, dict) or not data:
        raise InputError(f"{path}: expected a mapping such as `0: Bargain hunters`, one per "
                         "segment id")  # fmt: skip
    out: dict[int, str] = {}
    for key, value in data.items():
        if isinstance(key, bool) or not str(key).strip().isdigit():
            raise InputError(f"{path}: key {key!r} is not a segment id (0, 1, 2, ...)")
        name = " ".join(str(value).split()) if value is not None else ""
        if not name or len(name) > MAX_NAME_LENGTH:
            raise InputError(f"{path}: the name of segment {key} must be 1..{MAX_NAME_LENGTH} "
                             f"characters, got {value!r}")  # fmt: skip
        out[int(str(key).strip())] = name
    if len(set(out.values())) != len(out):
        raise InputError(f"{path}: two segments share a name; names must be unique")
    return out


def carried_names(previous: dict[str, str], alignment: dict[str, Any] | None) -> dict[int, str]:
    """The names of a previous run kept by the segments that continue it (same id after the
    alignment); born segments get none, dissolved segments' names are dropped."""
    if not previous or not alignment or not alignment.get("aligned"):
        return {}
    kept = {m["id"] for m in alignment["matches"] if m["previous_id"] is not None}
    return {int(i): n for i, n in previous.items() if int(i) in kept}


MAX_CATEGORIES = 12
"""A text column with at most this many distinct values is profiled as categories."""


def column_profiles(
    columns: pd.DataFrame, labels: np.ndarray, k: int, features: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    """Each segment on every column: mean and median of numbers, shares of categories (such
    as Gender). `features` (the clustered columns) come first and say so; text columns with
    many distinct values (names, free text) are listed as not profiled."""
    labels = np.asarray(labels)
    out: list[dict[str, Any]] = []

    def numbers(name: str, values: np.ndarray, clustered: bool) -> None:
        for stat, fn in (("mean", np.nanmean), ("median", np.nanmedian)):
            row: dict[str, Any] = {"column": name, "statistic": stat, "clustered": clustered}
            with warnings.catch_warnings():  # a segment with no value here: None, no warning
                warnings.simplefilter("ignore", RuntimeWarning)
                row["all"] = _r(fn(values))
                for seg in range(k):
                    row[str(seg)] = _r(fn(values[labels == seg]))
            out.append(row)

    for name, values in features.items():
        numbers(name, np.asarray(values, dtype=np.float64), True)
    for name in columns.columns:
        text = columns[name]
        parsed = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        given = text.notna().to_numpy()
        if given.any() and np.isfinite(parsed[given]).mean() >= 0.9:
            numbers(str(name), parsed, False)
            continue
        distinct = text.dropna().unique()
        if len(distinct) > MAX_CATEGORIES:
            out.append({"column": str(name), "statistic": f"not profiled ({len(distinct)} "
                        "distinct values)", "clustered": False})  # fmt: skip
            continue
        out.append(_agreement(str(name), text, labels))
        for value in sorted(map(str, distinct)):
            hit = (text == value).to_numpy()
            row = {"column": str(name), "statistic": f"share {value}", "clustered": False,
                   "all": _r(hit.mean(), 4)}  # fmt: skip
            for seg in range(k):
                inside = labels == seg
                row[str(seg)] = _r(hit[inside].mean(), 4) if inside.any() else None
            out.append(row)
    return out


def _agreement(name: str, text: pd.Series, labels: np.ndarray) -> dict[str, Any]:
    """How far a category column and the segments tell the same story: the adjusted Rand
    index (1 = the same grouping, about 0 = unrelated), over the rows where it is given."""
    from custseg.scores import adjusted_rand

    given = text.notna().to_numpy()
    codes = pd.factorize(text[given].astype(str))[0]
    ari = adjusted_rand(codes, labels[given]) if given.any() else np.nan
    return {"column": name, "statistic": "agreement with the segments (ARI)",
            "clustered": False, "all": _r(ari, 3)}  # fmt: skip


def _r(value: float, digits: int = 2) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def for_people(profile: pd.DataFrame) -> pd.DataFrame:
    """The profile without the model's centroid columns (they repeat the means)."""
    return profile[[c for c in profile.columns if not str(c).startswith("centroid ")]]


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


PAIRWISE_MAX_FEATURES = 4
"""Up to this many features the segment plot is a grid of every pair; beyond, a PCA map."""


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
    """Customers coloured by segment, centroids marked (sampled when large): the two features
    themselves; every pair of up to `PAIRWISE_MAX_FEATURES` features in a grid; beyond, the
    first two principal components of the standardised features."""
    if len(X) > max_points:
        pick = np.random.default_rng(seed).choice(len(X), max_points, replace=False)
        X, labels = X[pick], labels[pick]
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(centroids) <= 10 else "tab20"]
    n_feat = X.shape[1]
    if n_feat > PAIRWISE_MAX_FEATURES:
        P, C, axes_names, title = _pca_map(X, centroids, features)
        pairs = [(0, 1)]
    else:
        P, C, axes_names = X, np.asarray(centroids), list(features)
        pairs = [(i, j) for i in range(n_feat) for j in range(i + 1, n_feat)] or [(0, 0)]
        title = f"{len(centroids)} customer segments"
    cols = min(len(pairs), 2)
    rows = -(-len(pairs) // cols)
    legend_rows = -(-(len(C) + 1) // 2)
    fig, _ = _figure((5.6 * cols + (2.8 if cols == 1 else 0), 4.2 * rows + 0.28 * legend_rows))
    fig.clf()
    handles = None
    for n, (xj, yj) in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, n + 1)
        for seg in range(len(C)):
            pts = P[labels == seg]
            ax.scatter(pts[:, xj], pts[:, yj], s=10, alpha=0.7, color=cmap(seg % cmap.N),
                       label=f"{seg}: {names[seg]}")  # fmt: skip
        ax.scatter(C[:, xj], C[:, yj], marker="X", s=140, color="black", edgecolor="white",
                   linewidth=1.2, label="centroids", zorder=5)  # fmt: skip
        ax.set_xlabel(axes_names[xj])
        ax.set_ylabel(axes_names[yj])
        ax.grid(alpha=0.3)
        handles = ax.get_legend_handles_labels()
    fig.suptitle(title)
    if handles:
        fig.legend(*handles, fontsize=8, loc="lower center", ncol=2, frameon=False)
        fig.subplots_adjust(bottom=(0.28 * legend_rows + 0.5) / (4.2 * rows + 0.28 * legend_rows),
                            hspace=0.3, wspace=0.25)  # fmt: skip
    return _figure_png(fig)


def _pca_map(
    X: np.ndarray, centroids: np.ndarray, features: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Customers and centroids on the first two principal components of the standardised
    features, axis names with their share of variance and strongest features."""
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    Z = (X - mu) / sd
    _, sv, vt = np.linalg.svd(Z - Z.mean(axis=0), full_matrices=False)
    share = sv**2 / max(float((sv**2).sum()), 1e-12)
    names = []
    for c in range(2):
        top = np.argsort(-np.abs(vt[c]))[:2]
        lead = ", ".join(f"{'+' if vt[c, j] > 0 else '-'}{short_feature_name(features[j])}"
                         for j in top)  # fmt: skip
        names.append(f"PC{c + 1} ({share[c]:.0%} of variance: {lead})")
    P = Z @ vt[:2].T
    C = ((np.asarray(centroids) - mu) / sd) @ vt[:2].T
    title = f"{len(centroids)} customer segments on a PCA map of {len(features)} features"
    return P, C, names, title


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
    shown = for_people(profile).assign(share=[f"{v:.1%}" for v in profile["share"]])
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
    decision = html.escape(k_decision_text(sel))
    reason = f" Started because: {html.escape(metrics['reason'])}." if metrics.get("reason") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Customer segments: run {html.escape(metrics["run_id"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1rem auto; max-width: 1100px; color: #222;
       padding: 0 .8rem; }}
.scroll {{ overflow-x: auto; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ padding: .3rem .7rem; border-bottom: 1px solid #ddd; text-align: left; }}
table.segments td {{ text-align: right; }}
table.segments td:nth-child(4), table.segments td:nth-child(5) {{ text-align: left; }}
figure {{ display: inline-block; margin: .5rem 0; max-width: 100%; }}
img {{ max-width: 100%; height: auto; }} p.note {{ color: #555; font-size: .9rem; }}
</style></head><body>
<h1>Customer segments</h1>
<p>{metrics["chosen_k"]} segments found in {metrics["n_rows_used"]} customers.{reason}</p>
<p class="decision">{decision}</p>
<h2>Segments</h2><div class="scroll">{table}</div>
<p class="note">Names compare each segment with all customers: high (low) means the segment's
mean is at least {LEVEL_Z} standard deviations above (below) the mean of all customers, and the
percentage is the difference of the two means. Columns: the mean of each feature in the
segment, in the data's units.</p>
{_columns_html(metrics)}
{_predictions_html(metrics)}
{lifecycle}
<h2>Plots</h2>{plots}
{warn_html}
<h2>Details</h2><div class="scroll"><table class="summary">{rows}</table></div>
</body></html>
"""


def _columns_html(metrics: dict[str, Any]) -> str:
    """Every column of the input by segment; the clustered ones marked."""
    rows = metrics.get("column_profiles") or []
    if not rows:
        return ""
    segs = [str(s["segment"]) for s in metrics.get("segments", [])]
    head = "".join(f"<th>{html.escape(s)}</th>" for s in segs)

    def cell(v: Any, stat: str) -> str:
        if v is None:
            return "<td>–</td>"
        return f"<td>{v:.0%}</td>" if stat.startswith("share ") else f"<td>{v:g}</td>"

    body = "".join(
        f"<tr><td>{html.escape(r['column'])}{' <b>(clustered)</b>' if r['clustered'] else ''}"
        f"</td><td>{html.escape(r['statistic'])}</td>{cell(r.get('all'), r['statistic'])}"
        + "".join(cell(r.get(s), r["statistic"]) for s in segs) + "</tr>"
        for r in rows
    )  # fmt: skip
    return ("<h2>Every column by segment</h2><p class=\"note\">Columns marked "
            "<b>(clustered)</b> defined the segments; the others describe them.</p>"
            f"<div class=\"scroll\"><table class=\"columns\"><tr><th>column</th><th></th>"
            f"<th>all</th>{head}</tr>{body}</table></div>")  # fmt: skip


def _predictions_html(metrics: dict[str, Any]) -> str:
    """Counts per segment of the scored test customers, and those far outside the range."""
    pred = metrics.get("predictions")
    if not pred:
        return ""
    names = {str(s["segment"]): s["label"] for s in metrics.get("segments", [])}
    rows = "".join(
        f"<tr><td>{html.escape(seg)}</td><td>{html.escape(names.get(seg, ''))}</td>"
        f"<td>{n}</td></tr>"
        for seg, n in (pred.get("segment_counts") or {}).items()
    )  # fmt: skip
    far = pred.get("far_examples") or []
    far_html = ""
    if far:
        cols = list(far[0])
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols)
                       + "</tr>" for r in far)  # fmt: skip
        more = pred["n_out_of_range"] - len(far)
        first = f" (the first {len(far)} below)" if more > 0 else ""
        far_html = (f"<p>{pred['n_out_of_range']} customer(s) lie far outside the training "
                    f"range; their segment is an extrapolation{first}:</p>"
                    f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>')  # fmt: skip
    return (f"<h2>Predictions</h2><p>{pred['n_rows']} new customers scored "
            f"(<code>{html.escape(str(pred.get('path', '')))}</code>).</p>"
            f"<table><tr><th>segment</th><th>name</th><th>customers</th></tr>{rows}</table>"
            + far_html)  # fmt: skip


def selection_png(selection: dict[str, Any]) -> bytes:
    """Every criterion of the `auto` choice against k, scaled 0..1 (1 = best), picks marked."""
    from custseg.criteria import normalised

    values = selection.get("values", {})
    picks = selection.get("picks", {})
    fig, ax = _figure((7, 4))
    styles = {"silhouette": ("#1f77b4", "o"), "calinski_harabasz": ("#2ca02c", "s"),
              "davies_bouldin": ("#9467bd", "^"), "gap": ("#ff7f0e", "D"),
              "bic": ("#8c564b", "v")}  # fmt: skip
    scaled = normalised({c: {int(k): x for k, x in v.items()} for c, v in values.items()})
    for name, (color, marker) in styles.items():
        v = scaled.get(name)
        if not v:
            continue
        ks = sorted(v)
        y = np.array([v[k] for k in ks], dtype=float)
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
            "<div class=\"scroll\"><table class=\"gate\"><tr><th>check</th><th>result</th>"
            f"<th>value</th><th>rule</th></tr>{rows}</table></div>")  # fmt: skip


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
            + f'<div class="scroll">{matrix.to_html(classes="moved", border=0)}</div>')  # fmt: skip
