"""The pipeline as four stages over a run directory, shared by the CLI and the Airflow DAG.

Each stage reads what the previous one wrote into `OUT/runs/<run_id>/` and returns a small
JSON-ready dict, so Airflow tasks hand each other paths, never data. `run_pipeline` runs
the same steps in one process for the CLI, handing the table and features over in memory
(`_load_input`, `_prepare`, `_sweep`, `_fit`: the stages' cores); both produce the same
artifacts for the same input and seed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import logging
import platform
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from custseg import __version__, artifacts, storage
from custseg.config import PipelineConfig
from custseg.errors import InputError
from custseg.sweep import Progress, start_workers

if TYPE_CHECKING:
    from custseg.io import CustomerTable
    from custseg.preprocess import PreparedData

log = logging.getLogger(__name__)

WORK = "work"


def _work(run_dir: str, name: str) -> str:
    return storage.join(run_dir, WORK, name)


def _config(run_dir: str) -> tuple[PipelineConfig, dict[str, Any]]:
    state = artifacts.read_json(_work(run_dir, "run.json"))
    return PipelineConfig.from_dict(state["config"]), state


def start_run(
    config: PipelineConfig,
    *,
    input_path: str,
    out: str,
    test_path: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Create the run directory and record the run's config and inputs in it."""
    config.validate()
    run_id = artifacts.safe_run_id(run_id) if run_id else artifacts.new_run_id()
    run_dir = artifacts.create_run_dir(out, run_id)
    storage.makedirs(storage.join(run_dir, WORK))
    state = {
        "run_id": run_id,
        "run_dir": run_dir,
        "out": str(out),
        "input": str(input_path),
        "test": str(test_path) if test_path else None,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
    }
    artifacts.write_json(_work(run_dir, "run.json"), state)
    log.info("run %s started in %s", run_id, run_dir)
    return {"run_id": run_id, "run_dir": run_dir}


def load_stage(run_dir: str) -> dict[str, Any]:
    """Load and validate the input table; write it to `work/customers.parquet`."""
    from custseg.io import save_table

    table = _load_input(run_dir)
    save_table(table, _work(run_dir, "customers.parquet"))
    return {
        "run_dir": run_dir,
        "n_rows_read": table.n_rows_read,
        "features": list(table.features),
        "id_column": table.id_column,
        "file_format": table.file_format,
    }


def _load_input(run_dir: str) -> CustomerTable:
    """The run's input table, loaded and validated (the test file too, if the run has one)."""
    from custseg.io import load_customers

    config, state = _config(run_dir)
    table = load_customers(state["input"], features=config.features)
    if state.get("test"):  # fail before the sweep, not after it, if the test file is unusable
        load_customers(state["test"], features=table.features, needed_by="the model of this run")
    log.info("load: %d rows, features %s, id column %s", table.n_rows_read, list(table.features),
             table.id_column)  # fmt: skip
    return table


def preprocess_stage(run_dir: str) -> dict[str, Any]:
    """Drop and count unusable rows; write `work/features.parquet` and `work/preprocess.json`."""
    from custseg.io import read_table, write_parquet

    data, info = _prepare(run_dir, read_table(_work(run_dir, "customers.parquet")))
    write_parquet(data.to_frame(), _work(run_dir, "features.parquet"))
    return info


def _prepare(run_dir: str, table: CustomerTable) -> tuple[PreparedData, dict[str, Any]]:
    """The cleaned rows of a loaded table, and their summary (written to `work/preprocess.json`)."""
    from custseg.preprocess import prepare_features

    config, _ = _config(run_dir)
    data = prepare_features(table, distinct_cap=config.k_max)
    data = dataclasses.replace(data, X=_by_column(data.X))
    info = {
        "run_dir": run_dir,
        "features": list(data.features),
        "id_column": data.id_column,
        "n_rows_read": data.n_rows_read,
        "n_rows_used": data.n_rows_used,
        "n_rows_dropped": data.dropped,
        "n_distinct": data.n_distinct,
        "feature_min": [float(v) for v in data.X.min(axis=0)],
        "feature_max": [float(v) for v in data.X.max(axis=0)],
        "data_sha256": table.sha256,
        "warnings": list(data.warnings),
    }
    artifacts.write_json(_work(run_dir, "preprocess.json"), info)
    return data, info


def _preprocess_info(run_dir: str) -> dict[str, Any]:
    """The summary `_prepare` wrote: features, id column, row counts, ranges, data hash."""
    return artifacts.read_json(_work(run_dir, "preprocess.json"))


