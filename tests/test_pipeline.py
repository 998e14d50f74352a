"""The in-memory runner (the CLI's): what it overlaps must not change what it makes."""

import logging

import pandas as pd
import pytest

from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline

SAME_BYTES = ("sse.csv", "elbow.png", "selection.png", "segments.png", "profile.csv",
              "assignments.parquet", "reference.json")  # fmt: skip


def _run(csv, out, **config):
    summary = run_pipeline(PipelineConfig(**config), input_path=str(csv), out=str(out),
                           run_id="r1")  # fmt: skip
    return summary, out / "runs" / "r1"


def test_forked_sweep_and_drawing_make_the_same_run(mall_csv, tmp_path, monkeypatch, caplog):
    """On two cores a small table's sweep and choice of k run on a forked process, which also
    draws the elbow and selection plots, while this one imports: every artifact is the same
    bytes as when everything runs in this process."""
    import custseg.forked

    if custseg.forked.can_fork() is not None:
        pytest.skip(f"this machine cannot fork a helper: {custseg.forked.can_fork()}")
    caplog.set_level(logging.INFO, logger="custseg")
    forked, forked_dir = _run(mall_csv, tmp_path / "forked")
    said = caplog.text
    assert said.count("forked process") == 1
    assert "sweep and selection: running in forked process" in said
    caplog.clear()
    monkeypatch.setattr(custseg.forked, "can_fork", lambda: "told not to (test)")
    here, here_dir = _run(mall_csv, tmp_path / "here")
    assert "forked process" not in caplog.text
    assert "sweep and selection: computed here while a thread imports (told not to (test))" in (
        caplog.text
    )
    assert forked["chosen_k"] == here["chosen_k"] == 5
    for name in SAME_BYTES:
        assert (forked_dir / name).read_bytes() == (here_dir / name).read_bytes(), name
    sse = pd.read_csv(forked_dir / "sse.csv")
    assert list(sse["k"]) == list(range(1, 51)) and sse["sse"].is_monotonic_decreasing


def test_an_error_in_the_forked_sweep_fails_the_run_and_leaves_no_promotion(
    mall_csv, tmp_path, monkeypatch
):
    """The child's exception is raised in the run as if the sweep ran here: the run fails
    before promotion, and `latest.json` is not written."""
    import custseg.forked
    import custseg.sweep

    if custseg.forked.can_fork() is not None:
        pytest.skip(f"this machine cannot fork a helper: {custseg.forked.can_fork()}")

    def broken(*args, **kwargs):
        raise MemoryError("no room for k=50")

    monkeypatch.setattr(custseg.sweep, "sweep_k", broken)
    with pytest.raises(MemoryError, match="no room for k=50"):
        _run(mall_csv, tmp_path / "out")
    assert not (tmp_path / "out" / "latest.json").exists()


def test_a_small_tables_sweep_and_choice_need_no_scikit_learn(mall_csv, tmp_path):
    """What the forked process computes needs NumPy (and kneed) alone: were scikit-learn
    imported there, its second of imports would undo the overlap (the run would still be
    right, only slower)."""
    import subprocess
    import sys

    code = f"""
import sys
from custseg.options import PipelineConfig, RunRequest
from custseg.pipeline import STEP, Context
request = RunRequest(input_path={str(mall_csv)!r}, artifacts_root={str(tmp_path)!r},
                     config=PipelineConfig())
ctx, values = Context(request=request), {{}}
for name in ("table", "prepared", "plan", "sweep", "selection"):
    values[name] = STEP[name].compute(ctx, **{{n: values[n] for n in STEP[name].needs}})
print(values["selection"].chosen_k, sorted(m for m in sys.modules if m.startswith("sklearn")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["5", "[]"]


def test_a_sample_scikit_learn_fits_is_not_swept_in_a_fork(tmp_path):
    """A small job on more than `SMALL_ROWS` rows (3 ks on 2,000 customers) runs in-process
    but on scikit-learn's K-Means, whose OpenMP threads hang in a process forked after they
    started: this process has started them (as a test session or a notebook would), and the
    run must still end, with the sweep here."""
    import subprocess
    import sys

    from custseg.generate import generate_customers, write_table

    csv = tmp_path / "customers.csv"
    write_table(generate_customers(2000, segments=3, seed=1), str(csv))
    code = f"""
import logging, numpy as np
from sklearn.cluster import KMeans
KMeans(3, n_init=2, random_state=0).fit(np.random.default_rng(0).random((5000, 2)))
logging.basicConfig(level=logging.INFO, format="%(message)s")
from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline
summary = run_pipeline(PipelineConfig(k_max=3), input_path={str(csv)!r},
                       out={str(tmp_path / "out")!r})
print("chosen", summary["chosen_k"])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "chosen 3" in run.stdout
    assert ("sweep and selection: computed here while a thread imports (2000 rows are fit by "
            "scikit-learn, whose threads a fork loses)") in run.stderr  # fmt: skip
    assert "sweep and selection: running in forked process" not in run.stderr
    assert "selection: drawing: running in forked process" in run.stderr  # matplotlib alone


