"""From an order log to one row per customer: recency, frequency, monetary value and tenure.

The rules are one SQL query (`rfm_query`, printed by `custseg features --print-sql`). It uses
only `TRY_CAST`, `CAST`, `DATE_DIFF`, `COUNT(DISTINCT ...)`, `FILTER` and `GROUP BY`, so the
same text runs in a warehouse (DuckDB, Snowflake, Databricks SQL; BigQuery spells `TRY_CAST`
as `SAFE_CAST`) once the `orders` relation names a table there.

`customer_features` gives the same rows, to the bit, from a CSV or Parquet file with DuckDB
(which streams files larger than memory and writes Parquet or CSV), in one scan of the file:
it groups the rows by customer, kind (order, refund, unparseable amount or date) and span of
127 days, each group keeping a mask of its days, then by customer and kind, into a small
table from which come both the counts of the summary and the customers' features; distinct
days are counted as the bits of the masks, without a (customer, day) hash of the whole log.
The lines of unparseable rows are looked for (a second scan, in file order, that stops once it
found them) only when there are some.

Rules, per customer, over the rows whose date and amount parse:
- `recency_days`: days from the last order to `as_of` (default: the day after the last order
  in the file);
- `frequency`: distinct order days (several orders on one day are one visit); `orders`: rows;
- `monetary_total`: the sum of the amounts, refunds (negative amounts) subtracted;
  `monetary_mean`: the mean amount of the orders (amount >= 0; zero-value orders count);
- `tenure_days`: days from the first order to `as_of`.
Amounts are summed as `DECIMAL(38, 9)` (each rounded to 9 decimals; an amount that is not
finite or not under 1e29 is an error, as is a total past about 1.7e29): integer sums are
exact, so a total does not depend on the order in which threads add the rows up and the output
is the same on every run (a `DOUBLE` sum moved customers with equal totals across the
`m_score` edges from run to run).
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
EXACT = "DECIMAL(38, 9)"  # amounts are summed in it: exact, so the same on every run
SPAN_DAYS = 127  # days per span in customer_features' scan: the bits of a HUGEINT mask
MEMORY_LIMIT = "2.5GB"  # DuckDB's buffer pool; the target is a peak RSS under 4 GB


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


def _parsed_sql(customer: str, date: str, amount: str) -> str:
    return f"""SELECT CAST({_quoted(customer)} AS VARCHAR) AS customer,
           TRY_CAST({_quoted(date)} AS DATE) AS order_date,
           TRY_CAST({_quoted(amount)} AS DOUBLE) AS amount
    FROM orders"""


def _scored_sql(customer: str) -> str:
    """The scores and segments of the relation `customers`, ordered by customer."""
    return f"""scored AS (
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


def rfm_query(customer: str, date: str, amount: str, as_of: str | None) -> str:
    """The SQL that turns the relation `orders` into one row per customer (see the module)."""
    as_of_sql = (f"DATE '{as_of}'" if as_of else
                 "(SELECT MAX(order_date) + INTERVAL 1 DAY FROM valid)")  # fmt: skip
    return f"""
WITH parsed AS (
    {_parsed_sql(customer, date, amount)}
), valid AS (
    SELECT *, CAST(amount AS {EXACT}) AS exact_amount
    FROM parsed WHERE order_date IS NOT NULL AND amount IS NOT NULL
), as_of AS (
    SELECT CAST({as_of_sql} AS DATE) AS day
), customers AS (
SELECT customer AS {_quoted(customer)},
       DATE_DIFF('day', MAX(order_date) FILTER (WHERE amount >= 0), (SELECT day FROM as_of))
           AS recency_days,
       COUNT(DISTINCT order_date) FILTER (WHERE amount >= 0) AS frequency,
       COUNT(*) FILTER (WHERE amount >= 0) AS orders,
       CAST(SUM(exact_amount) AS DOUBLE) AS monetary_total,
       CAST(SUM(exact_amount) FILTER (WHERE amount >= 0) AS DOUBLE)
           / COUNT(*) FILTER (WHERE amount >= 0) AS monetary_mean,
       DATE_DIFF('day', MIN(order_date) FILTER (WHERE amount >= 0), (SELECT day FROM as_of))
           AS tenure_days
FROM valid
GROUP BY customer
HAVING COUNT(*) FILTER (WHERE amount >= 0) > 0
), {_scored_sql(customer)}"""


# The highest and lowest set bit of a mask of days (a HUGEINT > 0 below 2^127), for
# customer_features. The lowest set bit alone is an exact power of two, and so is its DOUBLE;
# the DOUBLE of a whole mask can round up to the next power of two, which the comparison
# takes back.
_MACROS = """
CREATE TEMP MACRO top_bit(days) AS
    LEAST(CAST(FLOOR(LOG2(CAST(days AS DOUBLE))) AS INTEGER), 126);
CREATE TEMP MACRO high_bit(days) AS
    top_bit(days) - CAST((CAST(1 AS HUGEINT) << CAST(top_bit(days) AS HUGEINT)) > days AS INTEGER);
CREATE TEMP MACRO low_bit(days) AS CAST(LOG2(CAST(days & -days AS DOUBLE)) AS INTEGER);
"""


def _kinds_sql(customer: str, date: str, amount: str) -> str:
    """The one scan of `orders` in `customer_features`, into a table with a row per customer
    and kind of row: `is_order` (amount >= 0; FALSE: a refund; NULL: an unparseable amount)
    and `undated` (an unparseable date). Each row holds its rows `n`, zero-value rows, exact
    total, distinct days and first and last day (as days since 1970-01-01).

    Distinct days are counted without a (customer, day) hash of the whole log: the rows are
    grouped first by customer, kind and span of `SPAN_DAYS` days, each group keeping a mask of
    its days (bit i: day i of the span), and the bits of the masks are then counted per
    customer. That first grouping keeps four narrow aggregates and no first or last day (they
    come from the masks): in a log in time order most rows are an entry of their own in
    DuckDB's hash table, so the width of an entry is most of the cost of the scan."""
    return f"""
CREATE TEMP TABLE kinds AS
WITH parsed AS (
    {_parsed_sql(customer, date, amount)}
), numbered AS (
    SELECT *, order_date - DATE '1970-01-01' AS day_number FROM parsed
), placed AS (
    SELECT *, ((day_number % {SPAN_DAYS}) + {SPAN_DAYS}) % {SPAN_DAYS} AS bit FROM numbered
), spans AS (
    SELECT customer, CAST((day_number - bit) // {SPAN_DAYS} AS INTEGER) AS span,
           amount >= 0 AS is_order, COUNT(*) AS n, COUNT(*) FILTER (WHERE amount = 0) AS n_zero,
           SUM(CAST(CASE WHEN order_date IS NOT NULL THEN amount END AS {EXACT})) AS total,
           BIT_OR(CAST(1 AS HUGEINT) << CAST(bit AS HUGEINT)) AS days
    FROM placed
    GROUP BY customer, span, is_order
)
SELECT customer, is_order, span IS NULL AS undated, SUM(n) AS n, SUM(n_zero) AS n_zero,
       SUM(total) AS total, SUM(BIT_COUNT(days)) AS days,
       MIN(span * {SPAN_DAYS} + low_bit(days)) AS first,
       MAX(span * {SPAN_DAYS} + high_bit(days)) AS last
FROM spans
GROUP BY customer, is_order, undated
"""


def _features_sql(customer: str, as_of: str) -> str:
    """`rfm_query`'s rows from the table `kinds` (same types, same values to the bit: the
    exact totals of orders and refunds add up to the exact total of all valid rows)."""
    day = f"DATE '{as_of}'"
    return f"""
WITH ordered AS (
    SELECT * FROM kinds WHERE NOT undated AND is_order
), refunded AS (
    SELECT * FROM kinds WHERE NOT undated AND NOT is_order
), customers AS (
SELECT o.customer AS {_quoted(customer)},
       DATE_DIFF('day', DATE '1970-01-01' + o.last, {day}) AS recency_days,
       CAST(o.days AS BIGINT) AS frequency,
       CAST(o.n AS BIGINT) AS orders,
       CAST(o.total + COALESCE(r.total, 0) AS DOUBLE) AS monetary_total,
       CAST(o.total AS DOUBLE) / CAST(o.n AS BIGINT) AS monetary_mean,
       DATE_DIFF('day', DATE '1970-01-01' + o.first, {day}) AS tenure_days
FROM ordered AS o LEFT JOIN refunded AS r ON o.customer IS NOT DISTINCT FROM r.customer
), {_scored_sql(customer)}"""


def _source_sql(uri: str) -> str:
    path = str(storage.local_path(uri)) if not storage.is_remote(uri) else uri
    literal = "'" + path.replace("'", "''") + "'"
    if uri.lower().endswith(".parquet"):
        return f"read_parquet({literal})"
    # every column as text: the query parses dates and amounts itself and counts failures
    return f"read_csv({literal}, header = true, all_varchar = true)"


def _connect() -> Any:
    import os
    import tempfile
    import uuid

    import duckdb

    con = duckdb.connect()
    # DuckDB's default limit is 80% of RAM; capped, it spills to disk instead, in a directory of
    # its own (DuckDB creates and removes it) under the system temp dir rather than `.tmp` in the
    # working one. On 50M orders of 2M customers (bench/rfm_scale.py) the scan peaks at 2.4 GiB
    # under 2.5GB; under 2GB it spills (2.0 GiB) and takes 10-15% longer
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    spill = os.path.join(tempfile.gettempdir(), f"custseg-duckdb-{uuid.uuid4().hex}")
    con.execute(f"SET temp_directory = '{spill.replace(chr(39), chr(39) * 2)}'")
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
        stats = _scan(con, uri, customer, date, amount)
        if stats["valid"] == 0:
            raise InputError(f"{uri}: no row has both a parseable {date!r} and {amount!r}; "
                             "check the --date and --amount columns")  # fmt: skip
        day = as_of or stats["as_of"]
        bad_lines = _bad_lines(con, date, amount, stats["bad_date"], stats["bad_amount"])
        fmt = "PARQUET" if str(out).lower().endswith(".parquet") else "CSV, HEADER"
        target = str(storage.local_path(out)) if not storage.is_remote(str(out)) else str(out)
        if not storage.is_remote(str(out)):
            storage.local_path(out).parent.mkdir(parents=True, exist_ok=True)
        quoted = target.replace("'", "''")
        copy = f"COPY ({_features_sql(customer, day)}) TO '{quoted}' (FORMAT {fmt})"
        _run(con, uri, amount, copy)
        reader = "read_parquet" if fmt == "PARQUET" else "read_csv"
        n_customers = con.execute(f"SELECT COUNT(*) FROM {reader}('{quoted}')").fetchone()[0]
    finally:
        con.close()
    summary = FeatureSummary(
        source=uri, out=str(out), n_rows=stats["rows"], n_customers=int(n_customers),
        n_bad_date=stats["bad_date"], n_bad_amount=stats["bad_amount"],
        n_refunds=stats["refunds"], n_zero=stats["zero"], first_date=stats["first"],
        last_date=stats["last"], as_of=day, bad_lines=bad_lines,
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


def _run(con: Any, uri: str, amount: str, sql: str) -> None:
    """Run `sql`; an amount that cannot be summed exactly is an `InputError`."""
    import duckdb

    try:
        con.execute(sql)
    except (duckdb.ConversionException, duckdb.OutOfRangeException) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{uri}: the {amount!r} amounts cannot be summed exactly ({first}); "
                         f"amounts and totals must be finite and under 1e29") from None  # fmt: skip


def _scan(con: Any, uri: str, customer: str, date: str, amount: str) -> dict[str, Any]:
    """The one scan of the order log (into the table `kinds`), then from that table: counts of
    rows, unparseable dates and amounts, valid rows, refunds and zero-value orders, the date
    range and the default as-of day (the day after the last valid row, as in `rfm_query`)."""
    con.execute(_MACROS)
    # the order of the rows in `kinds` does not matter: let every thread write it
    con.execute("SET preserve_insertion_order = false")
    try:
        _run(con, uri, amount, _kinds_sql(customer, date, amount))
    finally:
        con.execute("SET preserve_insertion_order = true")
    row = con.execute("""
        SELECT SUM(n), SUM(n) FILTER (WHERE undated), SUM(n) FILTER (WHERE is_order IS NULL),
               SUM(n) FILTER (WHERE NOT undated AND is_order IS NOT NULL),
               SUM(n) FILTER (WHERE NOT undated AND NOT is_order),
               SUM(n_zero) FILTER (WHERE NOT undated),
               CAST(DATE '1970-01-01' + MIN(first) AS VARCHAR),
               CAST(DATE '1970-01-01' + MAX(last) AS VARCHAR),
               CAST(DATE '1970-01-01' + (MAX(last) FILTER (WHERE is_order IS NOT NULL) + 1)
                    AS VARCHAR)
        FROM kinds""").fetchall()[0]  # fmt: skip
    keys = ("rows", "bad_date", "bad_amount", "valid", "refunds", "zero")
    stats: dict[str, Any] = {k: int(x or 0) for k, x in zip(keys, row[:6], strict=True)}
    stats.update(first=row[6], last=row[7], as_of=row[8])
    return stats


def _bad_lines(
    con: Any, date: str, amount: str, n_date: int, n_amount: int
) -> dict[str, list[int]]:
    """The first `MAX_REPORTED` lines (the header is line 1) of the rows with an unparseable
    date and amount: only when there are some, by a scan of the file in order that stops once
    it has them all."""
    import pyarrow.compute as pc

    want = {"date": min(n_date, MAX_REPORTED), "amount": min(n_amount, MAX_REPORTED)}
    found: dict[str, list[int]] = {"date": [], "amount": []}
    if not any(want.values()):
        return found
    checks = {"date": f"TRY_CAST({_quoted(date)} AS DATE) IS NULL",
              "amount": f"TRY_CAST({_quoted(amount)} AS DOUBLE) IS NULL"}  # fmt: skip
    columns = ", ".join(f'{checks[key]} AS "{key}"' for key in want if want[key])
    scan = con.sql(f"SELECT {columns} FROM orders")
    # DuckDB 2.0 renamed fetch_arrow_reader (pyproject allows DuckDB >= 1.1)
    open_reader = getattr(scan, "to_arrow_reader", None) or scan.fetch_arrow_reader
    reader = open_reader(1 << 17)
    line = 2
    try:
        for batch in reader:
            for key in (k for k in want if len(found[k]) < want[k]):
                at = pc.indices_nonzero(batch.column(key))[: want[key] - len(found[key])]
                found[key] += [line + int(i) for i in at.to_pylist()]
            line += batch.num_rows
            if all(len(found[k]) == want[k] for k in want):
                break
    finally:
        con.interrupt()  # the rest of the scan, when it stopped early
        reader.close()
    return found
