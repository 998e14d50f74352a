"""The pipeline, defined once as a list of steps, and its in-memory runner (the CLI's).

    load -> prepare -> plan -> sweep -> choose -> fit -> align -> profile -> finish

Each `Step` names the values it needs and the one it makes, and computes it with the core
functions (`io`, `preprocess`, `sweep`, `select`, `model`, `report`, `drift`). What a step
writes for people (model, profile, metrics) it writes through the run's `RunDir` in `write`;
the files it draws (plots) its `draw` makes from its value alone, and the runner writes them.
How values travel between steps is the runner's business: `run_in_memory` keeps them in
memory (one process, the CLI); `custseg.orchestration.run_step` runs one step per Airflow
task and hands values over through the run directory (its `SAVE` and `LOAD`). Both give the
same artifacts for the same input and seed.
"""

from __future__ import annotations

import os
import platform
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from custseg import __version__
from custseg.errors import InputError
from custseg.options import PipelineConfig, RunRequest
from custseg.rundir import (
    ELBOW_PNG,
    SEGMENTS_PNG,
    SELECTION_PNG,
    SSE,
    ArtifactStore,
    RunDir,
    RunRecord,
)
from custseg.sanitize import csv_bytes, logger
from custseg.sweep import Progress, start_workers, stop_workers

if TYPE_CHECKING:
    import pandas as pd

    from custseg.io import CustomerTable
    from custseg.preprocess import PreparedData
    from custseg.select import Selection
    from custseg.sweep import SweepResult

log = logger(__name__)


# -- what the steps make -------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPlan:
    """The ks to sweep (k_max clamped to the distinct points) and the sample they use."""

    ks: tuple[int, ...]
    sample_size: int
    n_rows: int
    warnings: tuple[str, ...] = ()

    def batches(self, n: int) -> list[list[int]]:
        """The ks split into at most `n` contiguous batches (mapped Airflow tasks)."""
        n = max(1, min(int(n), len(self.ks)))
        return [[int(k) for k in part] for part in np.array_split(list(self.ks), n)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"ks": list(self.ks), "sample_size": self.sample_size, "n_rows": self.n_rows,
                "warnings": list(self.warnings)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPlan:
        """Read back what `to_dict` wrote."""
        return cls(tuple(int(k) for k in data["ks"]), int(data["sample_size"]),
                   int(data["n_rows"]), tuple(data.get("warnings", ())))  # fmt: skip


@dataclass(frozen=True)
class Fitted:
    """The chosen k and the final model, its segments numbered as K-Means found them."""

    selection: Selection
    sweep: SweepResult
    model: Any
    labels: np.ndarray
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the model and labels are saved separately)."""
        kmeans = self.model[-1]
        return {
            "chosen_k": self.selection.chosen_k,
            "selection": self.selection.to_dict(),
            "sweep": self.sweep.to_dict(),
            "final_sse": float(kmeans.inertia_),
            "final_n_iter": int(kmeans.n_iter_),
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, model: Any, labels: np.ndarray) -> Fitted:
        """Read back what `to_dict` wrote, with the saved model and labels."""
        from custseg.select import Selection
        from custseg.sweep import SweepResult

        selection = Selection.from_dict(data["selection"])
        sw = data["sweep"]
        scores = {int(k): v for k, v in sw["scores"].items()}
        sweep = SweepResult(tuple(sw["ks"]), tuple(sw["sse"]), int(sw["n_rows"]),
                            float(sw["seconds"]), scores)  # fmt: skip
        return cls(selection, sweep, model, labels, data["summary"])


@dataclass(frozen=True)
class Segments:
    """The final model and each customer's segment, ids aligned to the reference run."""

    model: Any
    labels: np.ndarray
    alignment: dict[str, Any] | None


@dataclass(frozen=True)
class Profile:
    """One row per segment (size, share, label, centroid and means), the scatter plot, and
    each segment's distance percentiles (scaled units: what scoring flags novelty against)."""

    table: pd.DataFrame
    plot: bytes = b""
    distances: dict[str, dict[str, float]] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    columns: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    """What every step may use: the request, and once created, the run and its record."""

    request: RunRequest
    run: RunDir | None = None
    record: RunRecord | None = None
    progress: Progress | None = None
    ks: list[int] | None = None

    @property
    def config(self) -> PipelineConfig:
        """The run's model options."""
        return self.request.config

    @property
    def store(self) -> ArtifactStore:
        """The run's artifacts root."""
        return ArtifactStore(self.request.artifacts_root)


# -- the steps -----------------------------------------------------------------------------


RFM_RULES_VERSION = 2
"""Part of the key of a customer table built from an order log: bump when `custseg.rfm`'s
rules change, so no run reuses a table built by the old rules."""