def test_a_large_inputs_workers_start_before_the_read_and_its_sweep_before_imports(tmp_path):
    """An input of `EARLY_WORKERS_BYTES` or more starts the worker processes before it is
    read, and a sweep on them is handed out before this process has imported scikit-learn
    (a thread imports it meanwhile; choosing k waits for it): the run is the same as one
    without the head start."""
    import subprocess
    import sys

    from custseg.generate import generate_customers, write_table
    from custseg.sweep import default_workers

    if default_workers() < 2:
        pytest.skip("one usable core: the sweep runs in-process")
    csv = tmp_path / "customers.csv"
    write_table(generate_customers(3000, segments=4, seed=2), str(csv))
    code = """
import logging, sys
class Seen(logging.Handler):
    def emit(self, record):
        print(record.getMessage() + (" [sklearn]" if "sklearn.cluster" in sys.modules else ""))
logging.getLogger("custseg").addHandler(Seen())
logging.getLogger("custseg").setLevel(logging.INFO)
import custseg.pipeline as p
p.EARLY_WORKERS_BYTES = int(sys.argv[3])
summary = p.run_pipeline(p.PipelineConfig(k_max=12), input_path=sys.argv[1], out=sys.argv[2],
                         run_id="r1")
print("chosen", summary["chosen_k"])
"""
    said = {}
    for name, threshold in (("early", 1), ("late", 1 << 40)):
        argv = [sys.executable, "-c", code, str(csv), str(tmp_path / name), str(threshold)]
        run = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        said[name] = run.stdout.splitlines()
    early, late = said["early"], said["late"]
    size = csv.stat().st_size / 1e6
    assert (
        early[0] == f"input of {size:.1f} MB: the sweep's worker processes start before it is read"
    )
    assert early[1].startswith(f"read 3000 rows from {csv}")
    assert "sweep: 12 tasks on 2 worker processes" in early  # no scikit-learn here yet
    assert not any(line.startswith("input of") for line in late)
    assert "sweep: 12 tasks on 2 worker processes" in late
    assert early[-1] == late[-1] == "chosen 4"
    for artifact in ("sse.csv", "assignments.parquet", "profile.csv"):
        a = (tmp_path / "early" / "runs" / "r1" / artifact).read_bytes()
        assert a == (tmp_path / "late" / "runs" / "r1" / artifact).read_bytes(), artifact


def test_a_failed_run_stops_the_workers_it_started_early(tmp_path):
    """A large input that fails to load has already started the worker processes: the run
    stops them as it fails, so the command exits at once rather than after their start-up
    (or, in a long-lived process, leaves none idling), and writes no run."""
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")  # noqa: F841 - used by the child
    csv = tmp_path / "customers.csv"
    csv.write_text("CustomerID,Annual Income (k$),Score\n" + "1,15,39\n" * 3000)
    code = """
import sys, psutil
import custseg.pipeline as p
p.EARLY_WORKERS_BYTES = 1
try:
    p.run_pipeline(p.PipelineConfig(), input_path=sys.argv[1], out=sys.argv[2])
except Exception as exc:
    print(type(exc).__name__, "|", exc)
kids = [" ".join(c.cmdline()) for c in psutil.Process().children(recursive=True)]
print("workers", sum("resource_tracker" not in c for c in kids))  # trackers live to the end
"""
    run = subprocess.run([sys.executable, "-c", code, str(csv), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("InputError | ") and "'Spending Score (1-100)' not found" in lines[0]
    assert lines[-1] == "workers 0"
    assert not (tmp_path / "out" / "runs").exists()


def test_the_profiles_other_columns_by_position_are_those_matched_by_id(
    mall_csv, messy_csv, tmp_path, monkeypatch
):
    """When no row was dropped the profile takes the other columns (Genre, Age) by row
    position, checked on the ids; the result is the id match's. With dropped rows (the messy
    file) it matches by id as before."""
    import numpy as np

    import custseg.pipeline as p
    from custseg.options import RunRequest

    by_position, taken = p._rows_in_order, []

    def recorded(*args, **kwargs):
        taken.append(by_position(*args, **kwargs))
        return taken[-1]

    for csv, dropped in ((mall_csv, False), (messy_csv, True)):
        request = RunRequest(input_path=str(csv), artifacts_root=str(tmp_path),
                             config=PipelineConfig())  # fmt: skip
        ctx = p.Context(request=request)
        table = p.STEP["table"].compute(ctx)
        prepared = p.STEP["prepared"].compute(ctx, table=table)
        assert (prepared.n_rows_used < table.n_rows_read) is dropped
        labels = np.arange(prepared.n_rows_used) % 4
        taken.clear()
        monkeypatch.setattr(p, "_rows_in_order", recorded)
        fast = p.profile_columns(str(csv), prepared, labels, 4)
        assert len(taken) == 1 and (taken[0] is None) is dropped
        monkeypatch.setattr(p, "_rows_in_order", lambda *a, **k: None)
        assert p.profile_columns(str(csv), prepared, labels, 4) == fast
        gender = [r for r in fast if r["column"] in ("Genre", "Gender")
                  and r["statistic"] in ("share Female", "share Male")]  # fmt: skip
        assert len(gender) == 2 and 0.4 < gender[0]["all"] < 0.6
        assert sum(r["all"] for r in gender) == pytest.approx(1.0, abs=1e-3)
