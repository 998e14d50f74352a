"""Clean the loaded table (drop and count bad rows) and build the feature scaler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from custseg.errors import InputError
from custseg.io import CustomerTable, category_values
from custseg.sanitize import logger

log = logger(__name__)

DROP_REASONS: tuple[str, ...] = (
    "missing", "non_numeric", "non_finite", "duplicate", "conflicting_id",
)  # fmt: skip


@dataclass(frozen=True)
class PreparedData:
    """Rows fit for clustering: unscaled features, customer ids and what was dropped.

    `ids` is the id column (Arrow-backed strings), or 1-based row numbers without one.
    """

    X: np.ndarray
    ids: Any
    features: tuple[str, ...]
    id_column: str | None
    n_rows_read: int
    dropped: dict[str, int]
    n_distinct: int
    warnings: tuple[str, ...] = field(default=())
    sha256: str = ""
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def numeric(self) -> tuple[str, ...]:
        """The features that are numbers (not categories)."""
        return tuple(f for f in self.features if f not in self.categories)

    @property
    def numeric_index(self) -> list[int]:
        """The columns of `X` that hold `numeric`."""
        return [j for j, f in enumerate(self.features) if f not in self.categories]

    @property
    def n_rows_used(self) -> int:
        """Rows that go into the model."""
        return int(self.X.shape[0])

    def summary(self) -> dict[str, Any]:
        """What later steps and `metrics.json` need of the rows, as JSON (no rows)."""
        return {
            "features": list(self.features),
            "id_column": self.id_column,
            "n_rows_read": self.n_rows_read,
            "n_rows_used": self.n_rows_used,
            "n_rows_dropped": dict(self.dropped),
            "n_distinct": self.n_distinct,
            "feature_min": [float(v) for v in self.X.min(axis=0)],
            "feature_max": [float(v) for v in self.X.max(axis=0)],
            "data_sha256": self.sha256,
            "warnings": list(self.warnings),
            "categories": {c: list(v) for c, v in self.categories.items()},
        }

    @classmethod
    def from_columns(cls, columns: list[Any], *, ids: Any, summary: dict[str, Any]) -> PreparedData:
        """Rebuild from feature columns, ids and `summary()` (features column-major)."""
        X = np.empty((len(columns[0]) if columns else 0, len(columns)), dtype=np.float64, order="F")
        for j, col in enumerate(columns):
            X[:, j] = col
        return cls(
            X=X,
            ids=ids,
            features=tuple(summary["features"]),
            id_column=summary["id_column"],
            n_rows_read=int(summary["n_rows_read"]),
            dropped=dict(summary["n_rows_dropped"]),
            n_distinct=int(summary["n_distinct"]),
            warnings=tuple(summary["warnings"]),
            sha256=summary["data_sha256"],
            categories={c: tuple(v) for c, v in summary.get("categories", {}).items()},
        )

    def to_frame(self) -> pd.DataFrame:
        """The cleaned rows as a DataFrame (id first), as written to `features.parquet`."""
        frame = pd.DataFrame(self.X, columns=list(self.features))
        if self.id_column:
            ids = self.ids.array if isinstance(self.ids, pd.Series) else self.ids
            frame.insert(0, self.id_column, ids)
        return frame


_MISSING, _NON_NUMERIC, _NON_FINITE = 1, 2, 3
_REASON_CODES = {"missing": _MISSING, "non_numeric": _NON_NUMERIC, "non_finite": _NON_FINITE}


def count_distinct_rows(X: np.ndarray, *, cap: int | None = None) -> int:
    """Distinct rows of `X` (exact, see `_row_codes`), counted on growing prefixes.

    With `cap`, stops as soon as a prefix has `cap` distinct rows and returns that lower
    bound: the count only clamps k_max, so "at least k_max" is all that is needed, and data
    with many distinct rows answers after the first 16k rows instead of reading every row.
    """
    end = 1 << 14
    while True:
        found = _row_codes(X[:end])[1]
        if end >= len(X) or (cap is not None and found >= cap):
            return found
        end *= 4


@dataclass(frozen=True)
class DistinctRows:
    """The distinct rows of a table, how often each occurs, and which one each row is.

    `rows[index]` is the table again; K-Means on `rows` weighted by `counts` is K-Means on
    the table (same centers and SSE), at the cost of the distinct rows only.
    """

    rows: np.ndarray
    counts: np.ndarray
    index: np.ndarray


DISTINCT_PROBE_ROWS = 200_000
DISTINCT_MAX_SHARE = 0.2
"""Rows are deduplicated for the final fit only when at most 20% of them are distinct, as in
integer-valued features (income in k$, a 1-100 score); a 200k-row prefix is tried first."""


def _row_codes(X: np.ndarray) -> tuple[np.ndarray, int]:
    """A code per row, equal exactly for equal rows (-0.0 as 0.0), and how many codes.

    Each column is factorized, and the codes combined column by column (`code * m + c`,
    factorized again): exact, no hash collisions, linear time.
    """
    codes = np.zeros(len(X), dtype=np.int64)
    m = 1
    for j in range(X.shape[1]):
        col, uniques = pd.factorize(np.ascontiguousarray(X[:, j], dtype=np.float64) + 0.0)
        if j == 0:  # already the first column's codes: combining with nothing changes none
            codes, m = col.astype(np.int64, copy=False), len(uniques)
            continue
        codes, combined = pd.factorize(codes * len(uniques) + col)
        m = len(combined)
    return codes, m


def distinct_rows(X: np.ndarray, *, max_share: float = DISTINCT_MAX_SHARE) -> DistinctRows | None:
    """`X`'s distinct rows with their counts, or None when more than `max_share` of the rows
    are distinct (judged on a prefix first): deduplicating would then not pay."""
    n = len(X)
    if n == 0 or _row_codes(X[:DISTINCT_PROBE_ROWS])[1] > max_share * min(n, DISTINCT_PROBE_ROWS):
        return None
    codes, m = _row_codes(X)
    if m > max_share * n:
        return None
    some = np.empty(m, dtype=np.int64)
    some[codes] = np.arange(n)  # a row of each code (any: rows with one code are equal)
    rows = np.ascontiguousarray(X[some], dtype=np.float64) + 0.0
    return DistinctRows(rows=rows, counts=np.bincount(codes, minlength=m), index=codes)


def _id_keys(ids: pd.Series) -> np.ndarray | None:
    """int64 keys equal exactly when the ids are equal, if the ids are equal-length ASCII
    digit strings (the usual `0001`, `123456` ids); None otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(ids)
    if not pa.types.is_string(arr.type) or arr.null_count or len(arr) == 0:
        return None
    lengths = pc.min_max(pc.binary_length(arr)).as_py()
    if lengths["min"] != lengths["max"] or not 0 < lengths["max"] <= 18:
        return None
    if not pc.all(pc.ascii_is_decimal(arr)).as_py():
        return None
    return arr.cast(pa.int64()).to_numpy()