def customers_from_orders(request: RunRequest) -> RunRequest:
    """With an order log (`--transactions`): the request reading the customer table built
    from it (`custseg.rfm`), clustering on `TRANSACTION_FEATURES` unless features were named.

    The table is built once per log content, columns and as-of day, and kept beside the runs
    (`ArtifactStore.customer_table`); a log that cannot be read leaves nothing. Without an
    order log the request is returned as is.
    """
    import dataclasses
    import hashlib
    import json
    import tempfile
    from pathlib import Path

    from custseg.io import file_sha256
    from custseg.options import DEFAULT_FEATURES, TRANSACTION_FEATURES
    from custseg.rfm import customer_features, order_columns

    uri = request.transactions_path
    if not uri:
        return request
    customer, date, amount = order_columns(uri, customer=request.customer_column,
                                           date=request.date_column,
                                           amount=request.amount_column)  # fmt: skip
    key = json.dumps([file_sha256(uri), [customer, date, amount], request.as_of,
                      RFM_RULES_VERSION])  # fmt: skip
    store = ArtifactStore(request.artifacts_root)
    table_uri = store.customer_table(
        f"{Path(uri.rstrip('/')).stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    )
    if store.has_customer_table(table_uri):
        log.info("order log %s: reusing its customer table %s", uri, table_uri)
    else:
        with tempfile.TemporaryDirectory(prefix="custseg-rfm-") as tmp:
            local = Path(tmp, "customers.parquet")
            summary = customer_features(uri, customer=customer, date=date, amount=amount,
                                        out=str(local), as_of=request.as_of)  # fmt: skip
            record = {**dataclasses.asdict(summary), "out": table_uri,
                      "warnings": summary.warnings()}  # fmt: skip
            store.save_customer_table(table_uri, local.read_bytes(), record)
    features = request.config.features
    if features == DEFAULT_FEATURES:
        features = TRANSACTION_FEATURES
    return dataclasses.replace(
        request, input_path=table_uri, customer_column=customer, date_column=date,
        amount_column=amount, config=dataclasses.replace(request.config, features=features),
    )  # fmt: skip


def order_log_summary(request: RunRequest) -> dict[str, Any] | None:
    """What building the customer table from the order log read, dropped and wrote (as
    `customers_from_orders` recorded it), or None for a run on a customer table."""
    from custseg.rundir import customer_table_summary

    return customer_table_summary(request.input_path) if request.transactions_path else None


def load(ctx: Context) -> CustomerTable:
    """The input table, loaded and validated (and the test file checked, so that a bad one
    fails the run before the sweep rather than after it)."""
    from custseg.io import load_customers

    req = ctx.request
    table = load_customers(req.input_path, features=ctx.config.features,
                           categorical=ctx.config.categorical or ())  # fmt: skip
    if req.test_path:
        load_customers(req.test_path, features=table.features, needed_by="the model of this run",
                       categories=table.categories)  # fmt: skip
    if req.names_path:
        from custseg.report import read_segment_names

        read_segment_names(req.names_path)
    log.info("load: %d rows, features %s, id column %s", table.n_rows_read, list(table.features),
             table.id_column)  # fmt: skip
    return table


def prepare(ctx: Context, table: CustomerTable) -> PreparedData:
    """The rows fit for clustering, unusable ones dropped and counted."""
    from custseg.preprocess import check_transform, prepare_features

    prepared = prepare_features(table, distinct_cap=ctx.config.k_max)
    if not prepared.numeric:
        raise InputError(
            f"{table.source}: every feature is categorical ({list(prepared.features)}); "
            "K-Means needs at least one numeric feature: add one to --features"
        )
    check_transform(prepared, ctx.request.model_transform, source=table.source)
    return prepared


def plan(ctx: Context, prepared: PreparedData) -> SweepPlan:
    """The ks to sweep and the sweep sample's size, decided once for every later step."""
    from custseg.sweep import auto_sample_size, k_range

    config = ctx.config
    ks = k_range(k_min=config.k_min, k_max=config.k_max, n_distinct=prepared.n_distinct)
    warnings = []
    if ks[-1] < config.k_max:
        warnings.append(f"k_max={config.k_max} > {prepared.n_distinct} distinct usable points: "
                        f"k_max clamped to {ks[-1]}")  # fmt: skip
        log.warning("%s", warnings[-1])
    n = prepared.n_rows_used
    size = config.sample_size or auto_sample_size(n, k_max=config.k_max,
                                                  n_features=prepared.X.shape[1])  # fmt: skip
    return SweepPlan(tuple(ks), min(size, n), n, tuple(warnings))


def scaled_sample(
    request: RunRequest, prepared: PreparedData, plan: SweepPlan
) -> tuple[Any, np.ndarray]:
    """The final model's first step (transform and scaler, fit on all rows) and the scaled
    rows the sweep and the criteria use, drawn from (seed, row count) alone: every batch
    sees the same rows."""
    from custseg.preprocess import make_preprocessor, model_frame
    from custseg.sweep import sample_rows

    config = request.config
    X, feats = prepared.X, list(prepared.features)
    cats = prepared.categories
    scaler = make_preprocessor(config.scaler, transform=request.model_transform, features=feats,
                               categories=cats, category_weight=config.category_weight)  # fmt: skip
    if scaler != "passthrough":
        scaler.fit(model_frame(X, feats, cats))
    rows = sample_rows(len(X), size=plan.sample_size, seed=config.seed)
    part = X if rows is None else X[rows]
    if scaler != "passthrough":
        part = scaler.transform(model_frame(part, feats, cats))
    return scaler, np.ascontiguousarray(part, dtype=np.float64)


def sweep_sample(request: RunRequest, prepared: PreparedData, plan: SweepPlan) -> np.ndarray:
    """`scaled_sample`'s rows, computed in NumPy alone for the default MinMax scaler (no
    transform, no categories): sweeping a small table then needs no scikit-learn."""
    from custseg.preprocess import minmax_scaled
    from custseg.sweep import sample_rows

    if not _sample_in_numpy(request, prepared):
        return scaled_sample(request, prepared, plan)[1]
    X = prepared.X
    rows = sample_rows(len(X), size=plan.sample_size, seed=request.config.seed)
    return np.ascontiguousarray(minmax_scaled(X, X if rows is None else X[rows]))


def _sample_in_numpy(request: RunRequest, prepared: PreparedData) -> bool:
    """Whether `sweep_sample` scales in NumPy alone (the default MinMax, no transform, no
    categories) rather than with the model's scikit-learn preprocessor."""
    default = (request.config.scaler, request.model_transform) == ("minmax", "none")
    return default and not prepared.categories


def sweep(ctx: Context, prepared: PreparedData, plan: SweepPlan) -> SweepResult:
    """SSE (and, for `auto`, the per-k criteria) for each k of the plan, or of `ctx.ks`."""
    from custseg.sweep import sweep_k

    config = ctx.config
    ks = ctx.ks or list(plan.ks)
    sample = sweep_sample(ctx.request, prepared, plan)
    log.info("sweep: %d ks on %d of %d rows", len(ks), len(sample), plan.n_rows)
    scorer = None
    if config.select == "auto":
        from custseg.criteria import CriteriaScorer

        scorer = CriteriaScorer(sample, seed=config.seed)
    return sweep_k(sample, ks, seed=config.seed, n_init=config.n_init, progress=ctx.progress,
                   scorer=scorer)  # fmt: skip


def select(ctx: Context, prepared: PreparedData, plan: SweepPlan, sweep: SweepResult) -> Selection:
    """The chosen k from the sweep (and, for `auto`, its criteria and stability check), with
    the reason and the evidence."""
    from custseg.select import choose_k

    config = ctx.config
    if list(sweep.ks) != list(plan.ks):
        raise RuntimeError(f"sweep covered ks {list(sweep.ks)}, planned {list(plan.ks)}")
    sample = sweep_sample(ctx.request, prepared, plan)
    numeric = len(prepared.numeric) if prepared.categories else None
    selection = choose_k(sweep, method=config.select, X=sample, seed=config.seed,
                         numeric_columns=numeric)  # fmt: skip
    log.info("chose k=%d (%s): %s", selection.chosen_k, selection.method, selection.reason)
    return selection


def fit(
    ctx: Context, prepared: PreparedData, plan: SweepPlan, sweep: SweepResult, selection: Selection
) -> Fitted:
    """The final model at the chosen k, fit on every row."""
    from sklearn.cluster import KMeans  # noqa: F401 - load OpenMP before limiting it
    from threadpoolctl import threadpool_limits

    from custseg.model import fit_segments
    from custseg.sweep import fit_k, heartbeat

    config = ctx.config
    scaler, sample = scaled_sample(ctx.request, prepared, plan)
    k = selection.chosen_k
    init = None
    if len(sample) < prepared.n_rows_used:  # the sweep's fit at k seeds the fit on all rows
        with threadpool_limits(limits=1):
            init = fit_k(sample, k, seed=config.seed, n_init=config.n_init).centers
    with heartbeat(f"final fit: k={k} on {prepared.n_rows_used} rows"):
        model = fit_segments(prepared.X, prepared.features, k=k, scaler=scaler,
                             seed=config.seed, n_init=config.n_init, init=init,
                             categories=prepared.categories)  # fmt: skip
    labels = model[-1].labels_
    del model[-1].labels_  # the model keeps centers; one label per row goes to assignments
    summary = prepared.summary()
    summary["warnings"] += list(plan.warnings)
    return Fitted(selection, sweep, model, labels, summary)


def draw_selection(selection: Selection, sweep: SweepResult) -> dict[str, bytes]:
    """`sse.csv`, `elbow.png` and (auto) `selection.png`: they need no model."""
    import pandas as pd

    from custseg.report import elbow_png, selection_png

    sw, sel = sweep, selection
    frame = pd.DataFrame({"k": sw.ks, "sse": sw.sse})
    files = {SSE: csv_bytes(frame, float_format="%.10g")}
    files[ELBOW_PNG] = elbow_png(list(sw.ks), list(sw.sse), chosen_k=sel.chosen_k,
                                 knee=sel.details.get("knee"))  # fmt: skip
    if sel.method == "auto":
        files[SELECTION_PNG] = selection_png(sel.to_dict())
    return files


def write_drawn(ctx: Context, files: dict[str, bytes]) -> None:
    """Write what a step's `draw` made into the run directory."""
    run = _run(ctx)
    for name, data in files.items():
        run.write_bytes(name, data)


def align(ctx: Context, fitted: Fitted) -> Segments:
    """Renumber the segments so that those matching the reference run's keep their ids. The
    reference is the promoted run recorded when this run started, so a retry or a concurrent
    run cannot change it."""
    from custseg.model import align_segments, model_info, renumbered

    model, labels = fitted.model, fitted.labels
    alignment = None
    reference = _record(ctx).reference
    if reference is not None:
        old = _reference_info(reference.run_dir)
        new = model_info(model)
        base = {"previous_run_id": reference.run_id, "previous_run_dir": reference.run_dir}
        if isinstance(old, str):
            alignment = {**base, "aligned": False, "why": old}
        elif old.features != new.features:
            why = f"features differ: {list(old.features)} before, {list(new.features)} now"
            alignment = {**base, "aligned": False, "why": why}
        else:
            found = align_segments(new.centroids, old.centroids)
            model = renumbered(model, found.order)
            labels = np.asarray(found.order, dtype=np.int64)[labels]
            log.info("segment ids aligned with %s: new cluster i -> id %s", reference.run_id,
                     list(found.order))  # fmt: skip
            alignment = {**base, "previous_k": old.k, "aligned": True, **found.to_dict()}
    return Segments(model, labels, alignment)


def _reference_info(run_dir: str) -> Any:
    """The reference run's `ModelInfo`, or why it cannot be read."""
    from custseg.model import model_info
    from custseg.rundir import run_at

    try:
        return model_info(run_at(run_dir).load_model())
    except (InputError, OSError, ValueError) as exc:
        log.warning("segment ids not aligned: reference %s unreadable (%s)", run_dir, exc)
        return str(exc)


def write_align(ctx: Context, segments: Segments, prepared: PreparedData) -> None:
    """`model.skops`, `assignments.parquet` and the alignment decision."""
    run = _run(ctx)
    run.save_model(segments.model)
    run.save_segments_info({"alignment": segments.alignment})
    run.save_assignments(segments.labels, prepared.ids, prepared.id_column)


def profile(ctx: Context, prepared: PreparedData, segments: Segments) -> Profile:
    """Each segment's size, share, centroid, means and label, and the scatter plot."""
    from custseg.model import model_info
    from custseg.report import profile_segments, segments_png

    info = model_info(segments.model)
    X, centroids = prepared.X, info.centroids
    if prepared.categories:  # a copy of the numeric columns only when there are others
        X, centroids = X[:, prepared.numeric_index], centroids[:, prepared.numeric_index]
    shares = category_shares(prepared, segments.labels, info.k)
    table = profile_segments(X, segments.labels, centroids, prepared.numeric, categories=shares)
    names = segment_names(ctx, segments.alignment, len(centroids))
    table.insert(3, "name", [names.get(i, "") for i in range(len(centroids))])
    shown = [f"{n} ({d})" if n else d for n, d in zip(table["name"], table["label"], strict=True)]
    plot = segments_png(X, segments.labels, centroids, prepared.numeric, shown,
                        seed=ctx.config.seed)  # fmt: skip
    distances, reference = segment_distances(segments.model, prepared, segments.labels)
    columns = profile_columns(ctx.request.input_path, prepared, segments.labels, len(centroids))
    return Profile(table, plot, distances, reference, columns)


def category_shares(
    prepared: PreparedData, labels: np.ndarray, k: int
) -> dict[str, tuple[tuple[str, ...], np.ndarray, np.ndarray]]:
    """Per categorical feature: its values, each value's share in each of the `k` segments
    (k x values) and among all customers."""
    out = {}
    labels = np.asarray(labels)
    for name, cats in prepared.categories.items():
        codes = prepared.X[:, prepared.features.index(name)].astype(np.int64)
        counts = np.zeros((k, len(cats)))
        np.add.at(counts, (labels, codes), 1)
        within = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        out[name] = (cats, within, np.bincount(codes, minlength=len(cats)) / len(codes))
    return out


def segment_names(ctx: Context, alignment: dict[str, Any] | None, k: int) -> dict[int, str]:
    """Your names of the segments: the names file, else those of the reference run carried
    over by segment id (`custseg.report.carried_names`)."""
    from custseg.report import carried_names, read_segment_names
    from custseg.rundir import run_at

    if ctx.request.names_path:
        names = read_segment_names(ctx.request.names_path)
    else:
        reference = _record(ctx).reference
        try:
            previous = run_at(reference.run_dir).metrics().get("segment_names") if reference else {}
        except (InputError, OSError, ValueError):
            previous = {}
        names = carried_names(previous or {}, alignment)
    unknown = sorted(i for i in names if i >= k)
    if unknown:
        log.warning("names of segments %s ignored: this run has segments 0..%d", unknown, k - 1)
    return {i: n for i, n in names.items() if i < k}


PROFILE_ROWS = 200_000
"""Every-column profiles use at most this many customers (a fixed-seed sample)."""


def profile_columns(
    input_path: str, prepared: PreparedData, labels: np.ndarray, k: int
) -> list[dict[str, Any]]:
    """Each segment on every column of the input (`custseg.report.column_profiles`): the
    other columns are read again and matched to the rows used by id (or row number)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from custseg.io import other_columns
    from custseg.report import column_profiles

    idc = prepared.id_column
    try:
        others = other_columns(input_path, set(prepared.numeric))
    except (InputError, OSError, ValueError, pa.ArrowInvalid) as exc:
        log.warning("columns beyond the features not profiled: %s", exc)
        others = None
    rows = np.arange(prepared.n_rows_used)
    if len(rows) > PROFILE_ROWS:
        rows = np.sort(np.random.default_rng(0).choice(len(rows), PROFILE_ROWS, replace=False))
    ids = pd.Series(prepared.ids).iloc[rows].astype(str).to_numpy()
    if others is None or others.num_columns == 0 or (idc and idc not in others.column_names):
        matched = pd.DataFrame(index=range(len(rows)))
    elif idc:
        matched = _rows_in_order(others, idc, rows, ids, n_used=prepared.n_rows_used)
        if matched is None:
            # pick the sampled customers in Arrow first: no pandas index over every row
            picked = others.filter(pc.is_in(others[idc], value_set=pa.array(ids))).to_pandas()
            table = picked.drop_duplicates(subset=[idc]).set_index(idc)
            matched = table.reindex(ids).reset_index(drop=True)
    else:
        matched = others.take(pa.array(ids.astype(np.int64) - 1)).to_pandas()
    features = {f: prepared.X[rows, j] for f, j in zip(prepared.numeric, prepared.numeric_index,
                                                       strict=True)}  # fmt: skip
    return column_profiles(matched, np.asarray(labels)[rows], k, features)


def _rows_in_order(
    others: Any, idc: str, rows: np.ndarray, ids: np.ndarray, *, n_used: int
) -> pd.DataFrame | None:
    """The other columns of the rows used `rows` taken by position, when the file's rows are
    the rows used, in order (nothing dropped; checked on the sampled ids); else None. At 10M
    rows this spares matching every id against the sample."""
    import pyarrow as pa

    if others.num_rows != n_used:
        return None
    taken = others.take(pa.array(rows))
    if not taken[idc].combine_chunks().equals(pa.array(ids, type=taken[idc].type)):
        return None
    return taken.drop_columns([idc]).to_pandas()


def segment_distances(
    model: Any, prepared: PreparedData, labels: np.ndarray
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per segment, the p50/p95/p99 of its customers' distances to its centroid (the model's
    scaled units), and the drift reference (`custseg.drift.training_reference`); both on at
    most 200,000 rows drawn with a fixed seed."""
    from custseg.drift import training_reference
    from custseg.preprocess import model_frame

    X, lab = prepared.X, np.asarray(labels)
    if len(X) > 200_000:
        rows = np.sort(np.random.default_rng(0).choice(len(X), 200_000, replace=False))
        X, lab = X[rows], lab[rows]
    frame = model_frame(X, prepared.features, prepared.categories)
    dist = model.transform(frame)[np.arange(len(lab)), lab]
    out = {}
    for seg in np.unique(lab):
        p50, p95, p99 = np.quantile(dist[lab == seg], [0.5, 0.95, 0.99])
        out[str(int(seg))] = {"p50": round(float(p50), 6), "p95": round(float(p95), 6),
                              "p99": round(float(p99), 6)}  # fmt: skip
    k = int(model[-1].n_clusters)
    return out, training_reference(X, prepared.features, lab, dist, k)


def write_profile(ctx: Context, profile: Profile) -> None:
    """`profile.csv` and `segments.png`."""
    run = _run(ctx)
    run.save_profile(profile.table)
    run.write_bytes(SEGMENTS_PNG, profile.plot)
    run.save_segment_distances(profile.distances)
    run.save_reference(profile.reference)
    run.save_column_profiles(profile.columns)


def score_customers(
    model: Any,
    input_path: str,
    *,
    summary: dict[str, Any],
    needed_by: str,
    names: dict[int, str] | None = None,
) -> pd.DataFrame:
    """Segments of the customers in `input_path` by `model`; values far outside the training
    range (`summary`'s feature_min/max) are flagged in `out_of_range`."""
    from custseg.io import load_customers
    from custseg.model import model_info, predict_segments
    from custseg.sweep import heartbeat

    info = model_info(model)
    table = load_customers(input_path, features=info.features, needed_by=needed_by,
                           categories=info.categories)  # fmt: skip
    with heartbeat(f"predict: {table.n_rows_read} customers"):
        return predict_segments(model, table, train_min=summary["feature_min"],
                                train_max=summary["feature_max"], names=names)  # fmt: skip


def finish(
    ctx: Context, fit_info: dict[str, Any], alignment: dict[str, Any] | None, profile: Profile
) -> dict[str, Any]:
    """Reload the saved model, score the test customers, write metrics and report, promote.

    `latest.json` is replaced only here, as the very last step, so a run that fails anywhere
    before leaves the previous promotion untouched.
    """
    import sklearn

    from custseg.model import model_info
    from custseg.report import report_html
    from custseg.rundir import PREDICTIONS, REPORT

    run, record = _run(ctx), _record(ctx)
    summary, chosen_k = fit_info["summary"], int(fit_info["chosen_k"])
    model = run.load_model()
    if model_info(model).k != chosen_k:
        raise RuntimeError(f"saved model has k={model_info(model).k}, chosen k={chosen_k}")
    warnings = list(summary["warnings"])
    orders = order_log_summary(ctx.request)
    if orders:
        warnings = orders["warnings"] + warnings
    predictions = None
    test = ctx.request.test_path
    if test:
        names = {int(r.segment): str(r.name or r.label) for r in profile.table.itertuples()}
        pred = score_customers(model, test, summary=summary, needed_by="the model of this run",
                               names=names)  # fmt: skip
        run.write_bytes(PREDICTIONS, csv_bytes(pred))
        predictions = _prediction_summary(pred, run.path(PREDICTIONS), test, warnings)
    sweep = fit_info["sweep"]
    metrics = {
        "run_id": record.run_id,
        "created_at": record.created_at,
        "input": ctx.request.input_path,
        "test": test,
        "chosen_k": chosen_k,
        "k_range": [sweep["ks"][0], sweep["ks"][-1]],
        "sse": {str(k): v for k, v in zip(sweep["ks"], sweep["sse"], strict=True)},
        "final_sse": fit_info["final_sse"],
        "sample_size": sweep["n_rows"],
        "selection": fit_info["selection"],
        "segment_alignment": alignment,
        "reference_run_id": None if record.reference is None else record.reference.run_id,
        "origin": record.origin,
        "features": summary["features"],
        "feature_min": summary["feature_min"],
        "feature_max": summary["feature_max"],
        "transactions": orders,
        "transform": ctx.request.model_transform,
        "scaler": ctx.config.scaler,
        "categories": summary.get("categories", {}),
        "categorical_how": categorical_how(summary.get("categories", {}), ctx.config.categorical),
        "category_weight": ctx.config.category_weight if summary.get("categories") else None,
        "seed": ctx.config.seed,
        "n_init": ctx.config.n_init,
        "n_rows_read": summary["n_rows_read"],
        "n_rows_used": summary["n_rows_used"],
        "n_rows_dropped": summary["n_rows_dropped"],
        "data_sha256": summary["data_sha256"],
        "model_sha256": run.model_sha256(),
        "segments": profile.table.to_dict(orient="records"),
        "segment_distances": profile.distances,
        "column_profiles": profile.columns,
        "segment_names": {
            str(int(r.segment)): r.name for r in profile.table.itertuples() if r.name
        },  # fmt: skip
        "predictions": predictions,
        "warnings": warnings,
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "custseg": __version__,
        },  # fmt: skip
    }
    metrics["reason"] = ctx.request.reason
    metrics["promotion"] = _promotion(ctx, metrics, alignment)
    if record.reference is not None:
        metrics["who_moved"] = _who_moved(run, record.reference.run_dir, alignment)
    run.write_bytes(REPORT, report_html(metrics, profile.table, run.images()).encode())
    run.save_metrics(metrics)
    promotion = metrics["promotion"]
    latest = ctx.store.promote(run) if promotion["promoted"] else None
    (log.info if promotion["promoted"] else log.warning)("%s", promotion["reason"])
    return {"run_id": record.run_id, "run_dir": run.uri, "chosen_k": chosen_k,
            "reason": fit_info["selection"]["reason"], "n_rows_used": summary["n_rows_used"],
            "latest": latest, "promoted": promotion["promoted"],
            "promotion_reason": promotion["reason"]}  # fmt: skip


