"""The Airflow side of custseg, importable without Airflow: params, path confinement, tasks.

Each `*_task` function is the whole body of one DAG task: it turns trigger-form params into
a `PipelineConfig`, keeps every path a trigger form can name inside the configured roots,
calls one pipeline stage and returns a small JSON-ready dict for XCom. `InputError` becomes
Airflow's `AirflowFailException` (fail at once, no retries); anything else propagates, so
Airflow retries it (I/O and other transient faults).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from custseg.errors import InputError
from custseg.options import RunRequest
from custseg.rundir import LATEST, RunDir
from custseg.sanitize import logger

log = logger(__name__)

ENV_HOME = "CUSTSEG_HOME"
ENV_ARTIFACTS = "CUSTSEG_ARTIFACTS_ROOT"
ENV_ALLOWED = "CUSTSEG_ALLOWED_ROOTS"
SAMPLE_INPUT = "data/sample/customers.csv"
SAMPLE_TEST = "data/sample/test.csv"


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
        return storage.join(artifacts_root, LATEST)
    return f"file://{storage.local_path(artifacts_root).absolute()}/{LATEST}"


def allowed_roots(home: str | os.PathLike[str]) -> tuple[str, ...]:
    """Where params may point: `$CUSTSEG_ALLOWED_ROOTS` (os.pathsep-separated), else the
    project's data directory and the default artifacts root: data, never configuration (the
    project directory may hold AIRFLOW_HOME and its secrets)."""
    roots = _split_roots(os.environ.get(ENV_ALLOWED, ""))
    if not roots:
        roots = [str(Path(home) / "data"), default_artifacts_root(home)]
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
        # a root matches itself and everything under it, with or without a trailing slash
        inside = any(
            storage.is_remote(r) and (resolved == r.rstrip("/") or resolved.startswith(r))
            for r in roots
        )
    else:
        if "\x00" in text:
            raise InputError(f"{what} contains a NUL byte: give a plain path")
        local = storage.local_path(text)
        resolved = str((Path(home) / local if not local.is_absolute() else local).resolve())
        inside = any(not storage.is_remote(r) and Path(resolved).is_relative_to(r) for r in roots)
        if inside:
            _refuse_configuration(resolved, roots, what)
    if not inside:
        raise InputError(
            f"{what} {text!r} resolves to {resolved}, outside the allowed roots "
            f"{_roots_text(roots)}; use a path inside them or add its directory to "
            f"{ENV_ALLOWED} (separated by {os.pathsep!r})"
        )
    return resolved


def _refuse_configuration(resolved: str, roots: Sequence[str], what: str) -> None:
    """Refuse a path under AIRFLOW_HOME or under a dot-directory (`.airflow`, `.ssh`, ...)
    unless an allowed root itself lies inside that directory: its secrets (airflow.cfg,
    the password file) must not become a trigger form's input."""
    path = Path(resolved)
    mine = [Path(r) for r in roots if not _is_uri(r) and path.is_relative_to(r)]
    airflow_home = os.environ.get("AIRFLOW_HOME")
    if airflow_home:
        home = Path(airflow_home).resolve()
        if path.is_relative_to(home) and not any(r.is_relative_to(home) and r != home
                                                 for r in mine):  # fmt: skip
            raise InputError(
                f"{what} {resolved!r} lies in AIRFLOW_HOME ({home}), which holds Airflow's "
                f"configuration and secrets; put data elsewhere or name a folder inside it "
                f"explicitly in {ENV_ALLOWED}"
            )
    for root in mine:
        hidden = [p for p in path.relative_to(root).parts[:-1] if p.startswith(".")]
        if hidden:
            raise InputError(
                f"{what} {resolved!r} lies in the hidden directory {hidden[0]!r} under "
                f"{root}; hidden directories hold configuration, not data: name it "
                f"explicitly in {ENV_ALLOWED} if it is really data"
            )


def _is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _roots_text(roots: Sequence[str]) -> str:
    return "[" + ", ".join(roots) + "]"


