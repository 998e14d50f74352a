"""`custseg features`: an order log to one row per customer, checked on the real CDNOW orders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from custseg.cli import main
from custseg.errors import InputError
from custseg.model import load_model
from custseg.options import TRANSACTION_FEATURES, parse_request
from custseg.rfm import customer_features, order_columns, rfm_query
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


# -- custseg run --transactions: build the features and segment them in one run ---------------


@pytest.fixture(scope="module")
def cdnow_run(cdnow, tmp_path_factory):
    """One `custseg run --transactions` on CDNOW (columns found by name), k up to 12."""
    out = tmp_path_factory.mktemp("rfm-run")
    rc = main(["run", "--transactions", str(cdnow), "--k-max", "12", "--out", str(out),
               "--no-progress"])  # fmt: skip
    assert rc == 0
    latest = json.loads((out / "latest.json").read_text())
    return out, Path(latest["run_dir"])


def test_run_on_an_order_log_segments_its_customers(cdnow_run, cdnow_features):
    out, run_dir = cdnow_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    orders = metrics["transactions"]
    assert orders["n_rows"] == 69_659 and orders["n_customers"] == 23_570
    assert orders["as_of"] == "1998-07-01" and orders["source"].endswith("cdnow_transactions.csv")
    assert metrics["features"] == list(TRANSACTION_FEATURES)
    assert metrics["transform"] == "log1p" and metrics["n_rows_used"] == 23_570
    # the run's input is the customer table it built, kept beside the runs
    table = pd.read_parquet(orders["out"]).set_index("customer_id")
    assert Path(orders["out"]).parent == out / "features" and metrics["input"] == orders["out"]
    pd.testing.assert_frame_equal(table, cdnow_features[1].set_index("customer_id"))
    # the saved model takes raw features: log1p, then MinMax, inside it
    model = load_model(str(run_dir / "model.skops"))
    assert [name for name, _ in model[0].steps] == ["log1p", "scale"]
    X = table[list(TRANSACTION_FEATURES)]
    scaled = model[0].transform(X)
    np.testing.assert_allclose(scaled.min(axis=0), 0, atol=1e-12)
    logged = np.log1p(X["frequency"].to_numpy(dtype=float))
    np.testing.assert_allclose(np.asarray(scaled)[:, 1],
                               (logged - logged.min()) / (logged.max() - logged.min()),
                               rtol=1e-9)  # fmt: skip
    assigned = pd.read_parquet(run_dir / "assignments.parquet").set_index("customer_id")
    expected = model.predict(X.loc[assigned.index])
    assert (assigned["segment"].to_numpy() == expected).all()


def test_the_report_compares_the_segments_with_classic_rfm(cdnow_run):
    _, run_dir = cdnow_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rfm = [c for c in metrics["column_profiles"] if c["column"] == "rfm_segment"]
    ari = next(c for c in rfm if c["statistic"] == "agreement with the segments (ARI)")
    assigned = pd.read_parquet(run_dir / "assignments.parquet").set_index("customer_id")
    table = pd.read_parquet(metrics["transactions"]["out"]).set_index("customer_id")
    from sklearn.metrics import adjusted_rand_score

    want = adjusted_rand_score(table.loc[assigned.index, "rfm_segment"], assigned["segment"])
    assert ari["all"] == pytest.approx(want, abs=5e-4)
    champions = next(c for c in rfm if c["statistic"] == "share Champions")
    share = (table["rfm_segment"] == "Champions").mean()
    assert champions["all"] == pytest.approx(share, abs=5e-5)
    html = (run_dir / "report.html").read_text()
    assert "rfm_segment" in html and "Champions" in html and "agreement with the segments" in html


def test_a_second_run_on_the_same_log_reuses_its_customer_table(cdnow, cdnow_run, capsys):
    out, _ = cdnow_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    assert len(before) == 2  # the table and its summary
    rc = main(["run", "--transactions", str(cdnow), "--k-max", "3", "--out", str(out),
               "--no-progress", "--force-promote"])  # fmt: skip
    assert rc == 0 and "order log: 69659 orders (1997-01-01..1998-06-30)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "features").iterdir()} == before


@pytest.mark.parametrize(("args", "message"), [
    (["--input", "x.csv"], "both --input='x.csv' and --transactions="),
    (["--transform", "log1p", "--features", "monetary_total"],
     "feature 'monetary_total' has negative values (as low as -4); the log1p transform needs "
     "values >= 0: pass --transform none"),
    (["--date", "nope"], "no column 'nope' (--date); the file has 'cust', 'day', 'day_shipped'"),
])  # fmt: skip
def test_bad_run_on_an_order_log_exits_2_with_one_line(tmp_path, capsys, args, message):
    log = tmp_path / "orders.csv"
    log.write_text("cust,day,day_shipped,value\na,2024-01-01,2024-01-02,10\n"
                   "a,2024-01-03,2024-01-04,-14\nb,2024-01-02,2024-01-05,7\n"
                   "c,2024-01-02,2024-01-02,3\nd,2024-01-04,2024-01-09,4\n")  # fmt: skip
    out = tmp_path / "out"
    extra = [] if "--date" in args else ["--date", "day"]
    rc = main(["run", "--transactions", str(log), "--customer", "cust", *extra, *args,
               "--out", str(out), "--k-max", "3"])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (out / "runs").exists() and not (out / "latest.json").exists()


def test_order_log_columns_are_found_by_name_or_asked_for(tmp_path):
    log = tmp_path / "orders.csv"
    log.write_text("CustomerID,order_date,ship_date,Revenue\n1,2024-01-01,2024-01-02,5\n")
    with pytest.raises(
        InputError,
        match=r"which column is the order date\? several columns "
        r"could be it \(\['order_date', 'ship_date'\]\); pass --date COLUMN",
    ):
        order_columns(str(log))
    assert order_columns(str(log), date="order_date") == ("CustomerID", "order_date", "Revenue")
    with pytest.raises(InputError, match="applies only with --transactions"):
        parse_request({"input_path": "x.csv", "as_of": "2024-01-01"}, runner="cli")
