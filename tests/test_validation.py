"""Bad input through `custseg run` / `predict`: exit 2, one clear line, latest.json untouched.

Each case runs the real CLI in-process (`custseg.cli.main`) against an artifacts root that
already holds a complete, promoted run, and checks the exit code, the key words of the
message and that `latest.json` still names the earlier run.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from custseg.cli import main
from custseg.errors import InputError
from custseg.io import load_customers
from custseg.options import PipelineConfig

HEADER = "CustomerID,Genre,Age,Annual Income (k$),Spending Score (1-100)\n"
FAST = ("--k-max", "3", "--n-init", "1", "--no-progress")


def _rows(n: int = 30, start: int = 1) -> str:
    rng = np.random.default_rng(7)
    centers = [(20, 20), (50, 80), (90, 30)]
    lines = []
    for i in range(n):
        cx, cy = centers[i % 3]
        inc, score = cx + rng.integers(-5, 6), cy + rng.integers(-5, 6)
        lines.append(f"{start + i},Male,{20 + i % 40},{inc},{score}\n")
    return "".join(lines)


GOOD = HEADER + _rows()


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An artifacts root with one complete promoted run, and a good input file."""
    root = tmp_path_factory.mktemp("validation")
    good = root / "good.csv"
    good.write_text(GOOD)
    out = root / "out"
    assert main(["run", "--input", str(good), "--out", str(out), "--run-id", "base", *FAST]) == 0
    return root, out


def write(path: Path, data: str | bytes) -> Path:
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)
    return path