def categorical_how(categories: dict[str, Any], named: tuple[str, ...] | None) -> dict[str, str]:
    """How each categorical feature was decided: named (--categorical) or detected."""
    from custseg.io import name_keys

    asked = set().union(*(name_keys(n) for n in named or ()))
    detected = "detected: text with {} distinct values"
    return {c: "named (--categorical)" if name_keys(c) & asked else detected.format(len(v))
            for c, v in categories.items()}  # fmt: skip


def _promotion(
    ctx: Context, metrics: dict[str, Any], alignment: dict[str, Any] | None
) -> dict[str, Any]:
    """The promotion gate's decision for this run (see `custseg.promotion`)."""
    from custseg.promotion import gate_checks, promotion_decision

    req = ctx.request
    shares = [float(s["share"]) for s in metrics["segments"]]
    checks = gate_checks(metrics["selection"], shares, alignment, min_share=req.min_segment_share,
                         min_stability=req.min_stability)  # fmt: skip
    return promotion_decision(checks, force=req.force_promote)


def _who_moved(run: RunDir, previous_dir: str, alignment: dict[str, Any] | None) -> dict[str, Any]:
    """Old segment -> new segment counts against the reference run (`custseg.promotion`)."""
    from custseg.promotion import who_moved
    from custseg.rundir import run_at

    current = run.load_assignments()
    id_column = next((c for c in current.columns if c != "segment"), None)
    try:
        previous = run_at(previous_dir).load_assignments()
    except (InputError, OSError, ValueError) as exc:
        return {"why": f"reference assignments unreadable: {exc}", "table": []}
    moves = who_moved(previous, current, id_column, alignment)
    log.info("who moved since %s: %s of %s customers in both changed segment; born %s, "
             "dissolved %s", run_at(previous_dir).run_id, moves.get("moved"),
             moves.get("customers_in_both"), moves["born"], moves["dissolved"])  # fmt: skip
    return moves


