"""From an order log to one row per customer: recency, frequency, monetary value and tenure.

The work is one SQL query (`rfm_query`) run by DuckDB, which streams CSV and Parquet larger
than memory and writes the result straight to Parquet or CSV. The query uses only
`TRY_CAST`, `DATE_DIFF`, `COUNT(DISTINCT ...)` and `GROUP BY`, so the same text runs in a
warehouse (DuckDB, Snowflake, Databricks SQL; BigQuery spells `TRY_CAST` as `SAFE_CAST`)
once the `orders` relation names a table there.

Rules, per customer, over the rows whose date and amount parse:
- `recency_days`: days from the last order to `as_of` (default: the day after the last order
  in the file);
- `frequency`: distinct order days (several orders on one day are one visit); `orders`: rows;
- `monetary_total`: the sum of the amounts, refunds (negative amounts) subtracted;
  `monetary_mean`: the mean amount of the orders (amount >= 0; zero-value orders count);
- `tenure_days`: days from the first order to `as_of`.
Rows whose date or amount does not parse are dropped, counted and reported with their lines;
negative amounts are counted as refunds and are not orders.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from custseg import storage
from custseg.errors import InputError
from custseg.sanitize import logger

log = logger(__name__)

MAX_REPORTED = 5


@dataclass(frozen=True)
class FeatureSummary:
    """What `customer_features` read, dropped and wrote."""

    source: str
    out: str
    n_rows: int
    n_customers: int
    n_bad_date: int
    n_bad_amount: int
    n_refunds: int
    n_zero: int
    first_date: str | None
    last_date: str | None
    as_of: str
    bad_lines: dict[str, list[int]] = field(default_factory=dict)

    def warnings(self) -> list[str]:
        """One line per kind of row that was dropped or treated specially."""
        out = []
        for what, n, key in (("unparseable date", self.n_bad_date, "date"),
                             ("unparseable amount", self.n_bad_amount, "amount")):  # fmt: skip
            if n:
                lines = ", ".join(map(str, self.bad_lines.get(key, [])))
                more = ", ..." if n > MAX_REPORTED else ""
                out.append(f"{self.source}: {n} row(s) with an {what} dropped (line {lines}{more})")
        if self.n_refunds:
            out.append(f"{self.source}: {self.n_refunds} refund(s) (negative amounts) subtracted "
                       "from monetary_total, not counted as orders")  # fmt: skip
        return out


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def rfm_query(customer: str, date: str, amount: str, as_of: str | None) -> str:
    """The SQL that turns the relation `orders` into one row per customer (see the module)."""
    as_of_sql = (f"DATE '{as_of}'" if as_of else
                 "(SELECT MAX(order_date) + INTERVAL 1 DAY FROM valid)")  # fmt: skip
    return f"""
WITH parsed AS (
    SELECT CAST({_quoted(customer)} AS VARCHAR) AS customer,
           TRY_CAST({_quoted(date)} AS DATE) AS order_date,
           TRY_CAST({_quoted(amount)} AS DOUBLE) AS amount
    FROM orders
), valid AS (
    SELECT * FROM parsed WHERE order_date IS NOT NULL AND amount IS NOT NULL
), as_of AS (
    SELECT CAST({as_of_sql} AS DATE) AS day
), customers AS (
SELECT customer AS {_quoted(customer)},
       DATE_DIFF('day', MAX(order_date) FILTER (WHERE amount >= 0), (SELECT day FROM as_of))
           AS recency_days,
       COUNT(DISTINCT order_date) FILTER (WHERE amount >= 0) AS frequency,
       COUNT(*) FILTER (WHERE amount >= 0) AS orders,
       SUM(amount) AS monetary_total,
       AVG(amount) FILTER (WHERE amount >= 0) AS monetary_mean,
       DATE_DIFF('day', MIN(order_date) FILTER (WHERE amount >= 0), (SELECT day FROM as_of))
           AS tenure_days
FROM valid
GROUP BY customer
HAVING COUNT(*) FILTER (WHERE amount >= 0) > 0
), scored AS (
SELECT *,
       LEAST(5, 1 + CAST(FLOOR(5 * PERCENT_RANK() OVER (ORDER BY recency_days DESC)) AS INTEGER))
           AS r_score,
       LEAST(5, 1 + CAST(FLOOR(5 * PERCENT_RANK() OVER (ORDER BY frequency)) AS INTEGER))
           AS f_score,
       LEAST(5, 1 + CAST(FLOOR(5 * PERCENT_RANK() OVER (ORDER BY monetary_total)) AS INTEGER))
           AS m_score
FROM customers
)
SELECT *,
       CASE
           WHEN r_score >= 4 AND f_score >= 4 THEN 'Champions'
           WHEN r_score >= 3 AND f_score >= 3 THEN 'Loyal'
           WHEN r_score >= 4 AND f_score = 2 THEN 'Potential loyalists'
           WHEN r_score = 5 AND f_score = 1 THEN 'New customers'
           WHEN r_score = 4 AND f_score = 1 THEN 'Promising'
           WHEN r_score = 3 AND f_score = 2 THEN 'Need attention'
           WHEN r_score = 3 AND f_score = 1 THEN 'About to sleep'
           WHEN f_score = 5 THEN 'Cannot lose them'
           WHEN f_score >= 3 THEN 'At risk'
           WHEN r_score = 2 THEN 'Hibernating'
           ELSE 'Lost'
       END AS rfm_segment