def fails(capsys, base, input_path, *extra: str, words: tuple[str, ...]) -> str:
    """Run, expect exit 2 with one `custseg: error:` line holding `words`; latest unchanged and
    no run directory left behind (validation passes before the run directory is created)."""
    _, out = base
    before = (out / "latest.json").read_bytes()
    runs = sorted(p.name for p in (out / "runs").iterdir())
    rc, stdout, err = run_cli(capsys, "run", "--input", input_path, "--out", out, *FAST, *extra)
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs
    assert rc == 2, err
    assert "Traceback" not in err and stdout == ""
    line = err.strip().splitlines()[-1]
    assert line.startswith("custseg: error: ")
    for word in words:
        assert word in line, line
    assert (out / "latest.json").read_bytes() == before
    assert json.loads(before)["run_id"] == "base"
    return line


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# name -> (file content, extra args, key words of the message)
BAD_FILES: dict[str, tuple[bytes | str, tuple[str, ...], tuple[str, ...]]] = {
    "empty_file": (b"", (), ("empty",)),
    "blank_lines_only": ("\n \n\n", (), ("empty",)),
    "header_only": (HEADER, (), ("header only", "no data rows")),
    "missing_column": (
        "CustomerID,Annual Incom,Spending Score (1-100)\n1,2,3\n2,4,5\n",
        (),
        ("required column 'Annual Income (k$)' not found", "closest: 'Annual Incom'", "--features"),
    ),  # fmt: skip
    "duplicate_column_names": (
        "id,Annual Income (k$),Annual Income (k$),Spending Score (1-100)\n1,2,3,4\n",
        (),
        ("duplicate column name 'Annual Income (k$)'", "columns 2 and 3", "rename"),
    ),
    "binary": (bytes(range(256)) * 8, (), ("binary", "CSV")),
    "old_excel": (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"x" * 100, (), ("binary",)),
    "xlsx": (
        zipped({"[Content_Types].xml": b"<x/>", "xl/workbook.xml": b"<w/>"}),
        (),
        ("Excel workbook", "CSV UTF-8"),
    ),
    "utf16": (GOOD.encode("utf-16"), (), ("UTF-16", "CSV UTF-8")),
    "latin1_in_feature": (
        (HEADER + _rows(3) + "4,Male,30,4\xe42,50\n").encode("latin-1"),
        (),
        ("not UTF-8", "column 'Annual Income (k$)'", "byte 0xe4 on line 5", "re-save"),
    ),
    "latin1_in_header": (
        ("Kundennummer,Gr\xf6\xdfe,Annual Income (k$),Spending Score (1-100)\n1,2,3,4\n").encode(
            "latin-1"
        ),
        (),
        ("header line is not UTF-8", "0xf6"),
    ),
    "ragged_row_short": (
        HEADER + _rows(5) + "6,Male,20,60\n" + _rows(3, 7),
        (),
        ("line 7 has 4 field(s) but the header has 5", "'6,Male,20,60'"),
    ),
    "ragged_row_long": (
        HEADER + _rows(2) + "3,Male,20,60,5,9\n",
        (),
        ("line 4 has 6 field(s) but the header has 5",),
    ),
    "unclosed_quote": (
        HEADER + _rows(2) + '3,"Male,20,60,5\n4,Male,1,2,3\n',
        (),
        ("line 4", "field(s)", "quoting"),
    ),
    "mostly_text_feature": (
        HEADER + "".join(f"{i},M,30,high,{i}\n" for i in range(1, 11)),
        (),
        ("column 'Annual Income (k$)' is not numeric", "10 of 10", "line 2: 'high'", "--features"),
    ),
    "all_rows_missing": (
        HEADER + "1,M,20,?,50\n2,M,20,60,NA\n3,M,20,,\n",
        (),
        ("no usable rows", "all 3 rows miss a feature"),
    ),
    "feature_column_empty": (
        HEADER + "1,M,20,,50\n2,M,20,,40\n",
        (),
        ("no usable rows", "['Annual Income (k$)'] hold no numbers"),
    ),
    "one_distinct_row": (
        HEADER + "1,M,20,15,50\n2,F,30,15,50\n3,M,40,15,50\n",
        (),
        ("only 1 distinct usable customer", "at least 2"),
    ),
    "constant_feature": (
        HEADER + "1,M,20,15,50\n2,F,30,25,50\n3,M,40,35,50\n",
        (),
        ("feature 'Spending Score (1-100)' is constant", "50 in every usable row"),
    ),
    "unknown_delimiter": (
        GOOD.replace(",", ":"),
        (),
        ("the header line has no , ; tab or | delimiter (one column)",),
    ),
    "damaged_gzip": (gzip.compress(GOOD.encode())[:40], (), ("gzip file is damaged",)),
    "zip_with_two_files": (
        zipped({"a.csv": GOOD.encode(), "b.csv": GOOD.encode()}),
        (),
        ("zip archive holds 2 files", "exactly one CSV"),
    ),
    "same_column_twice_in_features": (
        GOOD,
        ("--features", "annual income", "Annual Income (k$)"),
        ("name the same column twice",),
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_exits_2_with_clear_message(capsys, base, tmp_path, case):
    data, extra, words = BAD_FILES[case]
    path = write(tmp_path / f"{case}.csv", data)
    line = fails(capsys, base, path, *extra, words=words)
    if case not in ("same_column_twice_in_features",):
        assert str(path) in line  # the message names the file


def test_missing_path(capsys, base, tmp_path):
    fails(capsys, base, tmp_path / "nope.csv", words=("nope.csv: file not found", "check the path"))


def test_directory_instead_of_file(capsys, base, tmp_path):
    fails(capsys, base, tmp_path, words=("is a directory", "CSV or Parquet"))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--k-min", "0"), ("k_min=0 must be >= 1",)),
        (("--k-max", "0"), ("k_max=0 must be >= 1",)),
        (("--k-max", "201"), ("k_max=201 must be <= 200",)),
        (("--n-init", "0"), ("n_init=0 must be >= 1",)),
        (("--k-min", "9", "--k-max", "3"), ("k_min=9 > k_max=3",)),
        (("--scaler", "zscore"), ("--scaler", "invalid choice: 'zscore'")),
        (("--select", "silhouette-magic"), ("--select", "invalid choice")),
        (("--k-max", "many"), ("--k-max", "invalid int value")),
        (("--run-id", "base"), ("exists already", "new run id")),
    ],
    ids=["k_min_lt_1", "k_max_lt_1", "k_max_gt_200", "n_init_lt_1", "k_min_gt_k_max",
         "unknown_scaler", "unknown_select", "k_not_int", "run_id_reused"],
)  # fmt: skip
def test_bad_options_exit_2(capsys, base, args, words):
    root, _ = base
    fails(capsys, base, root / "good.csv", *args, words=words)