def _prediction_summary(
    pred: pd.DataFrame, path: str, test: str, warnings: list[str]
) -> dict[str, Any]:
    """What `metrics.json` says of the predictions; adds their warnings to `warnings`."""
    n_far = int((pred["out_of_range"] != "").sum())
    if n_far:
        warnings.append(
            f"{test}: {n_far} test customer(s) lie far outside the training range "
            "(column out_of_range of predictions.csv); their segments are extrapolated"
        )
    n_missing = int(pred["segment"].isna().sum())
    if n_missing:
        warnings.append(f"{test}: {n_missing} test customer(s) miss a feature; "
                        "they get no segment")  # fmt: skip
    counts = pred["segment"].value_counts().sort_index()
    far = pred[pred["out_of_range"] != ""].head(20).astype(str)
    return {"path": path, "n_rows": len(pred), "n_out_of_range": n_far,
            "segment_counts": {str(k): int(v) for k, v in counts.items()},
            "far_examples": far.to_dict(orient="records")}  # fmt: skip


def _run(ctx: Context) -> RunDir:
    if ctx.run is None:
        raise RuntimeError("this step needs the run directory, which is not created yet")
    return ctx.run


def _record(ctx: Context) -> RunRecord:
    if ctx.record is None:
        raise RuntimeError("this step needs the run's record, which is not written yet")
    return ctx.record


