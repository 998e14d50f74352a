"""The final segmentation model: one scikit-learn `Pipeline(scaler, KMeans)`, kept with skops."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from custseg import storage
from custseg.errors import InputError, UntrustedModelError
from custseg.preprocess import distinct_rows, make_scaler, model_frame
from custseg.sanitize import logger
from custseg.sweep import make_kmeans

log = logger(__name__)

TRUSTED_TYPES: tuple[str, ...] = (
    "sklearn.pipeline.Pipeline",
    "sklearn.cluster._kmeans.KMeans",
    "sklearn.preprocessing._data.MinMaxScaler",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.RobustScaler",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
    "numpy.log1p",
    "numpy.expm1",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.preprocessing._encoders.OneHotEncoder",
)
"""The only estimator classes a model file may contain."""

_PLAIN_TYPES = frozenset(
    {
        "builtins.dict", "builtins.list", "builtins.tuple", "builtins.str", "builtins.int",
        "builtins.float", "builtins.bool", "builtins.NoneType", "numpy.ndarray",
        "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32", "numpy.dtype",
        "builtins.slice",
    }
)  # fmt: skip


def fit_segments(
    X: np.ndarray,
    features: tuple[str, ...],
    *,
    k: int,
    scaler: Any,
    seed: int,
    n_init: int,
    init: np.ndarray | None = None,
    categories: dict[str, tuple[str, ...]] | None = None,
) -> Any:
    """Fit `Pipeline(scaler, KMeans(k))` on unscaled rows, with the sweep's random state for k.

    `scaler` is a scaler name (see `make_scaler`), `passthrough`, or a scaler already fit
    on these rows, used as is (the CLI fits it once for the sweep sample and the model).
    With `init` (scaled centers, e.g. the best fit on the sweep sample) K-Means starts
    from those centers once instead of `n_init` k-means++ starts: on millions of rows
    that is a few Lloyd passes, over the distinct rows only when they are few (see
    `distinct_rows`). The scaler sees a DataFrame, so the pipeline remembers the feature
    names it needs; categorical features (codes in `X`) reach it as their values.
    """
    from sklearn.cluster import KMeans
    from sklearn.pipeline import Pipeline

    kmeans = make_kmeans(k, seed=seed, n_init=n_init)
    if init is not None:
        kmeans = KMeans(
            n_clusters=k, init=np.asarray(init, dtype=np.float64), n_init=1,
            random_state=kmeans.random_state,
        )  # fmt: skip
    columns = list(features)
    step = scaler
    if isinstance(scaler, str) and scaler != "passthrough":  # a name: make it, fit on all rows
        step = make_scaler(scaler)
        if step != "passthrough":
            step.fit(model_frame(X, columns, categories))
    # from a given init, Lloyd on the distinct rows weighted by their counts is Lloyd on all
    # rows: integer-valued features make millions of rows a few thousand distinct points
    distinct = distinct_rows(X) if init is not None else None
    rows = model_frame(X if distinct is None else distinct.rows, columns, categories)
    # a passthrough step hands K-Means the DataFrame, so it keeps the feature names itself
    scaled = rows if step == "passthrough" else step.transform(rows)
    kmeans.fit(scaled, sample_weight=None if distinct is None else distinct.counts)
    if distinct is not None:
        kmeans.labels_ = kmeans.labels_[distinct.index]
        log.info("final fit on %d distinct rows weighted by their counts (%d rows)",
                 len(distinct.rows), len(X))  # fmt: skip
    pipeline = Pipeline([("scaler", step), ("kmeans", kmeans)])
    log.info("final model: k=%d, SSE=%.6g, %d iterations", k, kmeans.inertia_, kmeans.n_iter_)
    return pipeline


def skops_io() -> Any:
    """`skops.io`, imported once with the warnings of its import-time scan filtered.

    On import skops looks up scipy's ufuncs by name in every loaded module; in an Airflow
    task process each of Airflow's deprecated shim modules answers such a lookup with a
    DeprecatedImportWarning (1,160 lines of task log for one import). Those warnings are
    about the probe, not about code anyone wrote, so exactly they are filtered, during that
    import only.
    """
    import sys
    import warnings

    if "skops.io" not in sys.modules:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"The `airflow\.\S+` (attribute )?is "
                                    r"deprecated")  # fmt: skip
            import skops.io  # noqa: F401
    import skops.io as sio  # waits while another thread is still importing it

    return sio


def save_model(model: Any, uri: str) -> str:
    """Write the fitted pipeline as a skops file; returns the file's SHA-256."""
    import hashlib

    sio = skops_io()

    data = sio.dumps(model)
    storage.write_bytes(uri, data)
    return hashlib.sha256(data).hexdigest()