def test_out_is_a_file(capsys, base, tmp_path):
    root, _ = base
    target = write(tmp_path / "out.txt", "x")
    rc, _, err = run_cli(capsys, "run", "--input", root / "good.csv", "--out", target, *FAST)
    assert rc == 2 and "is a file, not a directory" in err and "Traceback" not in err


def test_library_rejects_bad_options():
    for kwargs, words in [
        ({"k_min": 0}, "k_min=0 must be >= 1"),
        ({"k_min": 5, "k_max": 2}, "k_min=5 > k_max=2"),
        ({"k_max": True}, "k_max=True is not a whole number"),
        ({"scaler": "zscore"}, "scaler='zscore' is not one of minmax, standard, robust, none"),
        ({"select": "magic"}, "select='magic' is not one of auto, elbow"),
        ({"sample_size": 99}, "sample_size=99 must be >= 100"),
        ({"features": []}, "features is empty"),
    ]:
        with pytest.raises(InputError, match=words):
            PipelineConfig(**kwargs)


def test_test_file_lacking_a_model_feature(capsys, base, tmp_path):
    root, _ = base
    test = write(tmp_path / "t.csv", "CustomerID,Annual Income (k$)\n1,20\n")
    line = fails(capsys, base, root / "good.csv", "--test", test,
                 words=("t.csv", "'Spending Score (1-100)' not found",
                        "the model of this run needs it"))  # fmt: skip
    assert "--features" not in line  # the fix is to add the column, not to change features
    rc, _, err = run_cli(capsys, "predict", "--model", base[1], "--input", test,
                         "--out", tmp_path / "p.csv")  # fmt: skip
    assert rc == 2 and "Traceback" not in err
    assert "the model in" in err and "runs/base needs it as a feature" in err
    assert not (tmp_path / "p.csv").exists()