# -- the step list -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step: the values it needs, the one it makes, and what it writes for people."""

    name: str
    task_id: str
    needs: tuple[str, ...]
    compute: Callable[..., Any]
    write: Callable[..., None] | None = None
    write_needs: tuple[str, ...] = field(default=())
    draw: Callable[..., dict[str, bytes]] | None = None
    """Files for people (artifact name -> bytes) made from the step's value and `draw_needs`:
    a pure function, so a runner may run it in another process; the runner writes them."""
    draw_needs: tuple[str, ...] = field(default=())


STEPS: tuple[Step, ...] = (
    Step("table", "load_data_task", (), load),
    Step("prepared", "data_preprocessing_task", ("table",), prepare),
    Step("plan", "plan_sweep_task", ("prepared",), plan),
    Step("sweep", "sweep_k_task", ("prepared", "plan"), sweep),
    Step(
        "selection",
        "build_save_model_task",
        ("prepared", "plan", "sweep"),
        select,
        draw=draw_selection,
        draw_needs=("sweep",),
    ),
    Step("fitted", "build_save_model_task", ("prepared", "plan", "sweep", "selection"), fit),
    Step("segments", "align_segments_task", ("fitted",), align, write_align, ("prepared",)),
    Step("profile", "profile_segments_task", ("prepared", "segments"), profile, write_profile),
    Step("summary", "load_model_task", ("fit_info", "alignment", "profile"), finish),
)
"""The pipeline. A step is named after the value it makes; `fit_info` is `fitted` as JSON
and `alignment` the alignment decision of `segments`. Airflow runs each step as a task of its
`task_id`; consecutive steps may share one (choosing k and the final fit: the lab's
`build_save_model_task`)."""
STEP = {s.name: s for s in STEPS}
DERIVED: dict[str, Callable[[dict[str, Any]], Any]] = {
    "fit_info": lambda values: values["fitted"].to_dict(),
    "alignment": lambda values: values["segments"].alignment,
}
"""Values a runner that holds everything in memory derives from others."""
CREATE_RUN_AFTER = "prepared"
"""The run directory is created once the input is loaded and cleaned: bad input leaves none."""


