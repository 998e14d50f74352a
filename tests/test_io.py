import gzip

import numpy as np
import pytest

from custseg.errors import InputError
from custseg.io import load_customers, normalize_name, read_table, resolve_column, save_table

HEADER = "CustomerID,Genre,Age,Annual Income (k$),Spending Score (1-100)\n"


def test_loads_mall_with_default_features(mall_csv):
    t = load_customers(str(mall_csv))
    assert t.n_rows_read == 200
    assert t.features == ("Annual Income (k$)", "Spending Score (1-100)")
    assert t.id_column == "CustomerID"
    assert t.frame["CustomerID"].iloc[0] == "0001"  # ids stay text, leading zeros kept
    assert t.frame["Annual Income (k$)"].iloc[:3].tolist() == [15.0, 15.0, 16.0]
    assert t.sha256 == "901bc46e68f7178e84b05638d919c7d4d8e2c8b5e00e828c351af75bbcf662b4"


@pytest.mark.parametrize("name", ["Annual Income (k$)", "annual_income_k", "Annual_Income",
                                  "ANNUAL INCOME"])  # fmt: skip
def test_feature_names_match_insensitively(name):
    cols = ["CustomerID", "Gender", "Annual Income (k$)", "Spending Score (1-100)"]
    assert resolve_column(name, cols, source="f.csv") == "Annual Income (k$)"


def test_genre_and_gender_are_the_same_column():
    assert resolve_column("Genre", ["CustomerID", "Gender"], source="f") == "Gender"
    assert resolve_column("gender", ["Genre"], source="f") == "Genre"
    assert normalize_name("Spending Score (1-100)") == "spendingscore1100"


def test_missing_column_suggests_closest(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("id,Annual Incom,score\n1,2,3\n")
    with pytest.raises(InputError) as err:
        load_customers(str(p), features=["Annual Income (k$)"])
    msg = str(err.value)
    assert str(p) in msg and "'Annual Income (k$)'" in msg and "closest: 'Annual Incom'" in msg


def test_missing_tokens_become_nan(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text(HEADER + "1,Male,20,?,40\n2,Male,20,NA,40\n3,Male,20,,40\n4,Male,20,15,50\n")
    t = load_customers(str(p))
    assert np.isnan(t.frame["Annual Income (k$)"].to_numpy()[:3]).all()
    assert t.invalid == {}


def test_gzip_and_parquet_read_the_same(tmp_path, mall_csv):
    gz = tmp_path / "m.csv.gz"
    gz.write_bytes(gzip.compress(mall_csv.read_bytes()))
    pq_path = tmp_path / "m.parquet"
    import pandas as pd

    pd.read_csv(mall_csv, dtype={"CustomerID": str}).to_parquet(pq_path)
    a = load_customers(str(mall_csv))
    b = load_customers(str(gz))
    c = load_customers(str(pq_path))
    assert b.file_format == "csv+gzip" and c.file_format == "parquet"
    for other in (b, c):
        np.testing.assert_array_equal(a.frame[list(a.features)], other.frame[list(a.features)])


def test_table_round_trips_through_parquet(tmp_path, messy_csv):
    t = load_customers(str(messy_csv))
    save_table(t, str(tmp_path / "t.parquet"))
    back = read_table(str(tmp_path / "t.parquet"))
    assert back.features == t.features and back.n_rows_read == 812 and back.sha256 == t.sha256
    import pandas as pd

    pd.testing.assert_frame_equal(back.frame, t.frame, check_dtype=False)


def test_huge_rows_skips_nan_and_finds_infinities():
    from custseg.io import HUGE, _huge_rows

    nan = float("nan")
    assert _huge_rows(np.array([1.0, nan, -5.0, 9.9e99])).tolist() == []
    assert _huge_rows(np.array([nan, nan])).tolist() == []
    assert _huge_rows(np.array([])).tolist() == []
    values = np.array([1.0, np.inf, nan, -HUGE, 2.0, HUGE, -np.inf, -9.9e99])
    assert _huge_rows(values).tolist() == [1, 3, 5, 6]


def test_parquet_in_row_groups_reads_like_the_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"{i:04d}", None if i % 7 == 0 else float(i % 50), i % 40) for i in range(1, 301)]
    csv = tmp_path / "c.csv"
    csv.write_text(
        "CustomerID,income,score\n"
        + "".join(f"{c},{'' if a is None else a},{b}\n" for c, a, b in rows)
    )
    table = pa.table(
        {
            "CustomerID": pa.array([r[0] for r in rows]),
            "income": pa.array([r[1] for r in rows], pa.float32()),  # float32, with nulls
            "score": pa.array([r[2] for r in rows], pa.int32()),  # integers
        }
    )
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=64)  # 5 chunks per column
    a = load_customers(str(csv), features=["income", "score"])
    b = load_customers(str(tmp_path / "c.parquet"), features=["income", "score"])
    assert b.file_format == "parquet" and b.n_rows_read == 300
    for col in ("income", "score"):
        assert b.frame[col].dtype == np.float64
        np.testing.assert_array_equal(a.frame[col].to_numpy(), b.frame[col].to_numpy())
    assert np.isnan(b.frame["income"].to_numpy()).sum() == 42
    assert b.frame["CustomerID"].tolist() == a.frame["CustomerID"].tolist()
    assert b.frame["CustomerID"].iloc[63:65].tolist() == ["0064", "0065"]  # across row groups