def request_from_params(
    params: Mapping[str, Any],
    *,
    home: str | os.PathLike[str],
    conf: Mapping[str, Any] | None = None,
) -> RunRequest:
    """A validated `RunRequest` from DAG params, every path confined to the allowed roots.

    Keys of the trigger `conf` that are no option fail at once, naming the closest one.
    """
    from custseg.options import DAG, parse_request

    values = {**params, **(conf or {})}  # conf keys reach params only if they are params
    if values.get("transactions_path"):
        if values.get("input_path") == SAMPLE_INPUT:  # the form's default, not a choice
            log.info("input_path: the customer table built from transactions_path")
            values["input_path"] = None
    elif not values.get("input_path"):
        values["input_path"] = SAMPLE_INPUT
    if not values.get("artifacts_root"):
        values["artifacts_root"] = default_artifacts_root(home)
    request = parse_request(values, runner=DAG)
    roots = allowed_roots(home)

    def confined(name: str) -> str | None:
        value = getattr(request, name)
        return confine_path(value, roots=roots, home=home, what=name) if value else None

    return dataclasses.replace(
        request, input_path=confined("input_path") or "", test_path=confined("test_path"),
        artifacts_root=confined("artifacts_root"), names_path=confined("names_path"),
        transactions_path=confined("transactions_path"),
    )  # fmt: skip


@contextlib.contextmanager
def fail_fast_on_input_errors(run: RunDir | None = None) -> Iterator[None]:
    """Turn `InputError` into `AirflowFailException` (no retries), logging its one line.

    A run that fails on its input cannot succeed, so its directory (`run`) is removed:
    bad input leaves nothing behind.
    """
    try:
        yield
    except InputError as exc:
        from custseg.options import in_dag_terms

        message = in_dag_terms(str(exc))
        log.error("bad input: %s", message)
        if run is not None:
            from custseg import storage

            storage.remove_tree(run.uri)
        try:
            from airflow.sdk.exceptions import AirflowFailException
        except ImportError:  # pragma: no cover - without Airflow the InputError stands
            raise exc from None
        raise AirflowFailException(message) from exc


def _attach_to_task_log() -> None:
    """Make sure custseg's INFO lines reach the task log (Airflow configures the root logger)."""
    logger = logging.getLogger("custseg")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


# -- the Airflow runner: one step per task, values handed over through the run directory --

SAVE: dict[str, Callable[[RunDir, Any], Any]] = {
    "table": RunDir.save_table,
    "prepared": RunDir.save_prepared,
    "plan": RunDir.save_plan,
    "sweep": RunDir.save_sweep,
    "selection": RunDir.save_selection,
    "fitted": RunDir.save_fit,
}
LOAD: dict[str, Callable[[RunDir], Any]] = {
    "table": RunDir.load_table,
    "prepared": RunDir.load_prepared,
    "plan": RunDir.load_plan,
    "sweep": RunDir.load_sweep,
    "selection": RunDir.load_selection,
    "fitted": RunDir.load_fit,
    "fit_info": RunDir.fit_info,
    "segments": lambda run: _saved_segments(run),
    "alignment": lambda run: run.segments_info()["alignment"],
    "profile": lambda run: _saved_profile(run),
}
"""How each value of `custseg.pipeline.STEPS` travels between tasks. `segments` and
`profile` are read back from the artifacts their steps wrote: no hand-off file of their own."""


def _saved_segments(run: RunDir) -> Any:
    from custseg.pipeline import Segments

    return Segments(run.load_model(), run.load_labels(), run.segments_info()["alignment"])


def _saved_profile(run: RunDir) -> Any:
    from custseg.pipeline import Profile

    return Profile(run.load_profile(), distances=run.segment_distances(),
                   columns=run.column_profiles())  # fmt: skip


