"""The run directory and the artifacts root: where runs live, how latest.json resolves, what a
run records when it starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from custseg.options import PipelineConfig, RunRequest
from custseg.orchestration import run_step, start_run
from custseg.pipeline import run_pipeline
from custseg.rundir import ArtifactStore, resolve_run

FAST = PipelineConfig(k_max=6, n_init=2, select="elbow")


def custseg(*args, cwd):
    return subprocess.run([sys.executable, "-m", "custseg.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)  # fmt: skip


@pytest.mark.slow
def test_a_relative_out_resolves_from_any_working_directory(tmp_path, sample_csv):
    """`--out rel_out` wrote `"run_dir": "rel_out/runs/<id>"`, which `show` and `predict`
    could not find from another directory (FileNotFoundError, "incomplete run")."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    res = custseg("run", "--input", sample_csv, "--out", "rel_out", "--k-max", "4",
                  "--run-id", "r1", cwd=work)  # fmt: skip
    assert res.returncode == 0, res.stderr
    root = work / "rel_out"
    latest = json.loads((root / "latest.json").read_text())
    assert latest == {"run_id": "r1", "run_dir": str(root / "runs" / "r1")}
    show = custseg("show", "--out", root, cwd=elsewhere)
    assert show.returncode == 0, show.stderr
    assert f"artifacts: {root / 'runs' / 'r1'}" in show.stdout
    pred = custseg("predict", "--model", root, "--input", sample_csv, "--out", "p.csv",
                   cwd=elsewhere)  # fmt: skip
    assert pred.returncode == 0, pred.stderr
    assert len((elsewhere / "p.csv").read_text().splitlines()) == 401


@pytest.mark.parametrize("pointer", ["out/runs/r1", "runs/r1", "/moved/away/runs/r1"])
def test_older_and_moved_pointers_still_resolve(tmp_path, sample_csv, pointer):
    """A cwd-relative pointer of custseg 0.1, or an absolute one whose root was moved, is
    looked up as runs/<run_id> under the root that holds latest.json."""
    root = tmp_path / "out"
    run_pipeline(FAST, input_path=str(sample_csv), out=str(root), run_id="r1")
    (root / "latest.json").write_text(json.dumps({"run_id": "r1", "run_dir": pointer}))
    assert ArtifactStore(root).latest().uri == str(root / "runs" / "r1")
    assert resolve_run(str(root)).metrics()["run_id"] == "r1"


def test_a_path_that_does_not_exist_says_so(tmp_path):
    from custseg.errors import InputError

    with pytest.raises(InputError, match=r"nope: does not exist; pass a run directory"):
        resolve_run(str(tmp_path / "nope"))


def test_alignment_uses_the_reference_recorded_at_start(tmp_path, sample_csv):
    """A run aligns to the run promoted when it started, even if another run is promoted
    while it works (runs started together used to race on latest.json during the fit)."""
    root = tmp_path / "out"
    first = run_pipeline(FAST, input_path=str(sample_csv), out=str(root), run_id="first")
    request = RunRequest(input_path=str(sample_csv), artifacts_root=str(root), config=FAST)
    run, _ = start_run(request, run_id="slow")
    assert run.record().reference.run_id == "first"
    # another run finishes and is promoted while "slow" is still at work
    run_pipeline(PipelineConfig(k_max=6, n_init=2, select="elbow"), input_path=str(sample_csv),
                 out=str(root), run_id="meanwhile")  # fmt: skip
    assert ArtifactStore(root).latest().run_id == "meanwhile"
    for step in ("prepared", "plan", "sweep", "selection", "fitted", "segments", "profile"):
        run_step(step, run.uri)
    summary = run_step("summary", run.uri)
    metrics = run.metrics()
    assert metrics["reference_run_id"] == "first"
    assert metrics["segment_alignment"]["previous_run_id"] == "first"
    assert metrics["segment_alignment"]["previous_k"] == first["chosen_k"]
    assert summary["run_id"] == "slow" and ArtifactStore(root).latest().run_id == "slow"


def test_a_retried_step_gives_the_same_result(tmp_path, sample_csv):
    """Each step reads only what its run recorded and handed over: run twice, it writes the
    same model (centers) and the same alignment."""
    root = tmp_path / "out"
    run_pipeline(FAST, input_path=str(sample_csv), out=str(root), run_id="first")
    request = RunRequest(input_path=str(sample_csv), artifacts_root=str(root), config=FAST)
    run, _ = start_run(request, run_id="retried")
    for step in ("prepared", "plan", "sweep", "selection", "fitted"):
        run_step(step, run.uri)
    first = run_step("segments", run.uri)
    centers = run.load_model()[-1].cluster_centers_
    again = run_step("segments", run.uri)
    assert first.alignment == again.alignment and first.alignment["aligned"] is True
    assert (run.load_model()[-1].cluster_centers_ == centers).all()


def test_cli_flags_are_generated_from_the_option_spec():
    """Every option the CLI offers has its flag in `custseg run --help`, with its help."""
    from custseg.cli import build_parser
    from custseg.options import CLI, all_options, cli_flags

    run = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = {f for a in run._actions for f in a.option_strings}
    for name, (spec, _) in all_options(CLI).items():
        assert set(cli_flags(name, spec)) <= flags, name
    assert {"--n-init", "--sample-size", "--select", "--input", "--out"} <= flags
    assert "--sweep-batches" not in flags  # an Airflow execution option
