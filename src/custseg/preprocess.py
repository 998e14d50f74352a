"""Clean the loaded table (drop and count bad rows) and build the feature scaler."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from custseg.errors import InputError
from custseg.io import CustomerTable

log = logging.getLogger(__name__)

DROP_REASONS: tuple[str, ...] = (
    "missing", "non_numeric", "non_finite", "duplicate", "conflicting_id",
)  # fmt: skip


@dataclass(frozen=True)
class PreparedData:
    """Rows fit for clustering: unscaled features, customer ids and what was dropped."""

    X: np.ndarray
    ids: np.ndarray
    features: tuple[str, ...]
    id_column: str | None
    n_rows_read: int
    dropped: dict[str, int]
    n_distinct: int
    warnings: tuple[str, ...] = field(default=())

    @property
    def n_rows_used(self) -> int:
        """Rows that go into the model."""
        return int(self.X.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """The cleaned rows as a DataFrame (id first), as written to `features.parquet`."""
        frame = pd.DataFrame(self.X, columns=list(self.features))
        if self.id_column:
            frame.insert(0, self.id_column, self.ids)
        return frame


def prepare_features(table: CustomerTable) -> PreparedData:
    """Drop rows with a missing, non-numeric or infinite feature and exact duplicates.

    Exact duplicates are rows with the same customer id and the same features; a repeated
    id with different features is kept (first row wins) and reported. Without an id
    column identical rows may be distinct customers, so they are all kept.
    """
    frame = table.frame
    feats = list(table.features)
    n = len(frame)
    X = frame[feats].to_numpy(dtype=np.float64)
    nan_rows = np.isnan(X).any(axis=1)
    reason = np.full(n, "", dtype=object)
    reason[nan_rows] = "missing"
    for why in ("non_numeric", "non_finite"):
        rows = table.invalid.get(why)
        if rows is not None and rows.size:
            reason[rows] = why
    keep = reason == ""
    dropped = {r: int(np.sum(reason == r)) for r in ("missing", "non_numeric", "non_finite")}
    warnings: list[str] = []
    if dropped["missing"]:
        first = np.flatnonzero(reason == "missing")[:5]
        lines = ", ".join(str(table.line_of(int(r))) for r in first)
        cols = [c for c in feats if frame[c].isna().any()]
        warnings.append(
            f"{table.source}: dropped {dropped['missing']} row(s) missing a feature in "
            f"{cols} (line {lines}{', ...' if dropped['missing'] > 5 else ''})"
        )
    ids = (
        frame[table.id_column].to_numpy(dtype=object)
        if table.id_column
        else np.array([str(i + 1) for i in range(n)], dtype=object)
    )
    dup = np.zeros(n, dtype=bool)
    if table.id_column and keep.any():
        kept = frame.loc[keep, [table.id_column, *feats]]
        dup[np.flatnonzero(keep)] = kept.duplicated(keep="first").to_numpy()
        conflicts = kept[~dup[np.flatnonzero(keep)]]
        repeated = conflicts[table.id_column].duplicated(keep="first").to_numpy()
        if repeated.any():
            rows = conflicts.index[repeated]
            sample = ", ".join(
                f"{frame.at[r, table.id_column]!r} (line {table.line_of(int(r))})" for r in rows[:5]
            )
            warnings.append(
                f"{table.source}: {int(repeated.sum())} customer id(s) repeat with different "
                f"values: {sample}; the first row of each id is kept"
            )
            dup[rows.to_numpy()] = True
            dropped["conflicting_id"] = int(repeated.sum())
    dropped["duplicate"] = int(dup.sum()) - dropped.get("conflicting_id", 0)
    keep &= ~dup
    X = X[keep]
    ids = ids[keep]
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
    n_distinct = int(len(np.unique(X, axis=0)))
    if n_distinct < 2:
        raise InputError(
            f"{table.source}: only {n_distinct} distinct usable customer(s) in {feats}; "
            "segmentation needs at least 2 different rows"
        )
    for j, col in enumerate(feats):
        if np.ptp(X[:, j]) == 0:
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
    )


def make_scaler(name: str) -> Any:
    """A fresh, unfitted scaler for `name` (`minmax`, `standard`, `robust`), or `passthrough`."""
    from sklearn.preprocessing import MinMaxScaler, RobustScaler, StandardScaler

    scalers = {"minmax": MinMaxScaler, "standard": StandardScaler, "robust": RobustScaler}
    if name == "none":
        return "passthrough"
    if name not in scalers:
        raise InputError(f"unknown scaler {name!r}: use one of minmax, standard, robust, none")
    return scalers[name]()


def scale_features(X: np.ndarray, *, scaler: str) -> np.ndarray:
    """`X` scaled as the final model's first step will scale it."""
    step = make_scaler(scaler)
    if step == "passthrough":
        return X
    return step.fit_transform(X)