def run_step(name: str, run_dir: str, *, ks: Sequence[int] | None = None) -> Any:
    """Run step `name` of the pipeline on the run in `run_dir`: read what it needs from the
    run directory, compute, write its artifacts and its hand-off; returns its value."""
    from custseg.pipeline import STEP, Context, write_drawn
    from custseg.rundir import run_at
    from custseg.sweep import start_workers

    _attach_to_task_log()
    run = run_at(run_dir)
    step = STEP[name]
    with fail_fast_on_input_errors(run):
        record = run.record()
        ctx = Context(request=record.request, run=run, record=record,
                      ks=None if ks is None else [int(k) for k in ks])  # fmt: skip
        if name in ("sweep", "selection"):  # worker start-up overlaps reading the features
            start_workers(rows=run.prepared_summary()["n_rows_used"])
        inputs = {n: LOAD[n](run) for n in step.needs}
        value = step.compute(ctx, **inputs)

        def extra(names: tuple[str, ...]) -> dict[str, Any]:
            return {n: inputs[n] if n in inputs else LOAD[n](run) for n in names}

        if step.write is not None:
            step.write(ctx, value, **extra(step.write_needs))
        if step.draw is not None:
            write_drawn(ctx, step.draw(value, **extra(step.draw_needs)))
        if name in SAVE:
            SAVE[name](run, value)
    return value


def load_task(
    params: Mapping[str, Any],
    *,
    run_id: str,
    home: str | os.PathLike[str],
    try_number: int = 1,
    conf: Mapping[str, Any] | None = None,
    dag_id: str = "customer_segmentation",
) -> dict[str, Any]:
    """Validate params, load the input, then create the run directory (named after the
    Airflow run id) and store the table in it: bad input creates nothing.

    A retry of this task gets a fresh directory (`<run_id>-try<n>`), so nothing an earlier
    attempt wrote is overwritten or reused.
    """
    from custseg.rundir import safe_run_id

    _attach_to_task_log()
    with fail_fast_on_input_errors():
        req = request_from_params(params, home=home, conf=conf)
        log.info("params: %s", req.to_dict())
        name = safe_run_id(run_id) + (f"-try{try_number}" if try_number > 1 else "")
        run, table = start_run(req, run_id=name, origin={"airflow_dag_id": dag_id,
                                                          "airflow_run_id": run_id})  # fmt: skip
    return {"run_dir": run.uri, "run_id": run.run_id, "n_rows_read": int(table.n_rows_read),
            "sweep_batches": req.sweep_batches}  # fmt: skip


def start_run(
    request: RunRequest, *, run_id: str | None = None, origin: dict[str, str] | None = None
) -> tuple[RunDir, Any]:
    """The first step of the staged runner: load the input, then create the run directory
    and hand the table over in it (bad input creates nothing)."""
    from custseg.pipeline import STEP, Context, customers_from_orders
    from custseg.rundir import ArtifactStore

    request = customers_from_orders(request)
    table = STEP["table"].compute(Context(request=request))
    run = ArtifactStore(request.artifacts_root).create_run(request, run_id=run_id, origin=origin)
    SAVE["table"](run, table)
    return run, table


def run_staged(
    request: RunRequest, *, run_id: str | None = None, batches: int = 1
) -> dict[str, Any]:
    """Every step as the DAG runs it, one after another in this process, each handing over
    through the run directory: the staged runner without Airflow (tests compare it with
    `custseg.pipeline.run_in_memory`). Returns the last step's summary."""
    run, _ = start_run(request, run_id=run_id)
    run_step("prepared", run.uri)
    for ks in run_step("plan", run.uri).batches(batches):
        run_step("sweep", run.uri, ks=ks)
    run_step("selection", run.uri)
    run_step("fitted", run.uri)
    run_step("segments", run.uri)
    run_step("profile", run.uri)
    return run_step("summary", run.uri)


def preprocess_task(run_dir: str) -> dict[str, Any]:
    """Drop and count unusable rows (logged per reason)."""
    data = run_step("prepared", run_dir)
    return {"run_dir": run_dir, "n_rows_used": int(data.n_rows_used),
            "n_rows_dropped": {k: int(v) for k, v in data.dropped.items()}}  # fmt: skip


