"""`custseg features`: an order log to one row per customer, checked on the real CDNOW orders."""

from __future__ import annotations

import pandas as pd
import pytest

from custseg.cli import main
from custseg.errors import InputError
from custseg.rfm import customer_features, rfm_query
from tests.conftest import shared_file

COLUMNS = {"customer": "customer_id", "date": "date", "amount": "dollar_value"}


@pytest.fixture(scope="module")
def cdnow():
    return shared_file("cdnow_transactions.csv")


@pytest.fixture(scope="module")
def cdnow_features(cdnow, tmp_path_factory):
    out = tmp_path_factory.mktemp("rfm") / "customers.parquet"
    summary = customer_features(str(cdnow), out=str(out), **COLUMNS)
    return summary, pd.read_parquet(out)


def test_the_cdnow_facts_hold(cdnow_features):
    """The data's README: 69,659 orders, 23,570 customers, 1997-01-01..1998-06-30, total
    dollar_value 2,500,315.63, 80 orders of value 0."""
    summary, frame = cdnow_features
    assert (summary.n_rows, summary.n_customers) == (69_659, 23_570)
    assert (summary.first_date, summary.last_date, summary.as_of) == (
        "1997-01-01", "1998-06-30", "1998-07-01")  # fmt: skip
    assert summary.n_zero == 80 and summary.n_refunds == 0 and summary.n_bad_date == 0
    assert len(frame) == 23_570 and frame["customer_id"].is_unique
    assert round(frame["monetary_total"].sum(), 2) == 2_500_315.63
    assert frame["orders"].sum() == 69_659
    assert list(frame.columns) == ["customer_id", "recency_days", "frequency", "orders",
                                   "monetary_total", "monetary_mean", "tenure_days", "r_score",
                                   "f_score", "m_score", "rfm_segment"]  # fmt: skip


def test_each_customer_row_follows_the_rules(cdnow, cdnow_features):
    _, frame = cdnow_features
    orders = pd.read_csv(cdnow, dtype={"customer_id": str}, parse_dates=["date"])
    as_of = pd.Timestamp("1998-07-01")
    by = orders.groupby("customer_id")
    expected = pd.DataFrame({
        "recency_days": (as_of - by["date"].max()).dt.days,
        "frequency": by["date"].nunique(),
        "orders": by.size(),
        "monetary_mean": by["dollar_value"].mean(),
        "tenure_days": (as_of - by["date"].min()).dt.days,
    })  # fmt: skip
    got = frame.set_index("customer_id").loc[expected.index]
    for column in expected:
        assert (got[column] - expected[column]).abs().max() < 1e-9, column
    # several orders on one day are one visit: frequency counts days
    assert (got["frequency"] < got["orders"]).sum() == int(
        (by.size() > by["date"].nunique()).sum())  # fmt: skip
    assert got.loc["00001", "recency_days"] == 546  # one order, on 1997-01-01


def test_bad_rows_are_counted_with_their_lines_and_refunds_subtracted(tmp_path, capsys):
    log = tmp_path / "orders.csv"
    log.write_text("cust,day,value\na,2024-01-01,10\na,2024-01-03,-4\nb,yesterday,5\n"
                   "b,2024-01-02,7\nc,2024-01-02,x\nd,2024-01-04,0\n")  # fmt: skip
    out = tmp_path / "c.csv"
    rc = main(["features", "--transactions", str(log), "--customer", "cust", "--date", "day",
               "--amount", "value", "--out", str(out)])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0
    assert f"{log}: 1 row(s) with an unparseable date dropped (line 4)" in text
    assert f"{log}: 1 row(s) with an unparseable amount dropped (line 6)" in text
    assert "1 refund(s) (negative amounts) subtracted from monetary_total" in text
    assert "1 zero-value order(s): counted as orders" in text
    frame = pd.read_csv(out, index_col="cust")
    assert frame.loc["a", "monetary_total"] == 6 and frame.loc["a", "orders"] == 1
    assert frame.loc["a", "monetary_mean"] == 10 and frame.loc["a", "recency_days"] == 4
    assert frame.loc["b", "orders"] == 1 and frame.loc["d", "monetary_mean"] == 0
    assert "c" not in frame.index  # its only row had no amount