def _features(
    run_dir: str, info: dict[str, Any], *, with_ids: bool = True
) -> tuple[np.ndarray, Any]:
    """The cleaned features (float64, column-major) and, if asked, the ids (Arrow or None)."""
    from custseg.io import read_parquet

    feats = list(info["features"])
    idc = info["id_column"] if with_ids else None
    arrow = read_parquet(_work(run_dir, "features.parquet"), columns=feats + ([idc] if idc else []))
    # (features, rows) stacked and transposed: column-major in one copy
    X = _by_column(np.asarray([arrow.column(f).to_numpy() for f in feats], dtype=np.float64).T)
    ids = arrow.column(idc) if idc else None
    return X, ids


def _by_column(X: np.ndarray) -> np.ndarray:
    """`X` as float64 in column-major order: per-feature reductions over millions of rows
    (min, max, quantiles, the scaler's fit) are then 10-50x faster than on row-major data."""
    return np.asfortranarray(X, dtype=np.float64)


def _scaler(config: PipelineConfig, X: np.ndarray, features: list[str]) -> Any:
    """The final model's scaler, fit on all rows (named columns), or `passthrough`."""
    from custseg.preprocess import make_scaler

    step = make_scaler(config.scaler)
    return step if step == "passthrough" else step.fit(_frame(X, features))


def _frame(X: np.ndarray, features: list[str]) -> pd.DataFrame:
    return pd.DataFrame(X, columns=features, copy=False)


def _sweep_sample(
    config: PipelineConfig, X: np.ndarray, features: list[str], scaler: Any
) -> tuple[np.ndarray, int]:
    """The scaled rows the sweep and the selection criteria use, and how many they are.

    `scaler` is fit on all rows (as in the final model); the sample is drawn from
    (seed, row count) only, so every mapped sweep batch and the fit stage see the same rows.
    """
    from custseg.sweep import auto_sample_size, sample_rows

    size = config.sample_size or auto_sample_size(len(X), k_max=config.k_max, n_features=X.shape[1])
    rows = sample_rows(len(X), size=size, seed=config.seed)
    part = X if rows is None else X[rows]
    Xs = part if scaler == "passthrough" else scaler.transform(_frame(part, features))
    return np.ascontiguousarray(Xs, dtype=np.float64), len(part)


def _planned_ks(run_dir: str) -> list[int]:
    """The ks this run sweeps, decided once (k_max clamped, warned) and kept in `work/plan.json`.

    Later stages read the recorded plan instead of re-deriving it, so the clamp is logged once.
    """
    from custseg.sweep import k_range

    path = _work(run_dir, "plan.json")
    if storage.exists(path):
        return [int(k) for k in artifacts.read_json(path)["ks"]]
    config, _ = _config(run_dir)
    info = _preprocess_info(run_dir)
    ks = k_range(k_min=config.k_min, k_max=config.k_max, n_distinct=info["n_distinct"])
    artifacts.write_json(path, {"ks": ks})
    return ks


def plan_sweep(run_dir: str, *, batches: int = 1) -> list[list[int]]:
    """The ks to sweep (k_max clamped to the distinct points), split into `batches` lists."""
    ks = _planned_ks(run_dir)
    batches = max(1, min(int(batches), len(ks)))
    return [[int(k) for k in part] for part in np.array_split(ks, batches)]


def sweep_stage(
    run_dir: str, ks: list[int] | None = None, *, progress: Progress | None = None
) -> list[dict[str, Any]]:
    """SSE for each k of `ks` (default: the whole planned range) as `{"k", "sse"}` dicts."""
    config, _ = _config(run_dir)
    info = _preprocess_info(run_dir)
    start_workers(rows=info["n_rows_used"])  # its imports overlap reading the features
    X, _ = _features(run_dir, info, with_ids=False)
    feats = list(info["features"])
    Xs, _ = _sweep_sample(config, X, feats, _scaler(config, X, feats))
    return _sweep(run_dir, Xs, len(X), ks, progress=progress)