def test_test_values_far_outside_training_range_are_flagged(capsys, base, tmp_path):
    root, _ = base
    test = write(tmp_path / "t.csv", "CustomerID,Annual Income (k$),Spending Score (1-100)\n"
                                     "a,50,50\nb,5000,50\nc,40,-300\n")  # fmt: skip
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "run", "--input", root / "good.csv", "--test", test,
                              "--out", out, *FAST)  # fmt: skip
    assert rc == 0, err
    assert "predictions: 3 customers" in stdout and "2 far outside the training range" in stdout
    assert "warning:" in stdout and "2 test customer(s) lie far outside" in stdout
    run_dir = Path(json.loads((out / "latest.json").read_text())["run_dir"])
    pred = pd.read_csv(run_dir / "predictions.csv", keep_default_na=False)
    assert pred["out_of_range"].tolist() == ["", "Annual Income (k$)", "Spending Score (1-100)"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["predictions"]["n_out_of_range"] == 2
    rc, stdout, _ = run_cli(capsys, "predict", "--model", out, "--input", test,
                            "--out", tmp_path / "p.csv")  # fmt: skip
    assert rc == 0 and "warning: 2 customer(s) far outside the training range" in stdout


def _ok_run(capsys, tmp_path, path, *extra):
    out = tmp_path / "out"
    rc, stdout, err = run_cli(capsys, "run", "--input", path, "--out", out, *FAST, *extra)
    assert rc == 0, err
    metrics = json.loads((Path(json.loads((out / "latest.json").read_text())["run_dir"])
                          / "metrics.json").read_text())  # fmt: skip
    return stdout, err, metrics


def test_non_numeric_cells_drop_their_rows_with_lines(capsys, tmp_path):
    path = write(tmp_path / "junk.csv", GOOD + "31,M,20,abc,50\n32,M,20,60,n/a!\n")
    stdout, err, metrics = _ok_run(capsys, tmp_path, path)
    assert metrics["n_rows_dropped"] == {"non_numeric": 2}
    assert metrics["n_rows_read"] == 32 and metrics["n_rows_used"] == 30
    assert "dropped: 2 non_numeric" in stdout
    assert "column 'Annual Income (k$)' has 1 non-numeric value(s) (line 32: 'abc')" in stdout
    assert "(line 33: 'n/a!')" in stdout and "those rows are dropped" in stdout


def test_infinities_drop_their_rows(capsys, tmp_path):
    path = write(tmp_path / "inf.csv", GOOD + "31,M,20,inf,50\n32,M,20,60,-Infinity\n"
                                              "33,M,20,1e308,50\n34,M,20,1e99,50\n")  # fmt: skip
    stdout, _, metrics = _ok_run(capsys, tmp_path, path)
    assert metrics["n_rows_dropped"] == {"non_finite": 3}  # 1e99 is kept: it does not overflow
    assert "column 'Annual Income (k$)' has 2 infinite or huge (|x| >= 1e+100)" in stdout
    assert "(line 32, 34)" in stdout and "(line 33)" in stdout


def test_duplicates_and_conflicting_ids_are_counted(capsys, tmp_path):
    rows = _rows(30)
    first = rows.splitlines()[0]
    conflict = "1,Male,20,99,1"
    path = write(
        tmp_path / "dups.csv", HEADER + rows + first + "\n" + first + "\n" + conflict + "\n"
    )
    stdout, _, metrics = _ok_run(capsys, tmp_path, path)
    assert metrics["n_rows_dropped"] == {"duplicate": 2, "conflicting_id": 1}
    assert "dropped: 2 duplicate, 1 conflicting_id" in stdout
    assert "'1' (line 34)" in stdout and "the first row of each id is kept" in stdout


def test_messy_mall_reports_exactly_what_it_dropped(capsys, tmp_path, messy_csv):
    stdout, err, metrics = _ok_run(capsys, tmp_path, messy_csv)
    # verified independently with pandas: 30 '?' incomes + 60 '?' scores on distinct rows,
    # 12 rows repeated verbatim
    assert metrics["n_rows_read"] == 812
    assert metrics["n_rows_dropped"] == {"missing": 90, "duplicate": 12}
    assert metrics["n_rows_used"] == 710
    assert "rows: 812 read, 710 used, dropped: 90 missing, 12 duplicate" in stdout
    assert "Traceback" not in err


def test_latin1_outside_the_read_columns_is_accepted(capsys, tmp_path):
    text = GOOD.replace(",Male,", ",M\xe4nnlich,")
    _, _, metrics = _ok_run(capsys, tmp_path, write(tmp_path / "l.csv", text.encode("latin-1")))
    assert metrics["n_rows_used"] == 30


def test_excel_export_semicolon_bom_crlf_end_to_end(capsys, tmp_path):
    data = b"\xef\xbb\xbf" + GOOD.replace(",", ";").replace("\n", "\r\n").encode()
    _, _, metrics = _ok_run(capsys, tmp_path, write(tmp_path / "excel.csv", data))
    assert metrics["n_rows_used"] == 30 and metrics["features"][0] == "Annual Income (k$)"


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("plain") / "p.csv"
    path.write_text(GOOD)
    return load_customers(str(path))


def _same(a, b):
    assert b.features == a.features and b.id_column == a.id_column
    pd.testing.assert_frame_equal(a.frame, b.frame)


@pytest.mark.parametrize("delim", [";", "\t", "|"], ids=["semicolon", "tab", "pipe"])
def test_delimiters_are_detected(tmp_path, plain, delim):
    t = load_customers(str(write(tmp_path / "d.csv", GOOD.replace(",", delim))))
    _same(plain, t)


def test_delimiter_detection_ignores_quoted_commas(tmp_path, plain):
    text = GOOD.replace(",", ";").replace("Male", '"Male, adult"')
    _same(plain, load_customers(str(write(tmp_path / "q.csv", text))))


@pytest.mark.parametrize(
    ("kind", "pack"),
    [
        ("gzip", gzip.compress),
        ("bz2", bz2.compress),
        ("xz", lzma.compress),
        ("zip", lambda b: zipped({"export/customers.csv": b})),
        ("zstd", lambda b: pa.compress(b, codec="zstd", asbytes=True)),
    ],
)
def test_compressed_inputs_read_like_plain(tmp_path, plain, kind, pack):
    t = load_customers(str(write(tmp_path / "c.bin", pack(GOOD.encode()))))
    assert t.file_format == f"csv+{kind}"
    _same(plain, t)


def test_excel_bom_is_stripped(tmp_path, plain):
    t = load_customers(str(write(tmp_path / "b.csv", b"\xef\xbb\xbf" + GOOD.encode())))
    assert t.frame.columns[0] == "CustomerID"
    _same(plain, t)


def test_internal_error_exits_1_and_points_at_the_log(capsys, tmp_path):
    out = tmp_path / "out"
    (out / "latest.json").mkdir(parents=True)  # promotion cannot replace a directory
    good = write(tmp_path / "g.csv", GOOD)
    rc, _, err = run_cli(capsys, "run", "--input", good, "--out", out, *FAST)
    assert rc == 1
    assert "custseg: internal error: IsADirectoryError" in err and "Traceback" not in err
    log_file = out / "custseg.log"
    assert f"details in {log_file}" in err
    text = log_file.read_text()
    assert "Traceback (most recent call last)" in text and "IsADirectoryError" in text


def test_internal_error_without_out_dir_points_at_a_temp_log(capsys, base, tmp_path):
    """`predict` has no OUT: a damaged run directory's traceback goes to a temporary log."""
    import shutil

    _, out = base
    run_dir = tmp_path / "damaged"
    shutil.copytree(out / "runs" / "base", run_dir)
    (run_dir / "metrics.json").write_text("{}")  # complete-looking, but damaged
    test = write(
        tmp_path / "t.csv", "CustomerID,Annual Income (k$),Spending Score (1-100)\n1,5,5\n"
    )
    rc, _, err = run_cli(capsys, "predict", "--model", run_dir, "--input", test,
                         "--out", tmp_path / "p.csv")  # fmt: skip
    assert rc == 1 and "custseg: internal error: FileNotFoundError" in err
    assert "Traceback" not in err
    log_path = Path(err.strip().rsplit("details in ", 1)[1])
    assert log_path.name.startswith("custseg-error-") and "preprocess.json" in log_path.read_text()
    log_path.unlink()


def test_excel_sep_line_and_blank_lines_before_header(capsys, tmp_path):
    """Excel's `sep=;` first line names the delimiter; leading blank lines are skipped; the
    reported line numbers are the file's own (line 1 is the first line of the file)."""
    body = GOOD.replace(",", ";")
    text = "sep=;\n\n" + body + "31;M;20;?;50\n32;M;20;abc;50\n"  # header on line 3
    stdout, _, metrics = _ok_run(capsys, tmp_path, write(tmp_path / "sep.csv", text))
    assert metrics["n_rows_read"] == 32 and metrics["n_rows_used"] == 30
    assert "(line 35: 'abc')" in stdout  # 3 + 30 rows + 2
    assert "missing a feature in ['Annual Income (k$)'] (line 34)" in stdout
    t = load_customers(str(write(tmp_path / "blank.csv", "\n\n" + GOOD)))
    assert t.n_rows_read == 30 and t.line_of(0) == 4


def test_parquet_problems_name_rows(capsys, base, tmp_path):
    """Parquet has no lines: the messages count rows from 1."""
    frame = pd.read_csv(io.StringIO(GOOD), dtype={"CustomerID": str})
    frame["Annual Income (k$)"] = frame["Annual Income (k$)"].astype(str)
    frame.loc[3, "Annual Income (k$)"] = "abc"
    frame["Spending Score (1-100)"] = frame["Spending Score (1-100)"].astype(float)
    frame.loc[5, "Spending Score (1-100)"] = float("inf")
    frame.to_parquet(tmp_path / "t.parquet")
    stdout, _, metrics = _ok_run(capsys, tmp_path, tmp_path / "t.parquet")
    assert metrics["n_rows_dropped"] == {"non_numeric": 1, "non_finite": 1}
    assert "(row 4: 'abc')" in stdout and "value(s) (row 6)" in stdout
    broken = write(tmp_path / "b.parquet", (tmp_path / "t.parquet").read_bytes()[:300])
    line = fails(capsys, base, broken, words=("not a readable Parquet file",))
    assert str(broken) in line