@pytest.mark.parametrize(("args", "message"), [
    (["--customer", "nope"], "no column 'nope' (--customer); the file has 'customer_id', 'date'"),
    (["--as-of", "1998-13-01"], "--as-of='1998-13-01' is not a date"),
    (["--out", "x.xlsx"], "write .parquet or .csv"),
])  # fmt: skip
def test_bad_options_exit_2_with_one_line(cdnow, tmp_path, capsys, args, message):
    base = {"--transactions": str(cdnow), "--customer": "customer_id", "--date": "date",
            "--amount": "dollar_value", "--out": str(tmp_path / "c.parquet")}  # fmt: skip
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    rc = main(["features", *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    with pytest.raises(InputError, match="file not found"):
        customer_features(str(tmp_path / "missing.csv"), out=str(tmp_path / "o.parquet"),
                          **COLUMNS)  # fmt: skip


def test_the_printed_sql_gives_the_same_customers_on_a_table(cdnow, cdnow_features, capsys):
    """What --print-sql shows is the whole rule set: run on a plain table named `orders`
    (as in a warehouse), it gives the same rows."""
    import duckdb

    assert main(["features", "--transactions", str(cdnow), "--customer", "customer_id",
                 "--date", "date", "--amount", "dollar_value", "--out", "x.parquet",
                 "--print-sql"]) == 0  # fmt: skip
    sql = capsys.readouterr().out
    assert sql.strip().endswith('ORDER BY "customer_id"') and "TRY_CAST" in sql
    assert "\\x0a" not in sql and len(sql.splitlines()) > 30
    con = duckdb.connect()
    con.execute(f"CREATE TABLE orders AS SELECT * FROM read_csv('{cdnow}', all_varchar=true)")
    body = "\n".join(sql.splitlines()[1:])  # the printed text itself, minus its comment
    printed = con.execute(body).df()
    got = con.execute(rfm_query("customer_id", "date", "dollar_value", None)).df()
    _, frame = cdnow_features
    pd.testing.assert_frame_equal(got.reset_index(drop=True), frame, check_dtype=False)
    pd.testing.assert_frame_equal(printed, got)


def _score(values: pd.Series, *, descending: bool = False) -> pd.Series:
    ranks = (-values if descending else values).rank(method="min")
    pct = (ranks - 1) / (len(values) - 1)  # PERCENT_RANK: ties share the lowest
    return (1 + (5 * pct).apply(int)).clip(upper=5)


def _segment(r: int, f: int) -> str:
    """The README's rule table, first match wins."""
    rules = [(r >= 4 and f >= 4, "Champions"), (r >= 3 and f >= 3, "Loyal"),
             (r >= 4 and f == 2, "Potential loyalists"), (r == 5 and f == 1, "New customers"),
             (r == 4 and f == 1, "Promising"), (r == 3 and f == 2, "Need attention"),
             (r == 3 and f == 1, "About to sleep"), (f == 5, "Cannot lose them"),
             (f >= 3, "At risk"), (r == 2, "Hibernating")]  # fmt: skip
    return next((name for hit, name in rules if hit), "Lost")


def test_classic_rfm_scores_and_segments_follow_the_rule_table(cdnow_features):
    _, frame = cdnow_features
    assert (frame["r_score"] == _score(frame["recency_days"], descending=True)).all()
    assert (frame["f_score"] == _score(frame["frequency"])).all()
    assert (frame["m_score"] == _score(frame["monetary_total"])).all()
    expected = [_segment(r, f) for r, f in zip(frame["r_score"], frame["f_score"], strict=True)]
    assert frame["rfm_segment"].tolist() == expected
    # ties share a score: the 12,054 one-visit customers all have f_score 1
    assert (frame["frequency"] == 1).sum() == (frame["f_score"] == 1).sum() == 12_054
    assert frame.loc[frame["customer_id"] == "00001", "rfm_segment"].item() == "Lost"
