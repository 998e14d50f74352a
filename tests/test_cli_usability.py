"""What a newcomer meets first: flags, help, messages and warnings of the `custseg` command."""

from __future__ import annotations

import json

import pytest

from custseg.cli import main

FAST = ["--n-init", "2", "--select", "elbow", "--no-progress"]


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_verbose_works_after_the_subcommand_too(capsys, tmp_path, sample_csv):
    """`custseg run -v ...` said 'unrecognized arguments: -v'."""
    rc, _, err = run_cli(capsys, "run", "-v", "--input", sample_csv, "--out", tmp_path,
                         "--k-max", "6", *FAST)  # fmt: skip
    assert rc == 0, err
    assert "INFO: load: 400 rows" in err


def test_help_shows_each_default_once(capsys):
    """Some lines read `(default: automatic...) (default: None)`."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in text
    for shown in ("(default: minmax)", "(default: 42)", "(default: 50)", "(default: artifacts)"):
        assert shown in text, shown
    assert "--sample-size ROWS" in text and "(default: automatic: max(5000" in text
    assert ".bz2, .xz, .zst" in text  # --input lists every accepted format


def test_k_max_zero_says_what_is_allowed(capsys, tmp_path, sample_csv):
    """`--k-max 0` said 'swap them', and swapping gives an invalid k_min=0."""
    rc, _, err = run_cli(capsys, "run", "--input", sample_csv, "--out", tmp_path, "--k-max", "0")
    assert rc == 2 and err.strip().endswith("custseg: error: k_max=0 must be >= 1")


def test_a_missing_feature_suggests_no_id_column(capsys, tmp_path, mall_csv):
    rc, _, err = run_cli(capsys, "run", "--input", mall_csv, "--out", tmp_path,
                         "--features", "Income", "Spending Score")  # fmt: skip
    assert rc == 2 and "closest:" in err and "'CustomerID'" not in err.split("closest:")[1]


def test_a_model_path_that_does_not_exist_says_so(capsys, tmp_path, sample_csv):
    rc, _, err = run_cli(capsys, "predict", "--model", tmp_path / "nope", "--input", sample_csv)
    assert rc == 2 and f"{tmp_path / 'nope'}: does not exist" in err


def test_warnings_are_printed_once_and_name_duplicate_lines(capsys, tmp_path):
    """Warnings came twice (stdout `warning:` and stderr `WARNING:`); dropped duplicates had
    no warning naming their lines."""
    header = "CustomerID,Annual Income (k$),Spending Score (1-100)\n"
    body = "".join(f"{i},{10 + i % 9 * 7},{i * 31 % 97}\n" for i in range(1, 41))
    path = tmp_path / "dups.csv"
    path.write_text(header + body + "3,31,93\n7,59,23\n")  # rows 3 and 7 again: lines 42, 43
    rc, out, err = run_cli(capsys, "run", "--input", path, "--out", tmp_path / "o",
                           "--k-max", "6", *FAST)  # fmt: skip
    assert rc == 0, err
    assert "WARNING" not in err
    lines = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert lines == [f"warning: {path}: dropped 2 exact duplicate row(s) (same id and values as "
                     "an earlier row; line 42, 43)"]  # fmt: skip


def test_the_k_max_clamp_is_a_recorded_warning(capsys, tmp_path):
    """`clamping k_max to 2` went to stderr only, missing from metrics.json's warnings."""
    path = tmp_path / "two.csv"
    path.write_text("CustomerID,Annual Income (k$),Spending Score (1-100)\n"
                    + "".join(f"{i},{10 if i % 2 else 90},{5 if i % 2 else 95}\n"
                              for i in range(1, 21)))  # fmt: skip
    rc, out, err = run_cli(capsys, "run", "--input", path, "--out", tmp_path / "o",
                           "--k-max", "5", "--run-id", "c", *FAST)  # fmt: skip
    assert rc == 0, err
    metrics = json.loads((tmp_path / "o" / "runs" / "c" / "metrics.json").read_text())
    clamp = "k_max=5 > 2 distinct usable points: k_max clamped to 2"
    assert clamp in metrics["warnings"] and f"warning: {clamp}" in out


def test_runs_lists_and_show_takes_a_run_id(capsys, tmp_path, sample_csv):
    for run_id in ("a", "b"):
        rc, _, err = run_cli(capsys, "run", "--input", sample_csv, "--out", tmp_path,
                             "--k-max", "6", "--run-id", run_id, *FAST)  # fmt: skip
        assert rc == 0, err
    rc, out, _ = run_cli(capsys, "runs", "--out", tmp_path)
    rows = [ln.split() for ln in out.splitlines()[1:]]
    assert [(r[0], r[-1]) for r in rows] == [("a", "complete"), ("b", "promoted")]
    chosen = json.loads((tmp_path / "runs" / "a" / "metrics.json").read_text())["chosen_k"]
    assert all(r[2] == str(chosen) and r[-2] == "400" for r in rows)  # k and rows used
    rc, out, _ = run_cli(capsys, "show", "--out", tmp_path, "--run-id", "a")
    assert rc == 0 and out.startswith("custseg run a\n") and "latest:" not in out
    rc, _, err = run_cli(capsys, "show", "--out", tmp_path, "--run-id", "zz")
    assert rc == 2 and "no such run" in err
