"""The Airflow side of custseg, importable without Airflow: params, path confinement, tasks.

Each `*_task` function is the whole body of one DAG task: it turns trigger-form params into
a `PipelineConfig`, keeps every path a trigger form can name inside the configured roots,
calls one pipeline stage and returns a small JSON-ready dict for XCom. `InputError` becomes
Airflow's `AirflowFailException` (fail at once, no retries); anything else propagates, so
Airflow retries it (I/O and other transient faults).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from custseg.config import PipelineConfig
from custseg.errors import InputError

log = logging.getLogger(__name__)

ENV_HOME = "CUSTSEG_HOME"
ENV_ARTIFACTS = "CUSTSEG_ARTIFACTS_ROOT"
ENV_ALLOWED = "CUSTSEG_ALLOWED_ROOTS"
SAMPLE_INPUT = "data/sample/customers.csv"
SAMPLE_TEST = "data/sample/test.csv"
MAX_SWEEP_BATCHES = 50


def project_home(dags_folder: str | os.PathLike[str] | None = None) -> Path:
    """The project directory: `$CUSTSEG_HOME`, else the parent of the DAGs folder, else cwd."""
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).absolute()
    if dags_folder is not None:
        return Path(dags_folder).absolute().parent
    return Path.cwd()


def default_artifacts_root(home: str | os.PathLike[str]) -> str:
    """`$CUSTSEG_ARTIFACTS_ROOT`, else `<project>/artifacts`."""
    return os.environ.get(ENV_ARTIFACTS) or str(Path(home) / "artifacts")


def latest_uri(artifacts_root: str) -> str:
    """URI of `latest.json` under an artifacts root, for the model Asset: the root's own URI
    on object storage (`s3://b/x/latest.json`), else `file://<absolute path>/latest.json`."""
    from custseg import storage

    if storage.is_remote(artifacts_root):
        return storage.join(artifacts_root, "latest.json")
    return f"file://{storage.local_path(artifacts_root).absolute()}/latest.json"


def allowed_roots(home: str | os.PathLike[str]) -> tuple[str, ...]:
    """Where params may point: `$CUSTSEG_ALLOWED_ROOTS` (os.pathsep-separated), else the
    project directory and the default artifacts root."""
    roots = _split_roots(os.environ.get(ENV_ALLOWED, ""))
    if not roots:
        roots = [str(home), default_artifacts_root(home)]
    return tuple(_normalise_root(r, home) for r in roots)


def _split_roots(text: str) -> list[str]:
    """Split on os.pathsep, but keep `s3://bucket/x` whole where os.pathsep is `:`."""
    parts, out = text.split(os.pathsep), []
    for part in parts:
        if out and part.startswith("//") and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", out[-1]):
            out[-1] = f"{out[-1]}:{part}"
        else:
            out.append(part)
    return [p.strip() for p in out if p.strip()]


def _normalise_root(root: str, home: str | os.PathLike[str]) -> str:
    from custseg import storage

    root = root.strip()
    if storage.is_remote(root):
        return root.rstrip("/") + "/"
    path = storage.local_path(root)
    return str((Path(home) / path if not path.is_absolute() else path).resolve())


def confine_path(
    path: str, *, roots: Sequence[str], home: str | os.PathLike[str], what: str
) -> str:
    """`path` made absolute (relative ones against `home`) if it lies inside one of `roots`.

    Symlinks and `..` are resolved before the check, so neither can escape a root; a URI
    (`s3://...`) must start with a root that is itself a URI. Raises `InputError` naming
    the path and the roots otherwise.
    """
    import posixpath

    from custseg import storage

    text = str(path).strip()
    if not text:
        raise InputError(f"{what} is empty: give a file path inside {_roots_text(roots)}")
    if storage.is_remote(text):
        scheme, rest = text.split("://", 1)
        resolved = f"{scheme}://{posixpath.normpath('/' + rest).lstrip('/')}"
        inside = any(storage.is_remote(r) and resolved.startswith(r) for r in roots)
    else:
        local = storage.local_path(text)
        resolved = str((Path(home) / local if not local.is_absolute() else local).resolve())
        inside = any(not storage.is_remote(r) and Path(resolved).is_relative_to(r) for r in roots)
    if not inside:
        raise InputError(
            f"{what} {text!r} resolves to {resolved}, outside the allowed roots "
            f"{_roots_text(roots)}; use a path inside them or add its directory to "
            f"{ENV_ALLOWED} (separated by {os.pathsep!r})"
        )
    return resolved


def _roots_text(roots: Sequence[str]) -> str:
    return "[" + ", ".join(roots) + "]"


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    """A validated trigger: the pipeline config plus confined absolute paths."""

    config: PipelineConfig
    input_path: str
    test_path: str | None
    artifacts_root: str
    sweep_batches: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for logs and XCom."""
        return {
            "config": self.config.to_dict(),
            "input_path": self.input_path,
            "test_path": self.test_path,
            "artifacts_root": self.artifacts_root,
            "sweep_batches": self.sweep_batches,
        }