def _sweep(
    run_dir: str, Xs: np.ndarray, n_rows: int, ks: list[int] | None, *,
    progress: Progress | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """`sweep_stage`'s work on the scaled sample `Xs` (of a table of `n_rows` rows)."""
    from custseg.sweep import sweep_k

    config, _ = _config(run_dir)
    if ks is None:
        ks = _planned_ks(run_dir)
    log.info("sweep: %d ks on %d of %d rows", len(ks), len(Xs), n_rows)
    scorer = None
    if config.select == "auto":  # per-k criteria from the sweep's own fits
        from custseg.criteria import CriteriaScorer

        scorer = CriteriaScorer(Xs, seed=config.seed)
    result = sweep_k(Xs, ks, seed=config.seed, n_init=config.n_init, progress=progress,
                     scorer=scorer)  # fmt: skip
    return result.points()


def fit_stage(run_dir: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose k from the sweep, fit the final model at that k, write model and plots."""
    config, _ = _config(run_dir)
    info = _preprocess_info(run_dir)
    if config.select == "auto":  # the stability check's resamples run on workers
        start_workers(rows=info["n_rows_used"])
    X, ids = _features(run_dir, info)
    feats = list(info["features"])
    scaler = _scaler(config, X, feats)
    Xs, _ = _sweep_sample(config, X, feats, scaler)
    return _fit(run_dir, points, X=X, ids=ids, info=info, scaler=scaler, sample=Xs)


def _fit(
    run_dir: str,
    points: list[dict[str, Any]],
    *,
    X: np.ndarray,
    ids: Any,
    info: dict[str, Any],
    scaler: Any,
    sample: np.ndarray,
) -> dict[str, Any]:
    """`fit_stage`'s work on the cleaned rows `X` (ids, `preprocess.json` summary, fitted
    scaler and the scaled sweep sample given): choose k, fit, write the run's artifacts."""
    from sklearn.cluster import KMeans  # noqa: F401 - load OpenMP before limiting it
    from threadpoolctl import threadpool_limits

    from custseg.model import fit_segments, model_info, save_model
    from custseg.report import profile_segments, segments_png
    from custseg.select import choose_k
    from custseg.sweep import SweepResult, heartbeat, make_kmeans

    config, state = _config(run_dir)
    features = tuple(info["features"])
    n_sample = len(sample)
    sweep = SweepResult.from_points(points, n_rows=n_sample)
    expected = _planned_ks(run_dir)
    if list(sweep.ks) != expected:
        raise RuntimeError(f"sweep covered ks {list(sweep.ks)}, expected {expected}")
    selection = choose_k(sweep, method=config.select, X=sample, seed=config.seed)
    k = selection.chosen_k
    log.info("chose k=%d (%s): %s", k, selection.method, selection.reason)
    init = None
    if n_sample < len(X):
        # the sweep's own fit at k (same rows, same random state) seeds the full fit
        with threadpool_limits(limits=1):
            init = (
                make_kmeans(k, seed=config.seed, n_init=config.n_init).fit(sample).cluster_centers_
            )
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="custseg-output") as side:
        # the sweep's plots need no final model: drawn while K-Means runs (it releases the GIL)
        sweep_plots = side.submit(_sweep_artifacts, sweep, selection)
        with heartbeat(f"final fit: k={k} on {len(X)} rows"):
            model = fit_segments(X, features, k=k, scaler=scaler, seed=config.seed,
                                 n_init=config.n_init, init=init)  # fmt: skip
        alignment = _align_to_previous(state["out"], model)
        # the model keeps centers, not one label per training row (40 MB at 10M rows):
        # the labels are written to assignments.parquet
        labels = model[-1].labels_
        del model[-1].labels_
        save_model(model, storage.join(run_dir, artifacts.MODEL_FILE))
        written = side.submit(_write_assignments, run_dir, labels, ids, info["id_column"])
        centroids = model_info(model).centroids
        profile = profile_segments(X, labels, centroids, features)
        storage.write_bytes(
            storage.join(run_dir, "profile.csv"), profile.to_csv(index=False).encode()
        )
        for name, png in sweep_plots.result().items():  # before the next plot: pyplot is global
            storage.write_bytes(storage.join(run_dir, name), png)
        storage.write_bytes(
            storage.join(run_dir, "segments.png"),
            segments_png(X, labels, centroids, features, list(profile["label"]), seed=config.seed),
        )
        written.result()
    train = {
        "run_dir": run_dir,
        "chosen_k": k,
        "selection": selection.to_dict(),
        "sse": {str(kk): v for kk, v in zip(sweep.ks, sweep.sse, strict=True)},
        "k_range": [sweep.ks[0], sweep.ks[-1]],
        "final_sse": float(model[-1].inertia_),
        "final_n_iter": int(model[-1].n_iter_),
        "sweep_seconds": round(sweep.seconds, 3),
        "sample_size": n_sample,
        "n_rows_used": len(X),
        "segment_alignment": alignment,
    }
    artifacts.write_json(_work(run_dir, "train.json"), train)
    return {"run_dir": run_dir, "chosen_k": k, "reason": selection.reason}