# -- the in-memory runner ------------------------------------------------------------------


CHOICE_STACK: tuple[str, ...] = ("kneed",)
"""What choosing k needs beyond the sweep."""
LATER_STACK: tuple[str, ...] = ("custseg.model", "matplotlib.figure")
"""What the final fit, saving and drawing need, after scikit-learn."""
OVERLAPPED: tuple[str, ...] = ("sweep", "selection")
"""The steps computed while this process imports `LATER_STACK`."""


SKLEARN_STACK: tuple[str, ...] = ("sklearn.cluster", "sklearn.preprocessing")


def _import_stacks(
    *stacks: tuple[str, ...], thread: bool, first: tuple[str, ...] = SKLEARN_STACK
) -> threading.Thread | None:
    """Import `first` here, then `stacks` (on a thread if `thread`; returns it). scikit-learn
    (and with it scipy) comes first unless the caller imports nothing until the thread has
    ended and passes it among `stacks`: two threads initialising one package at once fail."""
    import importlib

    for name in first:
        importlib.import_module(name)
    names = [name for stack in stacks for name in stack]
    if not thread:
        _import_all(names)
        return None
    from custseg.forked import IMPORTER

    importer = threading.Thread(target=_import_all, args=(names,), name=IMPORTER, daemon=True)
    importer.start()
    return importer


