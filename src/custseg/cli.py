"""`custseg` command line: run the pipeline, score new customers, show a run, generate data.

Only this module prints. Exit codes: 0 success, 2 bad input or usage (one line on
stderr, no traceback), 1 an unexpected internal error (message and the log's path).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from custseg import __version__
from custseg.errors import InputError
from custseg.options import CLI, add_cli_options, cli_values, parse_request
from custseg.sanitize import csv_bytes, printable

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2
log = logging.getLogger("custseg")


def say(text: object = "", *, file: Any = None) -> None:
    """Print one line for the user, control characters escaped (names and paths come from
    the user's files: an escape sequence in a header must not reach the terminal)."""
    print(printable(text), file=file or sys.stdout)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: one line, exit 2
        self.print_usage(sys.stderr)
        raise InputError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with the `run`, `predict`, `show` and `generate` commands."""
    parser = _Parser(
        prog="custseg",
        description="Customer segmentation: K-Means over a k sweep, k chosen from the SSE "
        "curve, the model saved with skops and every run kept as a versioned artifact set.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"custseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    # -v also after the subcommand (`custseg run -v`), as in git or pip
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log progress to stderr")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="train on a customer table (or an order log) and write a new run directory",
        description="Load and validate the table (or build one row per customer from an "
        "order log with --transactions), drop unusable rows, scale the features, "
        "fit K-Means for every k in k-min..k-max, choose k, fit the final model at that k, "
        "predict the test customers and write OUT/runs/<run_id>/; OUT/latest.json is "
        "replaced only when everything succeeded.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    add_cli_options(run)
    run.add_argument("--run-id", help="name of the run directory (default: time + random)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    pred = sub.add_parser(
        "predict",
        help="assign new customers to segments with a saved model",
        description="Score a table with a saved model: the scaler inside the model scales "
        "the new customers exactly like the training data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    pred.add_argument(
        "--model",
        default="artifacts",
        help="run directory, model.skops, or artifacts root (uses latest.json)",
    )
    pred.add_argument("--input", required=True, help="customers to score")
    pred.add_argument("--out", default="predictions.csv", help="output CSV")

    show = sub.add_parser(
        "show",
        help="print the summary of the latest promoted run",
        description="Read OUT/latest.json and print that run's chosen k, segments and "
        "artifact paths (works for runs made by the CLI and by the Airflow DAG).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    show.add_argument("--out", default="artifacts", help="artifacts root (OUT)")
    show.add_argument("--run-id", help="show this run instead of the promoted one")

    runs = sub.add_parser(
        "runs",
        help="list the runs of an artifacts root",
        description="One line per run directory, oldest first: id, time, k, confidence, rows "
        "used, and whether it is complete and promoted.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    runs.add_argument("--out", default="artifacts", help="artifacts root (OUT)")

    score = sub.add_parser(
        "score",
        help="score new customers and measure drift against the training run",
        description="Assign new customers to segments (segment, name, distance, margin, "
        "novelty) and compare them with the model's training reference: per-feature PSI and "
        "KS, the segment mix (PSI, chi-square), the novelty share and the distance ratio, each "
        "with a verdict. Writes predictions.csv, drift.json and drift.html into a new folder "
        "(default: OUT/scores/<id> when --model is an artifacts root).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    score.add_argument(
        "--model",
        default="artifacts",
        help="artifacts root (uses latest.json), run directory or model.skops",
    )
    score.add_argument("--input", required=True, help="customers to score")
    score.add_argument("--out", help="new folder for the score set")
    score.add_argument("--psi-moderate", type=float, default=0.1, help="PSI of moderate drift")
    score.add_argument(
        "--psi-significant", type=float, default=0.2, help="PSI of significant drift"
    )

    srv = sub.add_parser(
        "serve",
        help="score customers over HTTP with the promoted model (FastAPI on uvicorn)",
        description="POST /predict scores one customer or a list with the model the artifacts "
        "root's latest.json names, switching to a newly promoted model without a restart; "
        "GET /health, /model, /metrics (Prometheus) and /docs. Binds 127.0.0.1 by default; "
        "set CUSTSEG_SERVE_TOKEN to require 'Authorization: Bearer <token>'.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    srv.add_argument(
        "--model",
        default="artifacts",
        help="artifacts root (follows latest.json) or a run directory",
    )
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on")
    srv.add_argument("--port", type=int, default=8000, help="port to listen on")
    srv.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")

    gc = sub.add_parser(
        "gc",
        help="remove incomplete run directories (failed or killed runs)",
        description="Remove run directories without a model or metrics.json whose newest file "
        "is older than --older-than. Never removes the promoted run, a complete run or a run "
        "still being written (recent files).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    gc.add_argument("--out", default="artifacts", help="artifacts root (OUT)")
    gc.add_argument("--older-than", default="7d", type=_duration, metavar="AGE",
                    help="age of the newest file: 30m, 12h, 7d or seconds")  # fmt: skip
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")

    gen = sub.add_parser(
        "generate",
        help="write synthetic customers in the Mall Customers layout",
        description="Synthetic customers around known segment centers, with a ground-truth "
        "'segment' column; .csv, .csv.gz or .parquet by the extension of --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    gen.add_argument("--rows", type=int, required=True, help="number of customers")
    gen.add_argument("--segments", type=int, default=5, help="true number of segments")
    gen.add_argument("--seed", type=int, default=0, help="random seed")
    gen.add_argument("--out", required=True, help="output file")
    gen.add_argument("--no-truth", action="store_true", help="omit the 'segment' column")

    feat = sub.add_parser(
        "features",
        help="turn an order log into one row per customer (recency, frequency, monetary)",
        description="Reads an order log (CSV or Parquet, streamed by DuckDB) and writes one "
        "row per customer: recency_days, frequency (distinct order days), orders, "
        "monetary_total (refunds subtracted), monetary_mean, tenure_days, with classic RFM "
        "scores and segments. `custseg run --transactions PATH` builds them and segments "
        "them in one run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        parents=[common],
    )
    feat.add_argument("--transactions", required=True, metavar="PATH", help="the order log")
    feat.add_argument("--customer", required=True, metavar="COL", help="customer id column")
    feat.add_argument("--date", required=True, metavar="COL", help="order date column")
    feat.add_argument("--amount", required=True, metavar="COL", help="order value column")
    feat.add_argument("--as-of", metavar="YYYY-MM-DD",
                      help="day recency and tenure count to (default: the day after the last "
                      "order)")  # fmt: skip
    feat.add_argument("--out", required=True, help="customers file to write (.parquet or .csv)")
    feat.add_argument(
        "--print-sql",
        action="store_true",
        help="print the SQL (for a warehouse) instead of running it",
    )
    return parser


class ProgressBar:
    """A one-line progress bar on stderr: `sweep [####    ] 20/50 k=20 3.1s 6.4 k/s`."""

    def __init__(self, label: str, *, enabled: bool) -> None:
        self.label, self.enabled, self.start = label, enabled, time.perf_counter()

    def __call__(self, done: int, total: int, k: int, sse: float) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        width = 30
        fill = int(width * done / total)
        rate = done / elapsed if elapsed > 0 else 0.0
        sys.stderr.write(
            f"\r{self.label} [{'#' * fill}{' ' * (width - fill)}] {done}/{total} k={k} "
            f"{elapsed:.1f}s {rate:.1f} k/s"
        )
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()


_HANDLERS: list[logging.Handler] = []


class _ConsoleFilter(logging.Filter):
    """Keep tracebacks and records marked `console=False` off the console (they go to the log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "console", True)


class _OneLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname}: {printable(record.getMessage())}"