MAX_MODEL_BYTES = 64 << 20
MAX_SCHEMA_BYTES = 4 << 20
MAX_FEATURES = 10_000
MAX_ARRAY_ELEMENTS = 200 * MAX_FEATURES
"""Bounds a model file must keep before anything in it is materialised: its size, every
archive member's declared (uncompressed) size, the schema's, and every array's declared
shape (at most k_max = 200 centers of at most 10,000 features). skops reads every member into
memory before its own checks, so a crafted 65 KB file could otherwise claim gigabytes."""


def _check_archive(uri: str, data: bytes) -> None:
    """Refuse a model archive whose declared sizes or array shapes exceed the bounds."""
    if len(data) > MAX_MODEL_BYTES:
        raise InputError(f"{uri}: model file is {len(data):,} bytes, over the "
                         f"{MAX_MODEL_BYTES:,}-byte limit; it is not a custseg model")  # fmt: skip
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        total = sum(i.file_size for i in infos)
        if total > MAX_MODEL_BYTES or len(infos) > 1000:
            raise InputError(f"{uri}: model archive declares {total:,} bytes in {len(infos)} "
                             "members, over the limits; it is not a custseg model")  # fmt: skip
        for info in infos:
            if info.filename == "schema.json" and info.file_size > MAX_SCHEMA_BYTES:
                raise InputError(f"{uri}: model schema declares {info.file_size:,} bytes, over "
                                 f"the {MAX_SCHEMA_BYTES:,}-byte limit")  # fmt: skip
            if info.filename.endswith(".npy"):
                _check_array_header(uri, archive, info)