def request_from_params(params: Mapping[str, Any], *, home: str | os.PathLike[str]) -> RunRequest:
    """Validate DAG params (also the cross-field rules JSON schema cannot express)."""
    defaults = PipelineConfig()
    features = params.get("features") or list(defaults.features)
    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    config = PipelineConfig(
        features=tuple(features),
        k_min=_int(params, "k_min", defaults.k_min),
        k_max=_int(params, "k_max", defaults.k_max),
        scaler=str(params.get("scaler") or defaults.scaler),
        select=str(params.get("selection") or defaults.select),
        seed=_int(params, "seed", defaults.seed),
    )
    batches = _int(params, "sweep_batches", 1)
    if not 1 <= batches <= MAX_SWEEP_BATCHES:
        raise InputError(f"sweep_batches={batches} must be between 1 and {MAX_SWEEP_BATCHES}")
    roots = allowed_roots(home)
    input_path = confine_path(
        params.get("input_path") or SAMPLE_INPUT, roots=roots, home=home, what="input_path"
    )
    test = params.get("test_path")
    test_path = confine_path(test, roots=roots, home=home, what="test_path") if test else None
    artifacts_root = confine_path(
        params.get("artifacts_root") or default_artifacts_root(home),
        roots=roots, home=home, what="artifacts_root",
    )  # fmt: skip
    return RunRequest(config=config, input_path=input_path, test_path=test_path,
                      artifacts_root=artifacts_root, sweep_batches=batches)  # fmt: skip


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name}={value!r} is not a whole number")
    return value


@contextlib.contextmanager
def fail_fast_on_input_errors() -> Iterator[None]:
    """Turn `InputError` into `AirflowFailException` (no retries), logging its one line."""
    try:
        yield
    except InputError as exc:
        log.error("bad input: %s", exc)
        try:
            from airflow.sdk.exceptions import AirflowFailException
        except ImportError:  # pragma: no cover - without Airflow the InputError stands
            raise exc from None
        raise AirflowFailException(str(exc)) from exc


def _attach_to_task_log() -> None:
    """Make sure custseg's INFO lines reach the task log (Airflow configures the root logger)."""
    logger = logging.getLogger("custseg")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def load_task(
    params: Mapping[str, Any], *, run_id: str, home: str | os.PathLike[str], try_number: int = 1
) -> dict[str, Any]:
    """Validate params, create the run directory named after the Airflow run id, load input.

    A retry of this task gets a fresh directory (`<run_id>-try<n>`), so nothing an earlier
    attempt wrote is overwritten or reused.
    """
    from custseg import artifacts
    from custseg.pipeline import load_stage, start_run

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        req = request_from_params(params, home=home)
        log.info("params: %s", req.to_dict())
        name = artifacts.safe_run_id(run_id)
        if try_number > 1:
            name = f"{name}-try{try_number}"
        run = start_run(req.config, input_path=req.input_path, out=req.artifacts_root,
                        test_path=req.test_path, run_id=name)  # fmt: skip
        result = load_stage(run["run_dir"])
    return {
        "run_dir": run["run_dir"],
        "run_id": run["run_id"],
        "n_rows_read": int(result["n_rows_read"]),
        "sweep_batches": req.sweep_batches,
    }