def _sweep_artifacts(sweep: Any, selection: Any) -> dict[str, bytes]:
    """`sse.csv`, `elbow.png` and (select=auto) `selection.png` contents, from the sweep alone."""
    from custseg.report import elbow_png, selection_png

    sse_csv = pd.DataFrame({"k": sweep.ks, "sse": sweep.sse}).to_csv(
        index=False, float_format="%.10g"
    )
    out = {
        "sse.csv": sse_csv.encode(),
        "elbow.png": elbow_png(
            list(sweep.ks),
            list(sweep.sse),
            chosen_k=selection.chosen_k,
            knee=selection.details.get("knee"),
        ),  # fmt: skip
    }
    if selection.method == "auto":
        out["selection.png"] = selection_png(selection.to_dict())
    return out


def _write_assignments(run_dir: str, labels: np.ndarray, ids: Any, id_column: str | None) -> None:
    """`assignments.parquet`: each training customer's segment (with its id, when there is one)."""
    from custseg.io import write_parquet

    assignments = pd.DataFrame({"segment": labels.astype(np.int64)})
    if id_column:
        ids = ids.array if isinstance(ids, pd.Series) else pd.arrays.ArrowExtensionArray(ids)
        assignments.insert(0, id_column, ids)
    write_parquet(assignments, storage.join(run_dir, "assignments.parquet"))
    log.info("wrote segment assignments of %d customers", len(assignments))


def _align_to_previous(out: str, model: Any) -> dict[str, Any] | None:
    """Renumber `model`'s segments so those matching the promoted model's keep their ids."""
    from custseg.model import align_segments, load_model, model_info, renumber_segments

    latest = artifacts.read_latest(out)
    if latest is None:
        return None
    previous = str(latest["run_dir"])
    try:
        old = model_info(load_model(storage.join(previous, artifacts.MODEL_FILE)))
    except (InputError, OSError, ValueError) as exc:
        log.warning("segment ids not aligned: previous model %s unreadable (%s)", previous, exc)
        return {"previous_run_dir": previous, "aligned": False, "why": str(exc)}
    new = model_info(model)
    if old.features != new.features:
        why = f"features differ: {list(old.features)} before, {list(new.features)} now"
        return {"previous_run_dir": previous, "aligned": False, "why": why}
    alignment = align_segments(new.centroids, old.centroids)
    renumber_segments(model[-1], alignment.order)
    log.info("segment ids aligned with %s: new cluster i -> id %s", previous, alignment.order)
    return {"previous_run_dir": previous, "previous_k": old.k, "aligned": True,
            **alignment.to_dict()}  # fmt: skip


def train_stage(run_dir: str, *, progress: Progress | None = None) -> dict[str, Any]:
    """Sweep the whole k range, then choose k and fit the final model (one task's work)."""
    return fit_stage(run_dir, sweep_stage(run_dir, progress=progress))


def score_customers(
    run_dir: str, input_path: str, *, model: Any = None, needed_by: str | None = None
) -> pd.DataFrame:
    """Segments of the customers in `input_path` by the run's model (loaded if not given).

    Values far outside the run's training range are flagged in `out_of_range`.
    """
    from custseg.io import load_customers
    from custseg.model import load_model, model_info, predict_segments
    from custseg.sweep import heartbeat

    if model is None:
        model = load_model(storage.join(run_dir, artifacts.MODEL_FILE))
    info = _preprocess_info(run_dir)
    table = load_customers(input_path, features=model_info(model).features,
                           needed_by=needed_by or f"the model in {run_dir}")  # fmt: skip
    with heartbeat(f"predict: {table.n_rows_read} customers"):
        return predict_segments(model, table, train_min=info["feature_min"],
                                train_max=info["feature_max"])  # fmt: skip


