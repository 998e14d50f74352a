"""The pipeline as four stages over a run directory, shared by the CLI and the Airflow DAG.

Each stage reads what the previous one wrote into `OUT/runs/<run_id>/` and returns a small
JSON-ready dict, so Airflow tasks hand each other paths, never data. `run_pipeline` runs
the four in order for the CLI; both produce the same artifacts for the same input and seed.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import platform
import time
from typing import Any

import numpy as np
import pandas as pd

from custseg import __version__, artifacts, storage
from custseg.config import PipelineConfig
from custseg.errors import InputError
from custseg.sweep import Progress

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
    from custseg.io import load_customers, save_table

    config, state = _config(run_dir)
    table = load_customers(state["input"], features=config.features)
    if state.get("test"):  # fail before the sweep, not after it, if the test file is unusable
        load_customers(state["test"], features=table.features, needed_by="the model of this run")
    save_table(table, _work(run_dir, "customers.parquet"))
    result = {
        "run_dir": run_dir,
        "n_rows_read": table.n_rows_read,
        "features": list(table.features),
        "id_column": table.id_column,
        "file_format": table.file_format,
    }
    log.info("load: %d rows, features %s, id column %s", table.n_rows_read, list(table.features),
             table.id_column)  # fmt: skip
    return result


def preprocess_stage(run_dir: str) -> dict[str, Any]:
    """Drop and count unusable rows; write `work/features.parquet` and `work/preprocess.json`."""
    from custseg.io import read_table, write_parquet
    from custseg.preprocess import prepare_features

    config, _ = _config(run_dir)
    table = read_table(_work(run_dir, "customers.parquet"))
    data = prepare_features(table, distinct_cap=config.k_max)
    write_parquet(data.to_frame(), _work(run_dir, "features.parquet"))
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
        "warnings": list(data.warnings),
    }
    artifacts.write_json(_work(run_dir, "preprocess.json"), info)
    return info


def _features(run_dir: str, *, with_ids: bool = True) -> tuple[np.ndarray, Any, dict[str, Any]]:
    """The cleaned features (float64 rows) and, if asked, the ids (an Arrow array or None)."""
    from custseg.io import read_parquet

    info = artifacts.read_json(_work(run_dir, "preprocess.json"))
    feats = list(info["features"])
    idc = info["id_column"] if with_ids else None
    arrow = read_parquet(_work(run_dir, "features.parquet"), columns=feats + ([idc] if idc else []))
    X = np.column_stack([arrow.column(f).to_numpy() for f in feats]).astype(np.float64, copy=False)
    ids = arrow.column(idc) if idc else None
    return X, ids, info


def _sweep_sample(config: PipelineConfig, X: np.ndarray) -> tuple[np.ndarray, int]:
    """The scaled rows the sweep and the selection criteria use, and how many they are.

    The scaler is fit on all rows (as in the final model); the sample is drawn from
    (seed, row count) only, so every mapped sweep batch and the fit stage see the same rows.
    """
    from custseg.preprocess import make_scaler
    from custseg.sweep import auto_sample_size, sample_rows

    size = config.sample_size or auto_sample_size(len(X), k_max=config.k_max, n_features=X.shape[1])
    rows = sample_rows(len(X), size=size, seed=config.seed)
    part = X if rows is None else X[rows]
    step = make_scaler(config.scaler)
    Xs = part if step == "passthrough" else step.fit(X).transform(part)
    return Xs, len(part)


def _planned_ks(run_dir: str) -> list[int]:
    """The ks this run sweeps, decided once (k_max clamped, warned) and kept in `work/plan.json`.

    Later stages read the recorded plan instead of re-deriving it, so the clamp is logged once.
    """
    from custseg.sweep import k_range

    path = _work(run_dir, "plan.json")
    if storage.exists(path):
        return [int(k) for k in artifacts.read_json(path)["ks"]]
    config, _ = _config(run_dir)
    info = artifacts.read_json(_work(run_dir, "preprocess.json"))
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
    from custseg.sweep import sweep_k

    config, _ = _config(run_dir)
    if ks is None:
        ks = _planned_ks(run_dir)
    X, _, _ = _features(run_dir, with_ids=False)
    Xs, n_sample = _sweep_sample(config, X)
    log.info("sweep: %d ks on %d of %d rows", len(ks), n_sample, len(X))
    del X
    scorer = None
    if config.select == "auto":  # per-k criteria from the sweep's own fits
        from custseg.criteria import CriteriaScorer

        scorer = CriteriaScorer(Xs, seed=config.seed)
    result = sweep_k(Xs, ks, seed=config.seed, n_init=config.n_init, progress=progress,
                     scorer=scorer)  # fmt: skip
    return result.points()


def fit_stage(run_dir: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Choose k from the sweep, fit the final model at that k, write model and plots."""
    from sklearn.cluster import KMeans  # noqa: F401 - load OpenMP before limiting it
    from threadpoolctl import threadpool_limits

    from custseg.io import write_parquet
    from custseg.model import fit_segments, model_info, save_model
    from custseg.report import elbow_png, profile_segments, segments_png
    from custseg.select import choose_k
    from custseg.sweep import SweepResult, heartbeat, make_kmeans

    config, state = _config(run_dir)
    X, ids, info = _features(run_dir)
    Xs, n_sample = _sweep_sample(config, X)
    sweep = SweepResult.from_points(points, n_rows=n_sample)
    expected = _planned_ks(run_dir)
    if list(sweep.ks) != expected:
        raise RuntimeError(f"sweep covered ks {list(sweep.ks)}, expected {expected}")
    selection = choose_k(sweep, method=config.select, X=Xs, seed=config.seed)
    k = selection.chosen_k
    log.info("chose k=%d (%s): %s", k, selection.method, selection.reason)
    init = None
    if n_sample < len(X):
        # the sweep's own fit at k (same rows, same random state) seeds the full fit
        with threadpool_limits(limits=1):
            init = make_kmeans(k, seed=config.seed, n_init=config.n_init).fit(Xs).cluster_centers_
    del Xs
    with heartbeat(f"final fit: k={k} on {len(X)} rows"):
        model = fit_segments(
            X, tuple(info["features"]), k=k, scaler=config.scaler, seed=config.seed,
            n_init=config.n_init, init=init,
        )  # fmt: skip
    alignment = _align_to_previous(state["out"], model)
    save_model(model, storage.join(run_dir, artifacts.MODEL_FILE))
    labels = model[-1].labels_
    centroids = model_info(model).centroids
    profile = profile_segments(X, labels, centroids, tuple(info["features"]))
    storage.write_bytes(storage.join(run_dir, "profile.csv"), profile.to_csv(index=False).encode())
    sse_csv = pd.DataFrame({"k": sweep.ks, "sse": sweep.sse}).to_csv(
        index=False, float_format="%.10g"
    )
    storage.write_bytes(storage.join(run_dir, "sse.csv"), sse_csv.encode())
    storage.write_bytes(
        storage.join(run_dir, "elbow.png"),
        elbow_png(
            list(sweep.ks), list(sweep.sse), chosen_k=k, knee=selection.details.get("knee")
        ),  # fmt: skip
    )
    storage.write_bytes(
        storage.join(run_dir, "segments.png"),
        segments_png(
            X, labels, centroids, tuple(info["features"]), list(profile["label"]), seed=config.seed
        ),  # fmt: skip
    )
    if selection.method == "auto":
        from custseg.report import selection_png

        png = selection_png(selection.to_dict())
        storage.write_bytes(storage.join(run_dir, "selection.png"), png)
    assignments = pd.DataFrame({"segment": labels.astype(np.int64)})
    if ids is not None:
        assignments.insert(0, info["id_column"], pd.arrays.ArrowExtensionArray(ids))
    write_parquet(assignments, storage.join(run_dir, "assignments.parquet"))
    log.info("wrote segment assignments of %d customers", len(assignments))
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
    info = artifacts.read_json(_work(run_dir, "preprocess.json"))
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
    info = artifacts.read_json(_work(run_dir, "preprocess.json"))
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
        "data_sha256": _sha(run_dir),
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


def _sha(run_dir: str) -> str:
    from custseg.io import table_metadata

    return table_metadata(_work(run_dir, "customers.parquet"))["sha256"]


def run_pipeline(
    config: PipelineConfig,
    *,
    input_path: str,
    out: str,
    test_path: str | None = None,
    run_id: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run all stages in one process (what the CLI does); returns the finish summary."""
    start = time.perf_counter()
    run = start_run(config, input_path=input_path, out=out, test_path=test_path, run_id=run_id)
    run_dir = run["run_dir"]
    load_stage(run_dir)
    preprocess_stage(run_dir)
    train_stage(run_dir, progress=progress)
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