def _check_array_header(uri: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    """Read only an array's .npy header and check its shape and dtype."""
    fmt = np.lib.format
    with archive.open(info) as fh:
        try:
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = reader(fh)
        except ValueError as exc:
            raise InputError(f"{uri}: model array {info.filename} is damaged ({exc})") from None
    count = int(np.prod(shape, dtype=object))
    if dtype.hasobject or count > MAX_ARRAY_ELEMENTS:
        raise InputError(f"{uri}: model array {info.filename} declares shape {tuple(shape)} "
                         f"of {dtype}, over the limits; it is not a custseg model")  # fmt: skip


def _check_shapes(uri: str, model: Any) -> None:
    """The loaded model's parts agree: k within bounds, centers of k rows by the model's
    recorded features."""
    from custseg.options import K_LIMIT

    try:
        kmeans = model[-1]
        k, centers = int(kmeans.n_clusters), np.asarray(kmeans.cluster_centers_)
        named = kmeans if model[0] == "passthrough" else model
        n_features = len(named.feature_names_in_)
        if _encodes_categories(model[0]):
            n_features = len(model[0].get_feature_names_out())
    except (AttributeError, TypeError, IndexError, KeyError, ValueError) as exc:
        raise InputError(f"{uri}: not a custseg model ({exc!r}); retrain the model") from None
    if not 1 <= k <= K_LIMIT or centers.shape != (k, n_features):
        raise InputError(f"{uri}: model is inconsistent (k={k}, centers {centers.shape}, "
                         f"{n_features} features); retrain the model")  # fmt: skip


def _schema_types(data: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        schema = json.loads(archive.read("schema.json"))
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__class__" in node and "__module__" in node:
                found.add(f"{node['__module__']}.{node['__class__']}")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return found


def untrusted_types(data: bytes) -> list[str]:
    """Types in a skops file that are neither plain data nor in `TRUSTED_TYPES`."""
    sio = skops_io()

    declared = set(sio.get_untrusted_types(data=data)) | _schema_types(data)
    return sorted(t for t in declared if t not in TRUSTED_TYPES and t not in _PLAIN_TYPES)


def load_model(uri: str, *, sha256: str | None = None) -> Any:
    """Load a skops model, refusing any file that holds a type outside `TRUSTED_TYPES`,
    exceeds the size and shape bounds (checked before anything is materialised), or, with
    `sha256`, is not the file its run recorded."""
    import hashlib

    sio = skops_io()

    if not storage.exists(uri):
        raise InputError(f"{uri}: model file not found; run `custseg run` first or pass --model")
    data = storage.read_bytes(uri)
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise InputError(
            f"{uri}: model file does not match its run (SHA-256 differs from metrics.json "
            "model_sha256); it was replaced or damaged: restore it or rerun `custseg run`"
        )
    try:
        _check_archive(uri, data)
        bad = untrusted_types(data)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{uri}: not a skops model file ({exc}); retrain the model") from None
    if bad:
        raise UntrustedModelError(
            f"{uri}: refusing to load model: it contains untrusted types {bad}; "
            "only scikit-learn scalers, the log1p transform, encoders, KMeans and Pipeline "
            "are allowed"
        )
    model = sio.loads(data, trusted=list(TRUSTED_TYPES))
    _check_shapes(uri, model)
    return model


@dataclass(frozen=True)
class ModelInfo:
    """What a saved model needs and knows: features, k and centroids in original units.

    A categorical feature's centroid is the code of the segment's most common value (its
    largest one-hot share); `shares[feature]` holds every value's share per segment.
    """

    features: tuple[str, ...]
    k: int
    centroids: np.ndarray
    categories: dict[str, tuple[str, ...]] = field(default_factory=dict)
    shares: dict[str, np.ndarray] = field(default_factory=dict)


def _encodes_categories(step: Any) -> bool:
    """Whether a model's first step is the `ColumnTransformer` that one-hot encodes categories."""
    from sklearn.compose import ColumnTransformer

    return isinstance(step, ColumnTransformer)


def model_info(model: Any) -> ModelInfo:
    """Features, k and centroids (in original units) of a fitted pipeline."""
    kmeans = model[-1]
    scaler = model[0]
    # a passthrough first step has no feature names: K-Means, fit on the DataFrame, has them
    names = kmeans.feature_names_in_ if scaler == "passthrough" else model.feature_names_in_
    features = tuple(str(f) for f in names)
    centers = kmeans.cluster_centers_
    categories: dict[str, tuple[str, ...]] = {}
    shares: dict[str, np.ndarray] = {}
    if _encodes_categories(scaler):
        centers, categories, shares = _encoded_centroids(scaler, centers, features)
    elif scaler != "passthrough" and scaler is not None:
        centers = scaler.inverse_transform(centers)
    return ModelInfo(
        features=features,
        k=int(kmeans.n_clusters),
        centroids=np.asarray(centers, dtype=np.float64),
        categories=categories,
        shares=shares,
    )


def _encoded_centroids(
    step: Any, centers: np.ndarray, features: tuple[str, ...]
) -> tuple[np.ndarray, dict[str, tuple[str, ...]], dict[str, np.ndarray]]:
    """Centroids in original units through a `ColumnTransformer`: numbers through the
    numeric step's inverse, categories as their one-hot shares (and the likeliest code)."""
    out = np.zeros((len(centers), len(features)))
    categories: dict[str, tuple[str, ...]] = {}
    shares: dict[str, np.ndarray] = {}
    weight = float((step.transformer_weights or {}).get("cat", 1.0))
    for name, part, columns in step.transformers_:
        if name == "remainder" or part == "drop":
            continue
        block = centers[:, step.output_indices_[name]]
        where = [features.index(c) for c in columns]
        if name == "num":
            out[:, where] = block if part == "passthrough" else part.inverse_transform(block)
            continue
        start = 0
        for column, cats in zip(columns, part.categories_, strict=True):
            share = block[:, start : start + len(cats)] / (weight or 1.0)
            start += len(cats)
            categories[column] = tuple(str(c) for c in cats)
            shares[column] = share
            out[:, features.index(column)] = share.argmax(axis=1)
    return out, categories, shares


def assign(model: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's nearest segment, its distance to that centroid and the margin to the
    second-nearest one (inf with k = 1), in the model's scaled units."""
    info = model_info(model)
    dist = model.transform(model_frame(X, info.features, info.categories))
    order = np.argsort(dist, axis=1)
    rows = np.arange(len(X))
    nearest = order[:, 0]
    d1 = dist[rows, nearest]
    d2 = dist[rows, order[:, 1]] if dist.shape[1] > 1 else np.full(len(X), np.inf)
    return nearest, d1, d2 - d1


OUT_OF_RANGE_MARGIN = 0.10
"""A test value is flagged when it lies beyond the training range by over 10% of its width."""


@dataclass(frozen=True)
class Assigned:
    """Customers of a loaded table assigned to segments: `frame` holds the input's columns,
    then `segment`, `segment_name`, `distance` and `margin`; `X` the features, `ok` the rows
    that have them all, `nearest` and `distance` those rows' segments and distances."""

    frame: pd.DataFrame
    X: np.ndarray
    ok: np.ndarray
    nearest: np.ndarray
    distance: np.ndarray


def assigned_frame(
    model: Any, table: Any, names: dict[int, str] | None, *, unnamed: str = ""
) -> Assigned:
    """Each customer of a loaded table with its segment, name, distance and margin (the
    model's scaled units); rows missing a feature get no segment and the name `unnamed`.
    With categorical features, `unseen_category` names those holding a value the model never
    saw (encoded as no category)."""
    from custseg.io import input_frame

    X = table.frame[list(table.features)].to_numpy(dtype=np.float64)
    ok = ~np.isnan(X).any(axis=1)
    nearest, dist, gap = assign(model, X[ok])
    labels = np.array([(names or {}).get(s, "") for s in range(model_info(model).k)],
                      dtype=object)  # fmt: skip
    out = input_frame(table)
    if table.categories:
        flags = np.full(len(X), "", dtype=object)
        for feature, rows in table.unseen.items():
            flags[rows] = np.where(flags[rows] == "", feature, flags[rows] + ";" + feature)
        out["unseen_category"] = flags
    out["segment"] = pd.array(np.full(len(X), pd.NA), dtype="Int64")
    out.loc[ok, "segment"] = nearest
    out["segment_name"] = unnamed
    out.loc[ok, "segment_name"] = labels[nearest]
    for column, values in (("distance", dist), ("margin", gap)):
        out[column] = np.nan
        out.loc[ok, column] = np.round(np.where(np.isinf(values), np.nan, values), 6)
    return Assigned(out, X, ok, nearest, dist)


def predict_segments(
    model: Any,
    table: Any,
    *,
    train_min: list[float],
    train_max: list[float],
    names: dict[int, str] | None = None,
) -> pd.DataFrame:
    """Segment of each customer of a loaded table, through the saved (scaling) pipeline:
    `assigned_frame`'s columns and `out_of_range`.

    Rows missing a feature get no segment and say so in `segment_name`; values far outside
    the training range are flagged in `out_of_range` (the features named), since the model
    extrapolates.
    """
    assigned = assigned_frame(model, table, names, unnamed="no segment: missing feature")
    out, X = assigned.frame, assigned.X
    lo, hi = np.asarray(train_min), np.asarray(train_max)
    width = (hi - lo) * OUT_OF_RANGE_MARGIN
    outside = (X < lo - width) | (X > hi + width)
    outside[:, [f in table.categories for f in table.features]] = False  # see unseen_category
    out["out_of_range"] = [";".join(f for f, bad in zip(table.features, row, strict=True) if bad)
                           for row in outside]  # fmt: skip
    return out


@dataclass(frozen=True)
class SegmentAlignment:
    """How a new model's segments were renumbered to keep the ids of a previous model.

    `order[i]` is the id given to the new fit's cluster i; `matches` lists, per final id,
    the old segment it continues (or None) and the centroid distance in original units.
    """

    order: tuple[int, ...]
    matches: tuple[dict[str, Any], ...]
    max_distance: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (as stored under `segment_alignment` in `metrics.json`)."""
        kept = sum(m["previous_id"] is not None for m in self.matches)
        return {
            "order": list(self.order),
            "matches": list(self.matches),
            "max_distance": (
                round(self.max_distance, 6) if np.isfinite(self.max_distance) else None
            ),  # None: a single old segment, any distance matches
            "kept_ids": kept,
        }


def align_segments(
    new_centroids: np.ndarray, old_centroids: np.ndarray, *, max_distance: float | None = None
) -> SegmentAlignment:
    """Give new segments the ids of the old segments they match (optimal assignment).

    Centroids are compared in original units; a pair matches when it is at most
    `max_distance` apart (default: half the distance between the two closest old
    centroids, so a match is nearer its old centroid than any other). Ids stay 0..k-1:
    unmatched new segments take the free ids in their original order.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    new = np.asarray(new_centroids, dtype=np.float64)
    old = np.asarray(old_centroids, dtype=np.float64)
    if new.ndim != 2 or old.ndim != 2 or new.shape[1] != old.shape[1]:
        raise ValueError(f"centroid shapes differ: {new.shape} vs {old.shape}")
    k = len(new)
    if max_distance is None:
        if len(old) >= 2:
            pair = cdist(old, old) + np.diag(np.full(len(old), np.inf))
            max_distance = 0.5 * float(pair.min())
        else:
            max_distance = float("inf")
    cost = cdist(new, old)
    rows, cols = linear_sum_assignment(cost)
    matched = {
        int(i): int(j)
        for i, j in zip(rows, cols, strict=True)
        if cost[i, j] <= max_distance and j < k
    }
    free = iter(sorted(set(range(k)) - set(matched.values())))
    order = [matched[i] if i in matched else next(free) for i in range(k)]
    matches = []
    for i in sorted(range(k), key=lambda i: order[i]):
        j = matched.get(i)
        dist = None if j is None else round(float(cost[i, j]), 6)
        matches.append({"id": order[i], "previous_id": j, "distance": dist})
    return SegmentAlignment(tuple(order), tuple(matches), float(max_distance))


def renumbered(model: Any, order: tuple[int, ...] | list[int]) -> Any:
    """A copy of a fitted pipeline whose K-Means cluster i is cluster `order[i]`."""
    import copy

    model = copy.deepcopy(model)
    renumber_segments(model[-1], order)
    return model


def renumber_segments(kmeans: Any, order: tuple[int, ...] | list[int]) -> None:
    """Permute a fitted KMeans in place so cluster i becomes `order[i]` (centers and labels)."""
    perm = np.asarray(order, dtype=np.int64)
    if sorted(perm.tolist()) != list(range(kmeans.n_clusters)):
        raise ValueError(f"order {list(order)} is not a permutation of 0..{kmeans.n_clusters - 1}")
    centers = np.empty_like(kmeans.cluster_centers_)
    centers[perm] = kmeans.cluster_centers_
    kmeans.cluster_centers_ = centers
    if hasattr(kmeans, "labels_"):
        kmeans.labels_ = perm[kmeans.labels_].astype(kmeans.labels_.dtype)