def finish_stage(run_dir: str) -> dict[str, Any]:
    """Reload the saved model, predict the test customers, write metrics and report, promote.

    `latest.json` is replaced only here, as the very last step, so a run that fails
    anywhere before leaves the previous promotion untouched.
    """
    import sklearn

    from custseg.model import load_model, model_info
    from custseg.report import report_html

    config, state = _config(run_dir)
    info = _preprocess_info(run_dir)
    train = artifacts.read_json(_work(run_dir, "train.json"))
    model = load_model(storage.join(run_dir, artifacts.MODEL_FILE))
    if model_info(model).k != train["chosen_k"]:
        raise RuntimeError(f"saved model has k={model_info(model).k}, chosen k={train['chosen_k']}")
    warnings = list(info["warnings"])
    predictions = None
    if state.get("test"):
        pred = score_customers(run_dir, state["test"], model=model,
                               needed_by="the model of this run")  # fmt: skip
        storage.write_bytes(storage.join(run_dir, "predictions.csv"),
                            pred.to_csv(index=False).encode())  # fmt: skip
        n_far = int((pred["out_of_range"] != "").sum())
        if n_far:
            warnings.append(
                f"{state['test']}: {n_far} test customer(s) lie far outside the training range "
                "(column out_of_range of predictions.csv); their segments are extrapolated"
            )
        n_missing = int(pred["segment"].isna().sum())
        if n_missing:
            warnings.append(f"{state['test']}: {n_missing} test customer(s) miss a feature; "
                            "they get no segment")  # fmt: skip
        predictions = {
            "path": storage.join(run_dir, "predictions.csv"),
            "n_rows": len(pred),
            "n_out_of_range": n_far,
            "segment_counts": {
                str(k): int(v) for k, v in pred["segment"].value_counts().sort_index().items()
            },
        }
    profile = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(run_dir, "profile.csv"))))
    metrics = {
        "run_id": state["run_id"],
        "created_at": state["created_at"],
        "input": state["input"],
        "test": state.get("test"),
        "chosen_k": train["chosen_k"],
        "k_range": train["k_range"],
        "sse": train["sse"],
        "final_sse": train["final_sse"],
        "sample_size": train["sample_size"],
        "selection": train["selection"],
        "segment_alignment": train.get("segment_alignment"),
        "features": info["features"],
        "scaler": config.scaler,
        "seed": config.seed,
        "n_init": config.n_init,
        "n_rows_read": info["n_rows_read"],
        "n_rows_used": info["n_rows_used"],
        "n_rows_dropped": info["n_rows_dropped"],
        "data_sha256": info["data_sha256"],
        "segments": profile.to_dict(orient="records"),
        "predictions": predictions,
        "warnings": warnings,
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "custseg": __version__,
        },
    }
    images = {
        name: storage.read_bytes(storage.join(run_dir, name))
        for name in ("elbow.png", "segments.png", "selection.png")
        if storage.exists(storage.join(run_dir, name))
    }
    html = report_html(metrics, profile, images)
    storage.write_bytes(storage.join(run_dir, "report.html"), html.encode())
    artifacts.write_json(storage.join(run_dir, "metrics.json"), metrics, atomic=True)
    artifacts.promote(state["out"], run_id=state["run_id"], run_dir=run_dir)
    return {
        "run_id": state["run_id"],
        "run_dir": run_dir,
        "chosen_k": train["chosen_k"],
        "reason": train["selection"]["reason"],
        "n_rows_used": info["n_rows_used"],
        "latest": storage.join(state["out"], artifacts.LATEST),
    }


LATER_STACK: tuple[str, ...] = ("kneed", "skops.io", "matplotlib.pyplot")
"""Imported while the sweep's workers run: the choice of k, saving and plotting need them."""


def _import_later_stack() -> None:
    """Import `LATER_STACK` on a thread while this process waits for the sweep (about half a
    second off the critical path). It is started once the main thread has imported what it
    needs itself, so the main thread never holds a module lock that this thread waits for."""
    import importlib

    import matplotlib

    matplotlib.use("Agg")
    for name in LATER_STACK:
        try:
            importlib.import_module(name)
        except ImportError:  # pragma: no cover - reported where the module is used
            return


def run_pipeline(
    config: PipelineConfig,
    *,
    input_path: str,
    out: str,
    test_path: str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run all stages in one process (what the CLI does); returns the finish summary.

    The stages hand each other the loaded table and the cleaned, scaled rows in memory
    instead of through `work/*.parquet` (the Airflow tasks' hand-off): same artifacts,
    without writing and re-reading the table twice.
    """
    start = time.perf_counter()
    run = start_run(config, input_path=input_path, out=out, test_path=test_path, run_id=run_id)
    run_dir = run["run_dir"]
    table = _load_input(run_dir)
    start_workers(rows=table.n_rows_read)  # its imports overlap preprocessing: the pool starts warm
    data, info = _prepare(run_dir, table)
    del table
    feats = list(info["features"])
    scaler = _scaler(config, data.X, feats)
    threading.Thread(target=_import_later_stack, name="custseg-imports", daemon=True).start()
    sample, _ = _sweep_sample(config, data.X, feats, scaler)
    points = _sweep(run_dir, sample, len(data.X), None, progress=progress)
    _fit(run_dir, points, X=data.X, ids=data.ids, info=info, scaler=scaler, sample=sample)
    del data
    summary = finish_stage(run_dir)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    return summary


__all__ = [
    "InputError",
    "start_run",
    "load_stage",
    "preprocess_stage",
    "plan_sweep",
    "sweep_stage",
    "fit_stage",
    "train_stage",
    "score_customers",
    "finish_stage",
    "run_pipeline",
]