def _strictly_increasing(ids: pd.Series) -> bool:
    """Whether every id (all present) sorts after the one before it, so no id repeats: one
    vectorised comparison settles the usual file of ids in order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(ids)
    if arr.null_count or len(arr) < 2 or not pa.types.is_string(arr.type):
        return len(arr) < 2 and not arr.null_count
    return bool(pc.all(pc.greater(arr[1:], arr[:-1])).as_py())


def _repeated_keys(keys: np.ndarray) -> np.ndarray:
    """Mask of the int64 `keys` that occur more than once. Keys spanning a range of at most
    8 per key (numbered customers) are checked with a bitmap, others by sorting."""
    lo, hi = int(keys.min()), int(keys.max())
    seen = None
    if hi - lo < 8 * len(keys):
        seen = np.zeros(hi - lo + 1, dtype=bool)
        seen[keys - lo] = True
        if np.count_nonzero(seen) == len(keys):
            return np.zeros(len(keys), dtype=bool)
    sorted_keys = np.sort(keys)
    same = sorted_keys[1:] == sorted_keys[:-1]
    if not same.any():
        return np.zeros(len(keys), dtype=bool)
    repeated = np.unique(sorted_keys[1:][same])
    if seen is None:
        return pd.Series(keys).isin(repeated).to_numpy()
    seen[:] = False
    seen[repeated - lo] = True
    return seen[keys - lo]


def _repeated_id_rows(ids: pd.Series) -> np.ndarray:
    """Mask of rows whose id occurs more than once (cheap when ids are sorted or numbers)."""
    if _strictly_increasing(ids):
        return np.zeros(len(ids), dtype=bool)
    keys = _id_keys(ids)
    if keys is None:
        return ids.duplicated(keep=False).to_numpy()
    return _repeated_keys(keys)


def prepare_features(table: CustomerTable, *, distinct_cap: int | None = None) -> PreparedData:
    """Drop rows with a missing, non-numeric or infinite feature and exact duplicates.

    Exact duplicates are rows with the same customer id and the same features; a repeated
    id with different features is kept (first row wins) and reported. Without an id
    column identical rows may be distinct customers, so they are all kept. Only rows
    whose id repeats are compared, so a table of unique ids costs one pass. `n_distinct`
    is exact, or at least `distinct_cap` when that many distinct rows exist.
    """
    frame = table.frame
    feats = list(table.features)
    n = len(frame)
    cols = [frame[c].to_numpy(dtype=np.float64) for c in feats]
    invalid = {why: table.invalid.get(why) for why in ("non_numeric", "non_finite")}
    dropped = dict.fromkeys(_REASON_CODES, 0)
    keep: np.ndarray | None = None  # None while every row is kept
    warnings: list[str] = []
    # a column's sum is NaN if it holds a NaN: no mask is built for a table without gaps
    gaps = [bool(np.isnan(np.sum(col))) for col in cols]
    if any(gaps) or any(rows is not None and rows.size for rows in invalid.values()):
        missing = np.zeros(n, dtype=bool)
        for col, gap in zip(cols, gaps, strict=True):
            if gap:
                missing |= np.isnan(col)
        reason = np.where(missing, np.int8(_MISSING), np.int8(0))
        for why, rows in invalid.items():
            if rows is not None and rows.size:
                reason[rows] = _REASON_CODES[why]
        keep = reason == 0
        counts = np.bincount(reason, minlength=len(_REASON_CODES) + 1)
        dropped = {r: int(counts[code]) for r, code in _REASON_CODES.items()}
        if dropped["missing"]:
            first = np.flatnonzero(reason == _MISSING)[:5]
            lines = ", ".join(str(table.line_of(int(r))) for r in first)
            nan_feats = [c for c, col in zip(feats, cols, strict=True) if np.isnan(col).any()]
            warnings.append(
                f"{table.source}: dropped {dropped['missing']} row(s) missing a feature in "
                f"{nan_feats} ({table.line_word} {lines}"
                f"{', ...' if dropped['missing'] > 5 else ''})"
            )
        del missing, reason
    ids = frame[table.id_column] if table.id_column else np.arange(1, n + 1, dtype=np.int64)
    n_dup = 0
    if table.id_column and n and (keep is None or keep.any()):
        # rows whose id is unique can be neither an exact duplicate nor a conflicting id
        candidates = _repeated_id_rows(frame[table.id_column])
        if keep is not None:
            candidates = candidates & keep
        if candidates.any():
            dup = np.zeros(n, dtype=bool)
            kept = frame.loc[candidates, [table.id_column, *feats]]
            where = np.flatnonzero(candidates)
            dup[where] = kept.duplicated(keep="first").to_numpy()
            exact = np.flatnonzero(dup)
            if exact.size:
                lines = ", ".join(f"{table.line_of(int(r))}" for r in exact[:5])
                warnings.append(
                    f"{table.source}: dropped {exact.size} exact duplicate row(s) (same id and "
                    f"values as an earlier row; {table.line_word} {lines}"
                    f"{', ...' if exact.size > 5 else ''})"
                )
            conflicts = kept[~dup[where]]
            repeated = conflicts[table.id_column].duplicated(keep="first").to_numpy()
            if repeated.any():
                rows = conflicts.index[repeated]
                sample = ", ".join(
                    f"{frame.at[r, table.id_column]!r} ({table.line_word} {table.line_of(int(r))})"
                    for r in rows[:5]
                )
                warnings.append(
                    f"{table.source}: {int(repeated.sum())} customer id(s) repeat with "
                    f"different values: {sample}; the first row of each id is kept"
                )
                dup[rows.to_numpy()] = True
                dropped["conflicting_id"] = int(repeated.sum())
            n_dup = int(dup.sum())
            if n_dup:
                keep = ~dup if keep is None else keep & ~dup
    dropped["duplicate"] = n_dup - dropped.get("conflicting_id", 0)
    if keep is not None and not keep.all():
        cols = [col[keep] for col in cols]
        ids = ids[keep] if isinstance(ids, np.ndarray) else ids[keep].reset_index(drop=True)
    X = np.empty((len(cols[0]), len(cols)), dtype=np.float64, order="F")
    for j, col in enumerate(cols):  # column-major: per-feature reductions are 10-50x faster
        X[:, j] = col
    if X.shape[0] == 0:
        empty = [c for c in feats if np.isnan(frame[c].to_numpy(np.float64)).all()]
        if empty:
            raise InputError(
                f"{table.source}: no usable rows: column(s) {empty} hold no numbers in any of "
                f"the {n} rows; fill them in or choose other --features"
            )
        raise InputError(
            f"{table.source}: no usable rows: all {n} rows miss a feature {feats} or hold "
            "non-numbers; check the file and the --features names"
        )
    n_distinct = count_distinct_rows(X, cap=None if distinct_cap is None else max(distinct_cap, 2))
    if n_distinct < 2:
        raise InputError(
            f"{table.source}: only {n_distinct} distinct usable customer(s) in {feats}; "
            "segmentation needs at least 2 different rows"
        )
    for j, col in enumerate(feats):
        if np.ptp(cols[j]) == 0:
            raise InputError(
                f"{table.source}: feature {col!r} is constant ({X[0, j]:g} in every usable row); "
                "drop it from --features"
            )
    dropped = {k: v for k, v in dropped.items() if v}
    for w in warnings:
        log.warning("%s", w)
    log.info(
        "preprocess: %d rows read, %d used, dropped %s, %d distinct points",
        n,
        X.shape[0],
        dropped or "none",
        n_distinct,
    )
    return PreparedData(
        X=X,
        ids=ids,
        features=tuple(feats),
        id_column=table.id_column,
        n_rows_read=table.n_rows_read,
        dropped=dropped,
        n_distinct=n_distinct,
        warnings=tuple(table.warnings) + tuple(warnings),
        sha256=table.sha256,
        categories=dict(table.categories),
    )


def make_scaler(name: str) -> Any:
    """A fresh, unfitted scaler for `name` (`minmax`, `standard`, `robust`), or `passthrough`."""
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    scalers = {"minmax": MinMaxScaler, "standard": StandardScaler, "robust": RobustScaler}
    return "passthrough" if name == "none" else scalers[name]()  # names: options.SCALERS


def make_preprocessor(
    scaler: str,
    *,
    transform: str = "none",
    features: tuple[str, ...] = (),
    categories: dict[str, tuple[str, ...]] | None = None,
    category_weight: float = 1.0,
) -> Any:
    """The model's first step, unfitted: the scaler (`make_scaler`), after `log1p`
    (log(1 + x), inverted by expm1) when `transform` says so. With `categories`, a
    `ColumnTransformer`: that step for the numeric features beside a one-hot encoding of
    each categorical one, weighted by `category_weight` (an unseen value encodes as zeros).
    Two customers differing in one category are then `sqrt(2) * category_weight` apart."""
    numeric = make_scaler(scaler)
    if transform == "log1p":
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import FunctionTransformer

        log1p = FunctionTransformer(np.log1p, inverse_func=np.expm1,
                                    feature_names_out="one-to-one")  # fmt: skip
        numeric = Pipeline([("log1p", log1p), ("scale", numeric)])
    if not categories:
        return numeric
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder

    cats = [f for f in features if f in categories]
    nums = [f for f in features if f not in categories]
    encoder = OneHotEncoder(categories=[list(categories[f]) for f in cats],
                            handle_unknown="ignore", sparse_output=False)  # fmt: skip
    parts = [("num", numeric, nums)] if nums else []
    return ColumnTransformer(parts + [("cat", encoder, cats)],
                             transformer_weights={"cat": float(category_weight)},
                             verbose_feature_names_out=False)  # fmt: skip


def model_frame(
    X: np.ndarray,
    features: tuple[str, ...] | list[str],
    categories: dict[str, tuple[str, ...]] | None = None,
) -> pd.DataFrame:
    """Rows as the saved model takes them: a DataFrame of the features, categorical codes
    turned back into their values (an unseen one into a value no category has)."""
    frame = pd.DataFrame(X, columns=list(features), copy=False)
    for name, cats in (categories or {}).items():
        frame[name] = category_values(frame[name].to_numpy(), cats, other=UNSEEN_VALUE)
    return frame


UNSEEN_VALUE = "\x00unseen"
"""What a code outside the categories becomes for the encoder: no category has it."""


def check_transform(prepared: PreparedData, transform: str, *, source: str) -> None:
    """Refuse features the model's transform cannot take (log1p needs values >= 0)."""
    if transform != "log1p":
        return
    for j, name in enumerate(prepared.features):
        low = float(prepared.X[:, j].min())
        if low < 0:
            raise InputError(
                f"{source}: feature {name!r} has negative values (as low as {low:g}); the log1p "
                "transform needs values >= 0: pass --transform none or choose other --features"
            )


def scale_features(X: np.ndarray, *, scaler: str) -> np.ndarray:
    """`X` scaled as the final model's first step will scale it."""
    step = make_scaler(scaler)
    if step == "passthrough":
        return X
    return step.fit_transform(X)


def minmax_scaled(X_fit: np.ndarray, X: np.ndarray) -> np.ndarray:
    """`MinMaxScaler().fit(X_fit).transform(X)`, bit for bit, in NumPy alone: a small table's
    sweep can then start before scikit-learn is imported (it takes about a second)."""
    low = np.nanmin(X_fit, axis=0).astype(np.float64)
    spread = np.nanmax(X_fit, axis=0).astype(np.float64) - low
    spread[spread < 10 * np.finfo(np.float64).eps] = 1.0  # sklearn's _handle_zeros_in_scale
    scale = np.float64(1.0) / spread
    out = np.array(X, dtype=np.float64, copy=True)
    out *= scale
    out += np.float64(0.0) - low * scale
    return out