FROM scored
ORDER BY {_quoted(customer)}
"""


def _source_sql(uri: str) -> str:
    path = str(storage.local_path(uri)) if not storage.is_remote(uri) else uri
    literal = "'" + path.replace("'", "''") + "'"
    if uri.lower().endswith(".parquet"):
        return f"read_parquet({literal})"
    # every column as text: the query parses dates and amounts itself and counts failures
    return f"read_csv({literal}, header = true, all_varchar = true)"


def _connect() -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = true")
    # DuckDB 2.0's type_pushdown moves TRY_CAST into the CSV reader, which then raises on
    # the first unparseable value instead of giving NULL (tested: a date "yesterday")
    con.execute("SET disabled_optimizers = 'type_pushdown'")
    return con


def customer_features(
    transactions: str,
    *,
    customer: str,
    date: str,
    amount: str,
    out: str,
    as_of: str | None = None,
) -> FeatureSummary:
    """Write one row per customer of the order log `transactions` to `out` (`.parquet` or
    `.csv`); an `InputError` names the file and what to fix."""
    import duckdb

    uri = str(transactions)
    if not storage.exists(uri):
        raise InputError(f"{uri}: file not found; check the path of --transactions")
    if as_of is not None:
        try:
            dt.date.fromisoformat(as_of)
        except ValueError:
            raise InputError(f"--as-of={as_of!r} is not a date (YYYY-MM-DD)") from None
    if not str(out).lower().endswith((".parquet", ".csv")):
        raise InputError(f"--out={out!r}: write .parquet or .csv")
    con = _connect()
    try:
        con.execute(f"CREATE VIEW orders AS SELECT * FROM {_source_sql(uri)}")
        columns = [r[0] for r in con.execute("DESCRIBE orders").fetchall()]
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{uri}: not a readable CSV or Parquet order log ({first})") from None
    for role, name in (("--customer", customer), ("--date", date), ("--amount", amount)):
        if name not in columns:
            raise InputError(f"{uri}: no column {name!r} ({role}); the file has "
                             f"{', '.join(map(repr, columns))}")  # fmt: skip
    stats = _row_stats(con, uri, customer, date, amount)
    if stats["valid"] == 0:
        raise InputError(f"{uri}: no row has both a parseable {date!r} and {amount!r}; check "
                         "the --date and --amount columns")  # fmt: skip
    query = rfm_query(customer, date, amount, as_of)
    fmt = "PARQUET" if str(out).lower().endswith(".parquet") else "CSV, HEADER"
    target = str(storage.local_path(out)) if not storage.is_remote(str(out)) else str(out)
    if not storage.is_remote(str(out)):
        storage.local_path(out).parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"COPY ({query}) TO '{target.replace(chr(39), chr(39) * 2)}' (FORMAT {fmt})")
    reader = "read_parquet" if fmt == "PARQUET" else "read_csv"
    quoted = target.replace("'", "''")
    n_customers = con.execute(f"SELECT COUNT(*) FROM {reader}('{quoted}')").fetchone()[0]
    day = as_of or str(dt.date.fromisoformat(stats["last"]) + dt.timedelta(days=1))
    summary = FeatureSummary(
        source=uri, out=str(out), n_rows=stats["rows"], n_customers=int(n_customers),
        n_bad_date=stats["bad_date"], n_bad_amount=stats["bad_amount"],
        n_refunds=stats["refunds"], n_zero=stats["zero"], first_date=stats["first"],
        last_date=stats["last"], as_of=day, bad_lines=stats["bad_lines"],
    )  # fmt: skip
    for warning in summary.warnings():
        log.warning("%s", warning)
    log.info("%d orders of %d customers (%s..%s) -> %s", summary.n_rows, summary.n_customers,
             summary.first_date, summary.last_date, out)  # fmt: skip
    return summary


DATE_WORDS = ("date", "day", "time", "timestamp", "ordered", "created")
AMOUNT_WORDS = ("amount", "value", "revenue", "sales", "price", "total", "spend", "spent")


def order_columns(
    uri: str,
    *,
    customer: str | None = None,
    date: str | None = None,
    amount: str | None = None,
) -> tuple[str, str, str]:
    """The customer, date and amount columns of an order log: those given, checked, and the
    others found by name; an `InputError` names the flag to pass when a name does not settle it."""
    from custseg.io import file_header, find_id_column, normalize_name

    if not storage.exists(uri):
        raise InputError(f"{uri}: file not found; check the path of --transactions")
    header = file_header(uri)

    def found(given: str | None, flag: str, guess: list[str], what: str) -> str:
        if given is not None:
            if given not in header:
                raise InputError(f"{uri}: no column {given!r} ({flag}); the file has "
                                 f"{', '.join(map(repr, header))}")  # fmt: skip
            return given
        if len(guess) != 1:
            why = f"several columns could be it ({guess})" if guess else "none is named like it"
            raise InputError(f"{uri}: which column is the {what}? {why}; pass {flag} COLUMN")
        return guess[0]

    idc = find_id_column(header)
    customers = [idc] if idc else [c for c in header if "customer" in normalize_name(c)]
    rest = [c for c in header if c not in customers]
    dates = [c for c in rest if any(w in normalize_name(c) for w in DATE_WORDS)]
    amounts = [c for c in rest if any(w in normalize_name(c) for w in AMOUNT_WORDS)]
    return (found(customer, "--customer", customers, "customer id"),
            found(date, "--date", dates, "order date"),
            found(amount, "--amount", amounts, "order amount"))  # fmt: skip


def _row_stats(con: Any, uri: str, customer: str, date: str, amount: str) -> dict[str, Any]:
    """Counts of rows, unparseable dates and amounts (with their first lines), refunds and
    zero-value orders, and the date range."""
    c, d, a = _quoted(customer), _quoted(date), _quoted(amount)
    con.execute(f"""CREATE TEMP TABLE checked AS
        SELECT ROW_NUMBER() OVER () + 1 AS line, {c} AS customer,
               {d} IS NOT NULL AND TRY_CAST({d} AS DATE) IS NULL AS bad_date,
               {a} IS NOT NULL AND TRY_CAST({a} AS DOUBLE) IS NULL AS bad_amount,
               {d} IS NULL AS no_date, {a} IS NULL AS no_amount,
               TRY_CAST({d} AS DATE) AS day, TRY_CAST({a} AS DOUBLE) AS value
        FROM orders""")  # fmt: skip
    rows, bad_d, bad_a, valid, refunds, zero, first, last = con.execute("""
        SELECT COUNT(*), COUNT(*) FILTER (WHERE bad_date OR no_date),
               COUNT(*) FILTER (WHERE bad_amount OR no_amount),
               COUNT(*) FILTER (WHERE day IS NOT NULL AND value IS NOT NULL),
               COUNT(*) FILTER (WHERE value < 0 AND day IS NOT NULL),
               COUNT(*) FILTER (WHERE value = 0 AND day IS NOT NULL),
               CAST(MIN(day) AS VARCHAR), CAST(MAX(day) AS VARCHAR)
        FROM checked""").fetchone()  # fmt: skip
    lines = {}
    for key, cond in (("date", "bad_date OR no_date"), ("amount", "bad_amount OR no_amount")):
        found = con.execute(f"SELECT line FROM checked WHERE {cond} ORDER BY line "
                            f"LIMIT {MAX_REPORTED}").fetchall()  # fmt: skip
        lines[key] = [int(r[0]) for r in found]
    return {"rows": int(rows), "bad_date": int(bad_d), "bad_amount": int(bad_a),
            "valid": int(valid), "refunds": int(refunds), "zero": int(zero), "first": first,
            "last": last, "bad_lines": lines}  # fmt: skip