def _import_all(names: list[str]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - reported where the module is used
            return
    from custseg.model import skops_io  # LATER_STACK, always among `names`

    skops_io()


def _compute_beside_imports(
    ctx: Context, values: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
    """The values of `OVERLAPPED`, computed while this process imports `LATER_STACK`, and
    the files their steps draw when they were drawn too (step name -> files).

    When the sweep is small enough to run in one process and in NumPy (`custseg.kmeans`),
    they are computed and drawn on a forked process (`custseg.forked`): it needs NumPy alone
    (and kneed and matplotlib, which it imports itself), so the two processes use two cores
    instead of taking turns on the GIL. (scikit-learn's K-Means, for larger samples, runs
    OpenMP threads, and GNU OpenMP hangs in a process forked after it started them.)
    Otherwise here, beside a thread importing, while the sweep's own worker processes
    compute; the runner then draws as for any step.
    """
    from custseg.forked import ForkedCall, can_fork
    from custseg.kmeans import SMALL_ROWS
    from custseg.sweep import in_process_reason

    def compute(importer: threading.Thread | None = None) -> dict[str, Any]:
        found = dict(values)
        for name in OVERLAPPED:
            if name != OVERLAPPED[0] and importer is not None:
                importer.join()  # the choice fits and imports here
            found[name] = STEP[name].compute(ctx, **{n: found[n] for n in STEP[name].needs})
        return {name: found[name] for name in OVERLAPPED}

    def compute_and_draw() -> tuple[dict[str, Any], dict[str, dict[str, bytes]]]:
        found = compute()
        drawn = {}
        for name in OVERLAPPED:
            step = STEP[name]
            if step.draw is not None:
                extra = {n: found[n] if n in found else values[n] for n in step.draw_needs}
                drawn[name] = step.draw(found[name], **extra)
        return found, drawn

    plan = values["plan"]
    on_workers = in_process_reason(len(ctx.ks or plan.ks), rows=plan.sample_size) is None
    why_not = can_fork()
    if why_not is None and on_workers:
        why_not = "the sweep runs on worker processes"
    elif why_not is None and plan.sample_size > SMALL_ROWS:  # GNU OpenMP hangs after a fork
        why_not = f"{plan.sample_size} rows are fit by scikit-learn, whose threads a fork loses"
    if why_not is not None:
        log.info("%s: computed here while a thread imports (%s)", " and ".join(OVERLAPPED), why_not)
        # a sweep on worker processes, of a sample scaled in NumPy, imports nothing here: it
        # starts at once, and scikit-learn is imported on the thread too
        if on_workers and _sample_in_numpy(ctx.request, values["prepared"]):
            stacks = (SKLEARN_STACK, CHOICE_STACK, LATER_STACK)
            return compute(_import_stacks(*stacks, thread=True, first=())), {}
        _import_stacks(CHOICE_STACK, LATER_STACK, thread=True)
        return compute(), {}
    child = ForkedCall(compute_and_draw, what=" and ".join(OVERLAPPED))
    _import_stacks(LATER_STACK, thread=False)
    return child.result()


class _DrawnFiles:
    """A step's files being drawn on a forked process; `result` waits and writes them."""

    def __init__(self, ctx: Context, child: Any) -> None:
        self._ctx, self._child = ctx, child

    def result(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            write_drawn(self._ctx, child.result())


def _draw_apart(
    step: Step, ctx: Context, value: Any, extra: dict[str, Any], writer: ThreadPoolExecutor,
    pending: list[Any],
) -> Any:  # fmt: skip
    """Draw `step`'s files on a forked process while this one goes on to the next steps
    (matplotlib's drawing holds the GIL: on a thread it would only take turns); they are
    written when awaited. Where no fork is possible, drawn and written on the writer thread."""
    from custseg.forked import ForkedCall, can_fork, wait_for_imports

    draw = step.draw
    assert draw is not None
    if can_fork() is not None:
        return writer.submit(lambda: write_drawn(ctx, draw(value, **extra)))
    for done in pending:  # fork with the writer thread idle, not halfway through a write
        done.result()
    wait_for_imports()
    return _DrawnFiles(ctx, ForkedCall(lambda: draw(value, **extra), what=f"{step.name}: drawing"))


FAULT_AFTER = "CUSTSEG_FAULT_AFTER_STEP"
"""Fault injection for tests: the process SIGKILLs itself once this step and its writes are
done, so a crash between two steps is reproduced exactly, whatever the machine's load."""


def _die_after(pending: list[Any]) -> None:
    import signal

    for done in pending:
        done.result()
    os.kill(os.getpid(), signal.SIGKILL)


EARLY_WORKERS_BYTES = 1 << 20
"""An input file of this size or more (about 40,000 rows of the Mall's columns as CSV) starts
the sweep's worker processes before it is read, so that their start-up (a second of imports)
overlaps the read: such a table is swept on them anyway (`custseg.sweep.run_tasks`)."""


def _input_bytes(request: RunRequest) -> int:
    """The size of the run's local input file (the order log if any), 0 when not local."""
    from custseg import storage

    path = request.transactions_path or request.input_path
    if not path or storage.is_remote(path):
        return 0
    try:
        return os.path.getsize(storage.local_path(path))
    except OSError:  # reported by the load step
        return 0


def run_in_memory(
    request: RunRequest, *, run_id: str | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """Run every step in this process, values handed over in memory; returns the summary.

    Writing a step's artifacts (plots, model, assignments) runs on one writer thread while
    the next step computes; the writes are awaited before the last step reads them back. On
    two cores a small table's sweep and choice of k, with their plots, run on a forked process
    while this one imports what the final fit, saving and drawing need
    (`_compute_beside_imports`).
    """
    start = time.perf_counter()
    size = _input_bytes(request)
    if size >= EARLY_WORKERS_BYTES:
        log.info("input of %.1f MB: the sweep's worker processes start before it is read",
                 size / 1e6)  # fmt: skip
        start_workers()
    try:
        values = _run_steps(customers_from_orders(request), run_id=run_id, progress=progress)
    except BaseException:
        stop_workers()  # exit now, not once the workers have started for nothing
        raise
    summary = values["summary"]
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


def _run_steps(
    request: RunRequest, *, run_id: str | None, progress: Progress | None
) -> dict[str, Any]:
    """`run_in_memory`'s steps, in order: every step's value."""
    ctx = Context(request=request, progress=progress)
    values: dict[str, Any] = {}
    drawn: dict[str, dict[str, bytes]] = {}
    pending: list[Any] = []  # writes (futures) and drawings (`_DrawnFiles`) to await
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="custseg-writer") as writer:
        for step in STEPS:
            if step is STEPS[-1]:
                for done in pending:
                    done.result()
            if step.name == OVERLAPPED[0]:
                found, drawn = _compute_beside_imports(ctx, values)
                values.update(found)
            elif step.name not in OVERLAPPED:
                inputs = {n: values[n] if n in values else DERIVED[n](values) for n in step.needs}
                values[step.name] = step.compute(ctx, **inputs)
            if step.name == "table":  # worker start-up overlaps preprocessing
                start_workers(rows=values["table"].n_rows_read)
            if step.name == CREATE_RUN_AFTER:
                del values["table"]
                run = ctx.store.create_run(request, run_id=run_id)
                ctx = Context(request=request, run=run, record=run.record(), progress=progress)
            if step.write is not None:
                extra = {n: values[n] for n in step.write_needs}
                pending.append(writer.submit(step.write, ctx, values[step.name], **extra))
            if step.name in drawn:
                pending.append(writer.submit(write_drawn, ctx, drawn.pop(step.name)))
            elif step.draw is not None:
                extra = {n: values[n] for n in step.draw_needs}
                pending.append(_draw_apart(step, ctx, values[step.name], extra, writer, pending))
            if os.environ.get(FAULT_AFTER) == step.name:
                _die_after(pending)
    return values


def run_pipeline(
    config: PipelineConfig,
    *,
    input_path: str,
    out: str,
    test_path: str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """`run_in_memory` from keyword arguments (the library's one-call entry point);
    `options` are further `RunRequest` options (e.g. `force_promote=True`)."""
    request = RunRequest(input_path=str(input_path), test_path=test_path and str(test_path),
                         artifacts_root=str(out), config=config, **options)  # fmt: skip
    return run_in_memory(request, run_id=run_id, progress=progress)


__all__ = [
    "STEPS",
    "Context",
    "Fitted",
    "Profile",
    "Segments",
    "Step",
    "SweepPlan",
    "run_in_memory",
    "run_pipeline",
    "score_customers",
]