class _LazyFileHandler(logging.FileHandler):
    """A log file (and its folder) created on the first record: a run refused before it logs
    anything leaves no artifacts folder behind."""

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def _setup_logging(verbose: bool, log_file: Path | None) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    # warnings reach the user once, in the run's summary (and in the log file); the console
    # shows errors only, or everything with -v
    console.setLevel(logging.INFO if verbose else logging.ERROR)
    console.setFormatter(_OneLineFormatter())
    console.addFilter(_ConsoleFilter())
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        handler = _LazyFileHandler(log_file, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(handler)
    for handler in handlers:
        root.addHandler(handler)
        _HANDLERS.append(handler)


def _teardown_logging() -> None:
    """Remove and close the handlers `main` added (it may run many times in one process)."""
    root = logging.getLogger()
    while _HANDLERS:
        handler = _HANDLERS.pop()
        root.removeHandler(handler)
        handler.close()


def _log_file(args: argparse.Namespace) -> Path | None:
    """`OUT/custseg.log` for `run` with a local OUT; an OUT that is a file is an `InputError`."""
    from custseg import storage

    root = getattr(args, "artifacts_root", None) or "artifacts"
    if args.command != "run" or storage.is_remote(root):
        return None
    out = storage.local_path(root)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {root}: is a file, not a directory; pass a directory")
    return out / "custseg.log"


def _record_internal_error(log_file: Path | None) -> Path:
    """Log the current exception with its traceback; returns the file that holds it."""
    log.error("internal error", exc_info=True, extra={"console": False})
    if log_file is not None and log_file.exists():
        return log_file
    import tempfile
    import traceback

    fd, name = tempfile.mkstemp(prefix="custseg-error-", suffix=".log")
    with open(fd, "w") as fh:
        fh.write(traceback.format_exc())
    return Path(name)


def _print_segments(segments: list[dict[str, Any]]) -> None:
    say(f"  {'seg':>3}  {'size':>7}  {'share':>6}  label")
    for s in segments:
        name = f"{s['name']}: " if s.get("name") else ""
        say(f"  {s['segment']:>3}  {s['size']:>7}  {s['share'] * 100:5.1f}%  {name}{s['label']}")


def _print_summary(run: Any, *, latest: str | None, seconds: float | None = None) -> None:
    """Print a finished run's summary from its metrics.json (shared by `run` and `show`)."""
    from custseg.preprocess import DROP_REASONS
    from custseg.rundir import MODEL, REPORT

    metrics = run.metrics()
    order = {r: i for i, r in enumerate(DROP_REASONS)}
    dropped = dict(sorted(metrics["n_rows_dropped"].items(), key=lambda kv: order.get(kv[0], 99)))
    took = f"  ({seconds}s)" if seconds is not None else ""
    say(f"custseg run {metrics['run_id']}{took}")
    orders = metrics.get("transactions")
    if orders:
        say(
            f"order log: {orders['n_rows']} orders ({orders['first_date']}..{orders['last_date']})"
            f" of {orders['n_customers']} customers, as of {orders['as_of']} -> {orders['out']}"
        )
        for warning in orders["warnings"]:
            say(f"  warning: {warning}")
    say(f"rows: {metrics['n_rows_read']} read, {metrics['n_rows_used']} used, dropped: "
          + (", ".join(f"{v} {k}" for k, v in dropped.items()) or "none"))  # fmt: skip
    transform = metrics.get("transform", "none")
    scaling = metrics["scaler"] if transform == "none" else f"{transform}, then {metrics['scaler']}"
    say(f"features: {', '.join(metrics['features'])} (scaler: {scaling})")
    say(f"chosen k = {metrics['chosen_k']} by {metrics['selection']['method']}: "
          f"{metrics['selection']['reason']}")  # fmt: skip
    from custseg.report import k_decision_text

    say(f"  in words: {k_decision_text(metrics['selection'])}")
    if "confidence" in metrics["selection"]:
        sel = metrics["selection"]
        picks = ", ".join(f"{c} {k}" for c, k in sel["picks"].items() if k is not None)
        say(f"  confidence {sel['confidence']}; each criterion's pick: {picks}")
    _print_segments(metrics["segments"])
    for w in metrics["warnings"]:
        say(f"warning: {w}")
    if metrics.get("predictions"):
        p = metrics["predictions"]
        far = p.get("n_out_of_range", 0)
        note = f" ({far} far outside the training range, see out_of_range)" if far else ""
        say(f"predictions: {p['n_rows']} customers -> {p['path']}{note}")
    say(f"artifacts: {run.uri}")
    say(f"model: {run.path(MODEL)}")
    say(f"report: {run.path(REPORT)}")
    moves = metrics.get("who_moved")
    if moves and moves.get("customers_in_both") is not None:
        line = (f"who moved since {metrics['reference_run_id']}: {moves['moved']} of "
                f"{moves['customers_in_both']} customers in both changed segment")  # fmt: skip
        for word in ("born", "dissolved"):
            if moves[word]:
                line += f"; segments {word}: {moves[word]}"
        say(line)
    promotion = metrics.get("promotion")
    if promotion and not promotion["promoted"]:
        say(f"NOT PROMOTED, the previous model stays: {promotion['reason']}")
        say("  (pass --force-promote to promote it anyway)")
    elif promotion and promotion["forced"]:
        say(f"promoted by --force-promote: {promotion['reason']}")
    if latest:
        say(f"latest: {latest}")


def _duration(text: str) -> float:
    """Seconds of `30m`, `12h`, `7d` or a plain number of seconds."""
    import re

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 30m, 12h or 7d")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def cmd_runs(args: argparse.Namespace) -> int:
    """List the runs of an artifacts root."""
    from custseg.rundir import ArtifactStore, list_runs

    infos = list_runs(ArtifactStore(args.out))
    if not infos:
        raise InputError(f"{args.out}: no runs yet; run `custseg run --out {args.out}` first")
    say(f"{'run id':<40} {'created':<25} {'k':>3} {'confidence':<10} {'rows':>9}  state")
    for info in infos:
        created = k = conf = rows = ""
        if info.complete:
            m = info.run.metrics()
            created, k, rows = m["created_at"], m["chosen_k"], m["n_rows_used"]
            conf = m["selection"].get("confidence", "")
        state = "promoted" if info.promoted else ("complete" if info.complete else "incomplete")
        say(f"{info.run.run_id:<40} {created:<25} {k:>3} {conf:<10} {rows:>9}  {state}")
    return EXIT_OK


def cmd_score(args: argparse.Namespace) -> int:
    """Score new customers and measure drift."""
    from custseg import storage
    from custseg.drift import Thresholds
    from custseg.rundir import ArtifactStore, new_run_id, resolve_run
    from custseg.scoring import score_customers_with_drift, write_score_set

    thresholds = Thresholds.from_psi(args.psi_moderate, args.psi_significant,
                                     spelled=("--psi-moderate", "--psi-significant"))  # fmt: skip
    run = resolve_run(args.model)
    out = args.out
    if out is None:
        store = ArtifactStore(args.model) if not args.model.endswith(".skops") else None
        base = store.root if store is not None and storage.exists(store.latest_uri) else "."
        out = storage.join(base, "scores", new_run_id())
    result = score_customers_with_drift(run, args.input, thresholds=thresholds)
    folder = write_score_set(result, out)
    d = result.drift
    say(f"scored {d['n_rows']} customers with run {run.run_id} -> {folder}")
    say(
        f"drift: {d['overall']} ({', '.join(f'{k} {v}' for k, v in d['verdicts'].items())}); "
        f"novelty share {d['novelty_share']:.1%}, distance ratio {d['distance_ratio']:.2f}"
    )
    for name, f in d["features"].items():
        say(f"  {name}: PSI {f['psi']:.3f}, KS {f['ks_stat']:.3f} ({f['verdict']})")
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the HTTP scoring service until interrupted."""
    try:
        from custseg.serve import serve
    except ImportError as exc:  # pragma: no cover - the `serve` extra is not installed
        raise InputError(f"custseg serve needs the `serve` extra ({exc}); install "
                         "custseg[serve]") from None  # fmt: skip
    if args.workers < 1:
        raise InputError(f"--workers={args.workers} must be >= 1")
    serve(args.model, host=args.host, port=args.port, workers=args.workers,
          token=os.environ.get("CUSTSEG_SERVE_TOKEN") or None)  # fmt: skip
    return EXIT_OK


def cmd_gc(args: argparse.Namespace) -> int:
    """Remove incomplete run directories."""
    from custseg.rundir import ArtifactStore, collect_garbage

    gone = collect_garbage(ArtifactStore(args.out), older_than=args.older_than,
                           dry_run=args.dry_run)  # fmt: skip
    verb = "would remove" if args.dry_run else "removed"
    for info in gone:
        say(f"{verb} {info.run.uri} (incomplete, last written {info.age_seconds / 3600:.1f} h ago)")
    say(f"{verb} {len(gone)} incomplete run(s)")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    """Print the summary of the run `OUT/latest.json` names (e.g. after an Airflow run)."""
    from custseg import storage
    from custseg.rundir import ArtifactStore

    store = ArtifactStore(args.out)
    if args.run_id:
        run = store.run(args.run_id)
        if not storage.exists(run.uri):
            raise InputError(f"{run.uri}: no such run; `custseg runs --out {args.out}` lists them")
        _print_summary(run.check_complete(), latest=None)
        return EXIT_OK
    promoted = store.latest()
    if promoted is None:
        raise InputError(
            f"{store.latest_uri} not found: no run was promoted in {args.out} yet; run "
            "`custseg run` or the Airflow DAG first"
        )
    _print_summary(promoted.check_complete(), latest=store.latest_uri)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Train and report."""
    from custseg.pipeline import run_in_memory
    from custseg.rundir import run_at

    request = parse_request(cli_values(args), runner=CLI)
    bar = ProgressBar("sweep", enabled=not args.no_progress and sys.stderr.isatty())
    summary = run_in_memory(request, run_id=args.run_id, progress=bar)
    _print_summary(run_at(summary["run_dir"]), latest=summary["latest"],
                   seconds=summary["seconds"])  # fmt: skip
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    """Score new customers with a saved model."""
    from custseg.model import model_info
    from custseg.pipeline import score_customers
    from custseg.rundir import resolve_run

    run = resolve_run(args.model)
    model = run.load_model(verify=True)
    info = run.metrics()
    summary = info if "feature_min" in info else run.prepared_summary()  # runs before 0.2
    labels = {int(s["segment"]): str(s.get("name") or s["label"]) for s in info["segments"]}
    pred = score_customers(model, args.input, summary=summary,
                           needed_by=f"the model in {run.uri}", names=labels)  # fmt: skip
    Path(args.out).write_bytes(csv_bytes(pred))
    counts = pred["segment"].value_counts().sort_index()
    say(f"model: {run.uri} (k={model_info(model).k})")
    say(f"scored {len(pred)} customers -> {args.out}")
    for seg, n in counts.items():
        say(f"  segment {seg}: {n}  ({labels.get(int(seg), '')})")
    far = int((pred["out_of_range"] != "").sum())
    if far:
        say(f"warning: {far} customer(s) far outside the training range (see out_of_range)")
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Write synthetic customers."""
    from custseg.generate import generate_customers, write_table

    start = time.perf_counter()
    frame = generate_customers(args.rows, segments=args.segments, seed=args.seed)
    if args.no_truth:
        frame = frame.drop(columns=["segment"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_table(frame, args.out)
    say(f"wrote {len(frame)} customers ({args.segments} segments) to {args.out} "
          f"in {time.perf_counter() - start:.1f}s")  # fmt: skip
    return EXIT_OK


def cmd_features(args: argparse.Namespace) -> int:
    """Order log to customer features."""
    from custseg.rfm import customer_features, rfm_query

    if args.print_sql:
        say("-- `orders` is your order log (a table or view); see custseg.rfm for the rules")
        for line in (
            rfm_query(args.customer, args.date, args.amount, args.as_of).strip().split("\n")
        ):
            say(line)  # one by one: say() escapes newlines inside a message
        return EXIT_OK
    start = time.perf_counter()
    summary = customer_features(args.transactions, customer=args.customer, date=args.date,
                                amount=args.amount, out=args.out, as_of=args.as_of)  # fmt: skip
    say(
        f"read {summary.n_rows} orders ({summary.first_date}..{summary.last_date}) of "
        f"{summary.n_customers} customers; as of {summary.as_of}"
    )
    if summary.n_zero:
        say(f"  {summary.n_zero} zero-value order(s): counted as orders, value 0")
    for warning in summary.warnings():
        say(f"warning: {warning}")
    say(f"wrote {args.out} in {time.perf_counter() - start:.1f}s")
    return EXIT_OK


_DISK_ERRORS = {
    errno.ENOSPC: "free space there or pass another --out",
    errno.EDQUOT: "free space within your quota or pass another --out",
    errno.EROFS: "the file system is read-only: pass another --out",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `custseg` command."""
    logging.raiseExceptions = False  # a full disk: one line below, not a traceback per record
    parser = build_parser()
    log_file: Path | None = None
    try:
        args = parser.parse_args(argv)
        log_file = _log_file(args)
        _setup_logging(args.verbose, log_file)
        handler = {"run": cmd_run, "predict": cmd_predict, "show": cmd_show, "runs": cmd_runs,
                   "gc": cmd_gc, "serve": cmd_serve, "score": cmd_score,
                   "generate": cmd_generate, "features": cmd_features}  # fmt: skip
        return handler[args.command](args)
    except InputError as exc:
        if any(getattr(h, "stream", None) for h in _HANDLERS if isinstance(h, _LazyFileHandler)):
            log.info("input error: %s", exc, extra={"console": False})
        say(f"custseg: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        say("custseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader of our output left (`custseg show | head -1`): the work is done, and the
        # rest of the output goes nowhere instead of failing again when Python flushes at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            where = _record_internal_error(log_file)
            say(f"custseg: internal error: {type(exc).__name__}: {exc}; details in {where}",
                file=sys.stderr)  # fmt: skip
            return EXIT_INTERNAL
        say(f"custseg: error: {exc.strerror} writing {exc.filename or 'a file'}: "
            f"{_DISK_ERRORS[exc.errno]}", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        where = _record_internal_error(log_file)
        say(f"custseg: internal error: {type(exc).__name__}: {exc}; details in {where}",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL
    finally:
        _teardown_logging()
        if argv is None:  # the `custseg` command, whose process ends now
            _skip_final_collection()


def _skip_final_collection() -> None:
    """Let the interpreter's exit skip collecting the objects of every module imported (about
    0.4 s after a run): everything is written, and the memory goes back with the process."""
    import gc

    gc.freeze()


if __name__ == "__main__":
    sys.exit(main())