def preprocess_task(run_dir: str) -> dict[str, Any]:
    """Drop and count unusable rows (logged per reason)."""
    from custseg.pipeline import preprocess_stage

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        info = preprocess_stage(run_dir)
    dropped = info["n_rows_dropped"]
    return {
        "run_dir": run_dir,
        "n_rows_used": int(info["n_rows_used"]),
        "n_rows_dropped": {k: int(v) for k, v in dropped.items()},
    }


def plan_task(run_dir: str, *, batches: int) -> list[dict[str, Any]]:
    """The k sweep split into `batches` mapped task inputs `{"run_dir", "ks"}`."""
    from custseg.pipeline import plan_sweep

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        parts = plan_sweep(run_dir, batches=batches)
    log.info("sweep plan: %d batch(es): %s", len(parts),
             "; ".join(f"k={p[0]}..{p[-1]}" for p in parts))  # fmt: skip
    return [{"run_dir": run_dir, "ks": [int(k) for k in part]} for part in parts]


def sweep_task(run_dir: str, ks: Sequence[int]) -> list[dict[str, Any]]:
    """SSE for each k of one batch; every point carries its own `k`."""
    from custseg.pipeline import sweep_stage

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        points = sweep_stage(run_dir, [int(k) for k in ks])
    log.info("sweep k=%d..%d: SSE %s", points[0]["k"], points[-1]["k"],
             [round(p["sse"], 4) for p in points])  # fmt: skip
    # each point: k, sse, seconds and (select=auto) the per-k criteria, all plain numbers
    return [{**p, "k": int(p["k"]), "sse": float(p["sse"]), "seconds": float(p["seconds"])}
            for p in points]  # fmt: skip


def fit_task(run_dir: str, results: Sequence[Sequence[Mapping[str, Any]]]) -> dict[str, Any]:
    """Merge the mapped sweep results (sorted by k), choose k, fit and save the final model."""
    from custseg.pipeline import fit_stage

    _attach_to_task_log()
    points = sorted((dict(p) for batch in results for p in batch), key=lambda p: p["k"])
    with fail_fast_on_input_errors(), warnings.catch_warnings():
        # skops looks every saved type up in sys.modules; Airflow's lazy deprecated module
        # attributes answer that with one FutureWarning each (1000+ lines in the task log).
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"skops\.")
        fit = fit_stage(run_dir, points)
    log.info("chosen k=%d: %s; model %s", fit["chosen_k"], fit["reason"],
             os.path.join(run_dir, "model.skops"))  # fmt: skip
    return {"run_dir": run_dir, "chosen_k": int(fit["chosen_k"]), "reason": str(fit["reason"])}


def finish_task(run_dir: str) -> dict[str, Any]:
    """Reload the saved model, score the test customers, write metrics/report, promote."""
    from custseg import artifacts, storage
    from custseg.pipeline import finish_stage

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        summary = finish_stage(run_dir)
    model = storage.join(run_dir, artifacts.MODEL_FILE)
    log.info("run %s: k=%d (%s)", summary["run_id"], summary["chosen_k"], summary["reason"])
    for name in ("model.skops", "metrics.json", "report.html", "predictions.csv"):
        if storage.exists(storage.join(run_dir, name)):
            log.info("artifact: %s", storage.join(run_dir, name))
    log.info("promoted: %s", summary["latest"])
    return {
        "run_id": str(summary["run_id"]),
        "run_dir": run_dir,
        "model": model,
        "latest": str(summary["latest"]),
        "chosen_k": int(summary["chosen_k"]),
        "reason": str(summary["reason"]),
        "n_rows_used": int(summary["n_rows_used"]),
    }


__all__ = [
    "RunRequest",
    "allowed_roots",
    "confine_path",
    "default_artifacts_root",
    "fail_fast_on_input_errors",
    "finish_task",
    "fit_task",
    "load_task",
    "plan_task",
    "preprocess_task",
    "project_home",
    "request_from_params",
    "sweep_task",
]