def plan_task(run_dir: str, *, batches: int) -> list[dict[str, Any]]:
    """The k sweep split into `batches` mapped task inputs `{"run_dir", "ks"}`."""
    parts = run_step("plan", run_dir).batches(batches)
    log.info("sweep plan: %d batch(es): %s", len(parts),
             "; ".join(f"k={p[0]}..{p[-1]}" for p in parts))  # fmt: skip
    return [{"run_dir": run_dir, "ks": part} for part in parts]


def sweep_task(run_dir: str, ks: Sequence[int]) -> dict[str, Any]:
    """SSE for each k of one batch, written to the run directory."""
    result = run_step("sweep", run_dir, ks=ks)
    log.info("sweep k=%d..%d: SSE %s", result.ks[0], result.ks[-1],
             [round(v, 4) for v in result.sse])  # fmt: skip
    return {"run_dir": run_dir, "ks": [int(k) for k in result.ks]}


def fit_task(run_dir: str) -> dict[str, Any]:
    """Merge the sweep, choose k, fit the final model."""
    selection = run_step("selection", run_dir)
    k, reason = selection.chosen_k, selection.reason
    log.info("chosen k=%d: %s", k, reason)
    run_step("fitted", run_dir)
    return {"run_dir": run_dir, "chosen_k": int(k), "reason": str(reason)}


def align_task(run_dir: str) -> dict[str, Any]:
    """Align segment ids to the run's recorded reference; save model and assignments."""
    segments = run_step("segments", run_dir)
    aligned = bool(segments.alignment and segments.alignment.get("aligned"))
    return {"run_dir": run_dir, "aligned": aligned}


def profile_task(run_dir: str) -> dict[str, Any]:
    """Profile the segments; log the segment table."""
    table = run_step("profile", run_dir).table
    for row in table.itertuples():
        log.info("segment %d: %d customers (%.1f%%), %s", row.segment, row.size,
                 100 * row.share, row.label)  # fmt: skip
    return {"run_dir": run_dir, "k": len(table)}


def finish_task(run_dir: str) -> dict[str, Any]:
    """Reload the saved model, score the test customers, write metrics/report, promote."""
    from custseg.report import k_decision_text
    from custseg.rundir import METRICS, MODEL, PREDICTIONS, REPORT, run_at

    summary = run_step("summary", run_dir)
    run = run_at(run_dir)
    metrics = run.metrics()
    log.info("run %s: k=%d (%s)", summary["run_id"], summary["chosen_k"], summary["reason"])
    log.info("in words: %s", k_decision_text(metrics["selection"]))
    log.info("segment table (%d customers):", metrics["n_rows_used"])
    for seg in metrics["segments"]:
        name = f"{seg['name']}: " if seg.get("name") else ""
        log.info("  segment %d: %d customers (%.1f%%), %s%s", seg["segment"], seg["size"],
                 100 * seg["share"], name, seg["label"])  # fmt: skip
    for name in (MODEL, METRICS, REPORT, PREDICTIONS):
        if run.exists(name):
            log.info("artifact: %s", run.path(name))
    if summary["promoted"]:
        log.info("promoted: %s (%s)", summary["latest"], summary["promotion_reason"])
    else:
        log.warning("the previous model stays: %s", summary["promotion_reason"])
    return {
        "run_id": str(summary["run_id"]),
        "run_dir": run_dir,
        "model": run.path(MODEL),
        "latest": summary["latest"] and str(summary["latest"]),
        "promoted": bool(summary["promoted"]),
        "chosen_k": int(summary["chosen_k"]),
        "reason": str(summary["reason"]),
        "n_rows_used": int(summary["n_rows_used"]),
    }


__all__ = [
    "allowed_roots",
    "align_task",
    "confine_path",
    "default_artifacts_root",
    "fail_fast_on_input_errors",
    "finish_task",
    "fit_task",
    "load_task",
    "plan_task",
    "preprocess_task",
    "profile_task",
    "project_home",
    "request_from_params",
    "run_staged",
    "run_step",
    "start_run",
    "sweep_task",
]
