"""The artifacts root and its run directories: every file name, every read and every write.

    OUT/latest.json              {"run_id": ..., "run_dir": <absolute path or URI>}
    OUT/runs/<run_id>/           one run: model.skops, metrics.json, report.html, ...
    OUT/runs/<run_id>/work/      the hand-off between Airflow tasks, and the run's record

`latest.json` names the promoted run by its absolute path (or URI), so it resolves from any
working directory. When that path does not exist (the root was moved or mounted elsewhere)
or is relative (written by custseg 0.1 from a relative `--out`), the run is looked up as
`runs/<run_id>` under the root that holds `latest.json`. Nothing outside this module spells
a file name.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from custseg import storage
from custseg.errors import InputError
from custseg.options import PipelineConfig, RunRequest
from custseg.sanitize import logger

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from custseg.io import CustomerTable
    from custseg.preprocess import PreparedData
    from custseg.sweep import SweepResult

log = logger(__name__)

LATEST = "latest.json"
RUNS = "runs"
FEATURES = "features"
WORK = "work"
MODEL = "model.skops"
METRICS = "metrics.json"
REPORT = "report.html"
PREDICTIONS = "predictions.csv"
PROFILE = "profile.csv"
ASSIGNMENTS = "assignments.parquet"
ASSIGNMENTS_CSV = "assignments.csv"
SSE = "sse.csv"
REFERENCE = "reference.json"
ELBOW_PNG = "elbow.png"
SELECTION_PNG = "selection.png"
SEGMENTS_PNG = "segments.png"
PLOTS = (ELBOW_PNG, SELECTION_PNG, SEGMENTS_PNG)
_RECORD = f"{WORK}/run.json"
_TABLE = f"{WORK}/customers.parquet"
_FEATURES = f"{WORK}/features.parquet"
_PREPARED = f"{WORK}/preprocess.json"
_PLAN = f"{WORK}/plan.json"
_SWEEP = f"{WORK}/sweep"
_SELECTION = f"{WORK}/selection.json"
_FIT = f"{WORK}/fit.json"
_FIT_MODEL = f"{WORK}/fit-model.skops"
_LABELS = f"{WORK}/labels.parquet"
_SEGMENTS = f"{WORK}/segments.json"
_DISTANCES = f"{WORK}/distances.json"
_PROFILE = f"{WORK}/profile.json"
_COLUMNS = f"{WORK}/columns.json"


def new_run_id(now: dt.datetime | None = None) -> str:
    """A sortable, unique run id: `20261128T204512Z-3fa9c1`."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def safe_run_id(run_id: str) -> str:
    """A run id usable as a directory name (Airflow's contain `:` and `+`)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).strip("._") or "run"


def json_bytes(obj: Any) -> bytes:
    """Stable, readable JSON (sorted keys, 2-space indent, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


@dataclass(frozen=True)
class Reference:
    """The promoted run a new run aligns its segment ids to, recorded when the run starts."""

    run_id: str
    run_dir: str


@dataclass(frozen=True)
class RunRecord:
    """What a run was asked to do, fixed when it starts (`work/run.json`)."""

    run_id: str
    created_at: str
    request: RunRequest
    reference: Reference | None
    origin: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        ref = None if self.reference is None else vars(self.reference)
        return {"run_id": self.run_id, "created_at": self.created_at,
                "request": self.request.to_dict(), "reference": ref,
                "origin": self.origin}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Read back what `to_dict` wrote."""
        req = dict(data["request"])
        config = PipelineConfig.from_dict(req.pop("config"))
        ref = data.get("reference")
        return cls(data["run_id"], data["created_at"], RunRequest(config=config, **req),
                   None if ref is None else Reference(**ref), data.get("origin"))  # fmt: skip


class RunDir:
    """One run's directory: typed reads and writes of its artifacts and hand-off files."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri, self.run_id = uri, run_id

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def path(self, name: str) -> str:
        """The URI of a file of this run (`name` is one of this module's constants)."""
        return storage.join(self.uri, *name.split("/"))

    def exists(self, name: str) -> bool:
        """Whether the run has that file."""
        return storage.exists(self.path(name))

    def read_json(self, name: str) -> Any:
        """A JSON file of this run."""
        return json.loads(storage.read_bytes(self.path(name)))

    def write_json(self, name: str, obj: Any, *, atomic: bool = False) -> None:
        """Write a JSON file; `atomic` for a file whose presence means "complete"."""
        write = storage.replace_atomic if atomic else storage.write_bytes
        write(self.path(name), json_bytes(obj))

    def write_bytes(self, name: str, data: bytes) -> None:
        """Write one artifact."""
        storage.write_bytes(self.path(name), data)

    def read_bytes(self, name: str) -> bytes:
        """One artifact's bytes."""
        return storage.read_bytes(self.path(name))

    # -- the run's record ------------------------------------------------------------------

    def record(self) -> RunRecord:
        """What the run was asked to do."""
        return RunRecord.from_dict(self.read_json(_RECORD))

    # -- hand-off between Airflow tasks (the in-memory runner never writes these) ----------

    def save_table(self, table: CustomerTable) -> None:
        """The loaded input table."""
        from custseg.io import save_table

        save_table(table, self.path(_TABLE))

    def load_table(self) -> CustomerTable:
        """The table `save_table` wrote."""
        from custseg.io import read_table

        return read_table(self.path(_TABLE))

    def save_prepared(self, data: PreparedData) -> None:
        """The cleaned rows (features and ids) and their summary."""
        from custseg.io import write_parquet

        write_parquet(data.to_frame(), self.path(_FEATURES))
        self.write_json(_PREPARED, data.summary())

    def load_prepared(self) -> PreparedData:
        """The cleaned rows `save_prepared` wrote, features column-major."""
        from custseg.io import read_parquet
        from custseg.preprocess import PreparedData

        info = self.read_json(_PREPARED)
        feats, idc = list(info["features"]), info["id_column"]
        arrow = read_parquet(self.path(_FEATURES))
        return PreparedData.from_columns(
            [arrow.column(f).to_numpy() for f in feats],
            ids=arrow.column(idc) if idc else None,
            summary=info,
        )

    def prepared_summary(self) -> dict[str, Any]:
        """The summary of the cleaned rows, without reading them."""
        return self.read_json(_PREPARED)

    def save_plan(self, plan: Any) -> None:
        """The planned sweep."""
        self.write_json(_PLAN, plan.to_dict())

    def load_plan(self) -> Any:
        """The planned sweep."""
        from custseg.pipeline import SweepPlan

        return SweepPlan.from_dict(self.read_json(_PLAN))

    def save_sweep(self, sweep: SweepResult) -> str:
        """One batch of the sweep (mapped tasks write one file each); returns its URI."""
        name = f"{_SWEEP}/k{sweep.ks[0]:03d}-{sweep.ks[-1]:03d}.json"
        self.write_json(name, {"n_rows": sweep.n_rows, "points": sweep.points()})
        return self.path(name)

    def load_sweep(self) -> SweepResult:
        """Every batch of the sweep, merged by k."""
        from custseg.sweep import SweepResult

        folder = self.path(_SWEEP)
        parts = [json.loads(storage.read_bytes(u)) for u in storage.list_files(folder, ".json")]
        if not parts:
            raise RuntimeError(f"{folder}: no sweep results")
        points = [p for part in parts for p in part["points"]]
        return SweepResult.from_points(points, n_rows=int(parts[0]["n_rows"]))

    def save_selection(self, selection: Any) -> None:
        """The chosen k, why, and the evidence."""
        self.write_json(_SELECTION, selection.to_dict())

    def load_selection(self) -> Any:
        """What `save_selection` wrote."""
        from custseg.select import Selection

        return Selection.from_dict(self.read_json(_SELECTION))

    def save_fit(self, fitted: Any) -> None:
        """The chosen k and the final model before its ids are aligned."""
        from custseg.model import save_model

        save_model(fitted.model, self.path(_FIT_MODEL))
        self._save_labels(_LABELS, fitted.labels, None, None)
        self.write_json(_FIT, fitted.to_dict())

    def load_fit(self) -> Any:
        """What `save_fit` wrote."""
        from custseg.io import read_parquet
        from custseg.model import load_model
        from custseg.pipeline import Fitted

        labels = read_parquet(self.path(_LABELS)).column("segment").to_numpy()
        return Fitted.from_dict(self.read_json(_FIT), model=load_model(self.path(_FIT_MODEL)),
                                labels=labels)  # fmt: skip

    # -- artifacts -------------------------------------------------------------------------

    def _save_labels(
        self, name: str, labels: np.ndarray, ids: Any, id_column: str | None
    ) -> pd.DataFrame:
        import numpy as np
        import pandas as pd

        from custseg.io import write_parquet

        frame = pd.DataFrame({"segment": np.asarray(labels).astype(np.int64)})
        if id_column:
            ids = ids.array if isinstance(ids, pd.Series) else pd.arrays.ArrowExtensionArray(ids)
            frame.insert(0, id_column, ids)
        write_parquet(frame, self.path(name))
        return frame

    def load_labels(self) -> np.ndarray:
        """Each training customer's segment, from `assignments.parquet`."""
        from custseg.io import read_parquet

        return read_parquet(self.path(ASSIGNMENTS), columns=["segment"]).column(0).to_numpy()

    def load_assignments(self) -> pd.DataFrame:
        """`assignments.parquet` as a frame: the id column (if any) and `segment`."""
        from custseg.io import read_parquet

        return read_parquet(self.path(ASSIGNMENTS)).to_pandas()

    def save_assignments(self, labels: np.ndarray, ids: Any, id_column: str | None) -> None:
        """`assignments.parquet` and, for spreadsheets, `assignments.csv`: each training
        customer's segment, with its id if any."""
        from custseg.sanitize import csv_bytes_arrow

        frame = self._save_labels(ASSIGNMENTS, labels, ids, id_column)
        self.write_bytes(ASSIGNMENTS_CSV, csv_bytes_arrow(frame))
        log.info("wrote segment assignments of %d customers", len(labels))

    def save_model(self, model: Any) -> str:
        """`model.skops`: the scaler and K-Means, with the final segment ids; returns its
        SHA-256."""
        from custseg.model import save_model

        return save_model(model, self.path(MODEL))

    def load_model(self, *, verify: bool = False) -> Any:
        """The run's model, through the trusted-type loader; with `verify`, refused unless
        it is the file the run recorded (`model_sha256` of metrics.json)."""
        from custseg.model import load_model

        sha = self.metrics().get("model_sha256") if verify else None
        return load_model(self.path(MODEL), sha256=sha)

    def model_sha256(self) -> str:
        """The SHA-256 of the run's model file."""
        import hashlib

        return hashlib.sha256(self.read_bytes(MODEL)).hexdigest()

    def save_profile(self, profile: pd.DataFrame) -> None:
        """`profile.csv` for people (one row per segment, its customers' means; see
        `sanitize.csv_bytes`) and the whole table for the next step (`work/profile.json`)."""
        from custseg.report import for_people
        from custseg.sanitize import csv_bytes

        self.write_json(_PROFILE, {"columns": list(profile.columns),
                                   "rows": profile.to_dict(orient="records")})  # fmt: skip
        self.write_bytes(PROFILE, csv_bytes(for_people(profile)))

    def load_profile(self) -> pd.DataFrame:
        """The segment table `save_profile` wrote."""
        import pandas as pd

        data = self.read_json(_PROFILE)
        return pd.DataFrame(data["rows"], columns=data["columns"])

    def save_column_profiles(self, rows: list[dict[str, Any]]) -> None:
        """Every column by segment (`work/columns.json`), for `metrics.json`."""
        self.write_json(_COLUMNS, rows)

    def column_profiles(self) -> list[dict[str, Any]]:
        """What `save_column_profiles` wrote ([] for runs made before it existed)."""
        return list(self.read_json(_COLUMNS)) if self.exists(_COLUMNS) else []

    def save_segment_distances(self, distances: dict[str, Any]) -> None:
        """Each segment's distance percentiles (`work/distances.json`)."""
        self.write_json(_DISTANCES, distances)

    def segment_distances(self) -> dict[str, Any]:
        """What `save_segment_distances` wrote."""
        return self.read_json(_DISTANCES)

    def save_reference(self, reference: dict[str, Any]) -> None:
        """`reference.json`: what drift is measured against (see `custseg.drift`)."""
        self.write_json(REFERENCE, reference)

    def reference(self) -> dict[str, Any]:
        """The run's drift reference; an `InputError` for runs trained before it existed."""
        if not self.exists(REFERENCE):
            raise InputError(f"{self.uri}: no {REFERENCE} (trained by an older custseg); "
                             "retrain with `custseg run` to measure drift")  # fmt: skip
        return self.read_json(REFERENCE)

    def save_segments_info(self, info: dict[str, Any]) -> None:
        """What the alignment step decided (`work/segments.json`)."""
        self.write_json(_SEGMENTS, info)

    def segments_info(self) -> dict[str, Any]:
        """What `save_segments_info` wrote."""
        return self.read_json(_SEGMENTS)

    def fit_info(self) -> dict[str, Any]:
        """The chosen k, selection and final fit figures (`work/fit.json`)."""
        return self.read_json(_FIT)

    def images(self) -> dict[str, bytes]:
        """The run's plots by file name (those it has)."""
        return {n: self.read_bytes(n) for n in PLOTS if self.exists(n)}

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        """`metrics.json`, written last and atomically once every other file of the run is
        on disk: its presence means "complete"."""
        storage.fsync_tree(self.uri)
        self.write_json(METRICS, metrics, atomic=True)

    def metrics(self) -> dict[str, Any]:
        """The run's `metrics.json`."""
        return self.read_json(METRICS)

    def missing(self) -> list[str]:
        """The files a complete run has and this one lacks."""
        return [n for n in (MODEL, METRICS) if not self.exists(n)]

    def check_complete(self) -> RunDir:
        """This run if it finished, else an `InputError` saying it did not."""
        missing = self.missing()
        if missing:
            raise InputError(
                f"{self.uri}: incomplete run (no {' and no '.join(missing)}): it failed or was "
                "stopped before it finished; use a complete run or rerun `custseg run`"
            )
        return self


class ArtifactStore:
    """An artifacts root: its run directories and the promotion pointer `latest.json`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        text = os.fspath(root)
        if "\x00" in text:
            raise InputError("the artifacts root contains a NUL byte: give a plain path")
        if storage.is_remote(text):
            self.root = text.rstrip("/")
        else:
            path = storage.local_path(text).absolute()
            if path.exists() and not path.is_dir():
                raise InputError(f"artifacts root {path}: is a file, not a directory; pass a "
                                 "directory (--out, artifacts_root)")  # fmt: skip
            self.root = str(path)

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    @property
    def latest_uri(self) -> str:
        """Where the promotion pointer lives."""
        return storage.join(self.root, LATEST)

    def customer_table(self, key: str) -> str:
        """Where the customer table built from an order log is kept
        (`OUT/features/<key>.parquet`, its summary beside it), shared by every run on it."""
        return storage.join(self.root, FEATURES, key + ".parquet")

    def has_customer_table(self, table_uri: str) -> bool:
        """Whether that table and its summary were both written."""
        return storage.exists(table_uri) and storage.exists(_summary_uri(table_uri))

    def save_customer_table(self, table_uri: str, data: bytes, summary: dict[str, Any]) -> None:
        """Write the table and its summary, each atomically; the table last, so that its
        presence means both are complete."""
        storage.replace_atomic(_summary_uri(table_uri), json_bytes(summary))
        storage.replace_atomic(table_uri, data)

    def run(self, run_id: str) -> RunDir:
        """The run directory of `run_id` (it may not exist)."""
        safe = safe_run_id(run_id)
        return RunDir(storage.join(self.root, RUNS, safe), safe)

    def create_run(
        self, request: RunRequest, *, run_id: str | None = None,
        origin: dict[str, str] | None = None,
    ) -> RunDir:  # fmt: skip
        """A new run directory holding its record; a reused run id is refused on every
        scheme. The promoted run at this moment is recorded as the run's alignment reference;
        `origin` says who started it (e.g. the Airflow DAG and run ids)."""
        run = self.run(run_id or new_run_id())
        exists = InputError(f"run directory {run.uri} exists already; use a new run id")
        if storage.is_remote(run.uri):
            if storage.exists(run.uri):
                raise exists
        else:
            path = storage.local_path(run.uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
            except FileExistsError:
                raise exists from None
        latest = self.latest()
        reference = None if latest is None else Reference(latest.run_id, latest.uri)
        created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        record = RunRecord(run.run_id, created, request, reference, origin)
        run.write_json(_RECORD, record.to_dict())
        log.info("run %s started in %s (aligns to %s)", run.run_id, run.uri,
                 reference.run_id if reference else "nothing")  # fmt: skip
        return run

    def _pointer(self, text: str, run_id: str) -> str:
        """The run directory a `latest.json` names, in any form it was ever written in."""
        absolute = storage.is_remote(text) or text.startswith("file://") or os.path.isabs(text)
        if absolute and storage.exists(text):
            return text
        return storage.join(self.root, RUNS, run_id)

    def latest(self) -> RunDir | None:
        """The promoted run, or None if none was promoted yet."""
        if not storage.exists(self.latest_uri):
            return None
        try:
            data = json.loads(storage.read_bytes(self.latest_uri))
            text = str(data["run_dir"])
            run_id = str(data.get("run_id") or text.rstrip("/").rsplit("/", 1)[-1])
            uri = self._pointer(text, run_id)
        except (ValueError, KeyError, TypeError):
            raise InputError(
                f"{self.latest_uri}: not a valid latest.json (JSON with run_id and run_dir); "
                "delete it and rerun `custseg run`, or pass --model RUN_DIR"
            ) from None
        return RunDir(uri, run_id)

    def promote(self, run: RunDir) -> str:
        """Point `latest.json` at a complete run, atomically; returns its URI."""
        if run.missing():
            raise RuntimeError(f"refusing to promote incomplete run {run.uri}: no {run.missing()}")
        pointer = {"run_id": run.run_id, "run_dir": run.uri}
        storage.replace_atomic(self.latest_uri, json_bytes(pointer))
        log.info("promoted run %s as %s", run.run_id, self.latest_uri)
        return self.latest_uri


@dataclass(frozen=True)
class RunInfo:
    """One run directory of an artifacts root, as `custseg runs` and `gc` see it."""

    run: RunDir
    complete: bool
    promoted: bool
    age_seconds: float


def list_runs(store: ArtifactStore) -> list[RunInfo]:
    """Every run directory of a local or remote artifacts root, oldest first."""
    import time

    folder = storage.join(store.root, RUNS)
    latest = store.latest()
    now = time.time()
    out = []
    for uri in storage.list_dirs(folder):
        run = run_at(uri)
        age = now - storage.newest_mtime(uri)
        promoted = latest is not None and latest.run_id == run.run_id
        out.append(RunInfo(run, not run.missing(), promoted, age))
    return sorted(out, key=lambda r: -r.age_seconds)


def collect_garbage(store: ArtifactStore, *, older_than: float, dry_run: bool) -> list[RunInfo]:
    """Remove the incomplete run directories (no model or no metrics.json) whose newest file
    is older than `older_than` seconds: runs that failed or were killed. The promoted run,
    complete runs and runs still being written (recent files) are kept. Returns the removed
    (with `dry_run`: the removable) runs."""
    doomed = [r for r in list_runs(store)
              if not r.complete and not r.promoted and r.age_seconds > older_than]  # fmt: skip
    for info in doomed:
        if not dry_run:
            storage.remove_tree(info.run.uri)
            log.info("removed incomplete run %s", info.run.uri)
    return doomed


def resolve_run(path: str) -> RunDir:
    """A complete run from a run directory, a model file or an artifacts root (whose
    `latest.json` names the run); anything else is an `InputError` saying what it is."""
    text = os.fspath(path)
    if not storage.exists(text):
        raise InputError(f"{text}: does not exist; pass a run directory, its {MODEL}, or an "
                         "artifacts root (--out of `custseg run`)")  # fmt: skip
    if text.endswith(".skops"):
        folder = text.rsplit("/", 1)[0] if "/" in text else "."
        return run_at(folder).check_complete()
    if storage.exists(storage.join(text, MODEL)) or storage.exists(storage.join(text, WORK)):
        return run_at(text).check_complete()
    latest = ArtifactStore(text).latest()
    if latest is not None:
        return latest.check_complete()
    raise InputError(
        f"{text}: neither a run directory (no {MODEL}) nor an artifacts root (no {LATEST}); "
        "run `custseg run` first or pass --model RUN_DIR"
    )


def _summary_uri(table_uri: str) -> str:
    return table_uri.removesuffix(".parquet") + ".json"


def customer_table_summary(table_uri: str) -> dict[str, Any]:
    """What building a customer table from an order log read, dropped and wrote."""
    return json.loads(storage.read_bytes(_summary_uri(table_uri)))


def run_at(folder: str) -> RunDir:
    """The run whose directory is `folder` (made absolute when local)."""
    uri = folder if storage.is_remote(folder) else str(storage.local_path(folder).absolute())
    return RunDir(uri, uri.rstrip("/").rsplit("/", 1)[-1])


__all__ = [
    "ArtifactStore",
    "RunInfo",
    "collect_garbage",
    "list_runs",
    "Reference",
    "RunDir",
    "RunRecord",
    "new_run_id",
    "resolve_run",
    "safe_run_id",
]
