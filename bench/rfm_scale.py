"""RFM benchmark: `custseg features` on a large order log against the pyarrow read of the file.

It writes a CDNOW-like order log (`customer_id` zero-padded text, `date` ISO, `number_of_cds`,
`dollar_value` with two decimals; skewed customer activity, time-ordered rows, ~0.1% zero-value
orders, ~0.2% refunds and a handful of unparseable dates near the top), generated in chunks with
NumPy and written with pyarrow.csv. Then it times, interleaved `--repeat` times, each in a fresh
process whose peak RSS comes from `os.wait4` (that child only):

- the read: `pyarrow.csv.read_csv` of the whole file (all columns, default options, threads),
- `custseg features` end to end, writing the customers to Parquet.

It prints the medians, the ratio features / read and PASS/FAIL against the targets (at most
3x the read, peak RSS under 4 GiB), and checks that the output has one row per customer that
has at least one valid order (a parseable date and an amount >= 0).

    .venv/bin/python bench/rfm_scale.py --rows 2M --customers 100k
    .venv/bin/python bench/rfm_scale.py            # 50M orders of 2M customers (~1.4 GB CSV)

The file is written under `--dir` (default: a temporary directory) and removed afterwards
unless `--keep`. With `--keep`, a later run with the same `--dir`, `--rows`, `--customers`,
`--seed` and `--chunk` reuses the kept file (its facts are kept beside it in a `.json`)
instead of generating it again. The file is read hot from the page cache: it was just
written (a reused one is read once, untimed, before the measurements).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import label, parse_size  # noqa: E402

FIRST_DAY = dt.date(1997, 1, 1)  # the CDNOW cohort's span
LAST_DAY = dt.date(1998, 6, 30)
ID_DIGITS = 8
BAD_DATES = ["1997-02-30", "unknown", "30/06/1998", "1997-13-01", "n/a"]
ZERO_SHARE = 0.001
REFUND_SHARE = 0.002
MAX_RATIO = 3.0
MAX_RSS_GIB = 4.0
COLUMNS = ["--customer", "customer_id", "--date", "date", "--amount", "dollar_value"]
READ_CODE = """
import sys, time
import pyarrow.csv as pacsv
start = time.perf_counter()
table = pacsv.read_csv(sys.argv[1])
print(time.perf_counter() - start, table.num_rows)
"""


def count(text: str) -> int:
    """`50_000_000`, `50M`, `100k` or a plain number."""
    return parse_size(text.replace("_", ""))


@dataclass(frozen=True)
class Generated:
    path: Path
    rows: int
    ids: int  # distinct customer ids in the file
    valid_customers: int  # ids with at least one parseable order of amount >= 0
    bad_dates: int
    refunds: int
    seconds: float


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall time of the process, interpreter start included
    rss_gib: float  # peak resident set size of that process
    stdout: str


def zero_padded(ids: np.ndarray) -> pa.Array:
    """Customer ids as fixed-width text with leading zeros, built without Python strings."""
    powers = 10 ** np.arange(ID_DIGITS - 1, -1, -1, dtype=np.int64)
    digits = (ids[:, None] // powers % 10 + ord("0")).astype(np.uint8)
    offsets = np.arange(len(ids) + 1, dtype=np.int32) * ID_DIGITS
    return pa.Array.from_buffers(
        pa.string(), len(ids), [None, pa.py_buffer(offsets), pa.py_buffer(digits)]
    )


def cents_to_decimal(cents: np.ndarray) -> pa.Array:
    """Integer cents as decimal128(12, 2): written to CSV as `11.77`, `-12.00`, `0.00`."""
    words = np.empty((len(cents), 2), dtype=np.int64)
    words[:, 0] = cents
    words[:, 1] = cents >> 63  # sign extension to 128 bits
    return pa.Array.from_buffers(pa.decimal128(12, 2), len(cents), [None, pa.py_buffer(words)])


def date_texts() -> pa.Array:
    """Every day of the span as `YYYY-MM-DD`, then the bad dates."""
    n_days = (LAST_DAY - FIRST_DAY).days + 1
    days = [str(FIRST_DAY + dt.timedelta(days=d)) for d in range(n_days)]
    return pa.array(days + BAD_DATES)


def order_chunk(
    rng: np.random.Generator, cdf: np.ndarray, n: int, days: tuple[int, int], first: bool
) -> tuple[pa.Table, np.ndarray, np.ndarray, int]:
    """`n` orders on days [lo, hi) in date order; returns the table, the customer index of
    each row, which rows are valid orders (parseable date, amount >= 0) and the refunds."""
    customer = np.searchsorted(cdf, rng.random(n), side="right")
    day = np.sort(rng.integers(days[0], days[1], n))
    quantity = rng.geometric(0.42, n)
    unit = np.clip(rng.normal(12.5, 2.5, n), 1.0, None)
    cents = np.rint(quantity * unit * 100).astype(np.int64)
    cents[rng.random(n) < ZERO_SHARE] = 0
    refund = rng.random(n) < REFUND_SHARE
    cents[refund] *= -1
    texts = date_texts()
    n_days = len(texts) - len(BAD_DATES)
    date_index = day.copy()
    if first:  # pyarrow infers a column's type from its first block: keep bad dates there
        at = rng.choice(min(n, 20_000), size=min(n, len(BAD_DATES)), replace=False)
        date_index[at] = n_days + np.arange(len(at))
    table = pa.table({
        "customer_id": zero_padded(customer + 1),
        "date": texts.take(pa.array(date_index)),
        "number_of_cds": pa.array(quantity),
        "dollar_value": cents_to_decimal(cents),
    })  # fmt: skip
    valid = (cents >= 0) & (date_index < n_days)  # a zero-cent 'refund' is an order of 0
    return table, customer, valid, int(np.count_nonzero(cents < 0))


def customer_cdf(rng: np.random.Generator, customers: int) -> np.ndarray:
    """Skewed activity: a few customers order often, many once or twice."""
    weights = rng.lognormal(0.0, 1.0, customers)
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def generate(path: Path, rows: int, customers: int, seed: int, chunk: int) -> Generated:
    import pyarrow.csv as pacsv

    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    cdf = customer_cdf(rng, customers)
    seen = np.zeros(customers, dtype=bool)
    valid = np.zeros(customers, dtype=bool)
    n_chunks = -(-rows // chunk)
    n_days = (LAST_DAY - FIRST_DAY).days + 1
    bounds = np.linspace(0, n_days, n_chunks + 1).astype(int)
    refunds = bad = 0
    options = pacsv.WriteOptions(quoting_style="none", quoting_header="none")
    writer = None
    try:
        for i in range(n_chunks):
            n = min(chunk, rows - i * chunk)
            span = (int(bounds[i]), max(int(bounds[i + 1]), int(bounds[i]) + 1))
            table, customer, ok, n_refunds = order_chunk(rng, cdf, n, span, first=i == 0)
            if writer is None:
                writer = pacsv.CSVWriter(path, table.schema, write_options=options)
            writer.write_table(table)
            seen[customer] = True
            valid[customer[ok]] = True
            refunds += n_refunds
            bad += len(BAD_DATES) if i == 0 else 0
    finally:
        if writer is not None:
            writer.close()
    return Generated(path, rows, int(seen.sum()), int(valid.sum()), min(bad, rows), refunds,
                     time.perf_counter() - start)  # fmt: skip


def kept(csv: Path, key: dict) -> Generated | None:
    """The facts of a file kept by an earlier `--keep` run with the same parameters."""
    facts = csv.with_suffix(".json")
    if not (csv.exists() and facts.exists()):
        return None
    record = json.loads(facts.read_text())
    if record.pop("key") != key or record.pop("bytes") != csv.stat().st_size:
        return None
    return Generated(**{**record, "path": csv})


def keep(data: Generated, key: dict) -> None:
    record = {**dataclasses.asdict(data), "path": str(data.path), "key": key,
              "bytes": data.path.stat().st_size}  # fmt: skip
    data.path.with_suffix(".json").write_text(json.dumps(record))


def warm(path: Path) -> None:
    """Read the file once so that a kept one is in the page cache, as a fresh one is."""
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


def measure(cmd: list[str]) -> Measured:
    """Wall seconds and peak RSS of `cmd` run as a fresh child (rusage of that child only)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            tail = err.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
        # Linux: ru_maxrss in KiB
        return Measured(seconds, usage.ru_maxrss / 2**20, out.read().decode())


def read_baseline(path: Path) -> tuple[Measured, float]:
    """The read as a process, and the seconds of the `read_csv` call inside it."""
    run = measure([sys.executable, "-c", READ_CODE, str(path)])
    seconds, _ = run.stdout.split()
    return run, float(seconds)


def features(path: Path, out: Path) -> Measured:
    out.unlink(missing_ok=True)
    cmd = [str(BIN / "custseg"), "features", "--transactions", str(path), *COLUMNS,
           "--out", str(out)]  # fmt: skip
    return measure(cmd)


def gib(n_bytes: int) -> float:
    return n_bytes / 2**30


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(data: Generated, reads: list[Measured], calls: list[float],
           feats: list[Measured], n_out: int) -> bool:  # fmt: skip
    """Print the table of medians and the verdicts; True when every check passes."""
    read_s = statistics.median(r.seconds for r in reads)
    call_s = statistics.median(calls)
    feat_s = statistics.median(f.seconds for f in feats)
    read_rss = statistics.median(r.rss_gib for r in reads)
    feat_rss = statistics.median(f.rss_gib for f in feats)
    size = gib(data.path.stat().st_size)
    print("| rows | customers | CSV GiB | read s (process) | read_csv s | features s | "
          "features / read | features / read_csv | read peak RSS GiB | "
          "features peak RSS GiB |")  # fmt: skip
    print("|" + "---|" * 10)
    print(f"| {data.rows:,} | {data.ids:,} | {size:.2f} | {read_s:.2f} | "
          f"{call_s:.2f} | {feat_s:.2f} | {feat_s / read_s:.2f}x | {feat_s / call_s:.2f}x | "
          f"{read_rss:.2f} | {feat_rss:.2f} |")  # fmt: skip
    if len(reads) > 1:
        print(f"# medians of {len(reads)}; read s {[round(r.seconds, 2) for r in reads]}, "
              f"features s {[round(f.seconds, 2) for f in feats]}")  # fmt: skip
    ratio_ok = feat_s / read_s <= MAX_RATIO
    rss_ok = max(f.rss_gib for f in feats) < MAX_RSS_GIB
    out_ok = n_out == data.valid_customers
    print(f"# time: features / read = {feat_s / read_s:.2f}x (target <= {MAX_RATIO:.1f}x): "
          f"{verdict(ratio_ok)}")  # fmt: skip
    print(f"# memory: features peak RSS {max(f.rss_gib for f in feats):.2f} GiB (max of runs; "
          f"target < {MAX_RSS_GIB:.0f} GiB): {verdict(rss_ok)}")  # fmt: skip
    print(f"# output: {n_out:,} customer rows, {data.valid_customers:,} expected "
          f"({data.ids:,} distinct ids; the others have only refunds or bad dates): "
          f"{verdict(out_ok)}")  # fmt: skip
    return ratio_ok and rss_ok and out_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=count, default=50_000_000, help="orders (50M, 2_000_000)")
    parser.add_argument("--customers", type=count, default=2_000_000, help="customer ids to draw")
    parser.add_argument("--dir", help="where to write the CSV (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the CSV and the output")
    parser.add_argument("--repeat", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--chunk", type=count, default=1_000_000, help="rows per generated chunk")
    args = parser.parse_args(argv)
    if args.customers >= 10**ID_DIGITS:
        parser.error(f"--customers: at most {10**ID_DIGITS - 1} ({ID_DIGITS}-digit ids)")
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="custseg-bench-rfm-"))
    work.mkdir(parents=True, exist_ok=True)
    csv = work / f"orders_{label(args.rows)}_{label(args.customers)}.csv"
    out = work / "customers.parquet"
    print(f"# load average at start: {os.getloadavg()}; cores: {os.cpu_count()}; file: {csv}")
    key = {"rows": args.rows, "customers": args.customers, "seed": args.seed,
           "chunk": args.chunk}  # fmt: skip
    try:
        data = kept(csv, key) if args.keep else None
        if data is None:
            data = generate(csv, args.rows, args.customers, args.seed, args.chunk)
            if args.keep:
                keep(data, key)
            how = f"generated in {data.seconds:.1f} s"
        else:
            warm(csv)
            how = "kept from an earlier run"
        print(f"# {data.rows:,} orders of {data.ids:,} customers ({how}): "
              f"{gib(csv.stat().st_size):.2f} GiB ({csv.stat().st_size:,} bytes); "
              f"{data.refunds:,} refunds, {data.bad_dates} bad dates", flush=True)  # fmt: skip
        reads, calls, feats = [], [], []
        for _ in range(args.repeat):
            run, call = read_baseline(csv)
            reads.append(run)
            calls.append(call)
            feat = features(csv, out)
            feats.append(feat)
            print(f"# read {run.seconds:.2f} s ({run.rss_gib:.2f} GiB), features "
                  f"{feat.seconds:.2f} s ({feat.rss_gib:.2f} GiB)", flush=True)  # fmt: skip
        import pyarrow.parquet as pq

        n_out = pq.read_metadata(out).num_rows
        ok = report(data, reads, calls, feats, n_out)
        print(f"# load average at end: {os.getloadavg()}")
    finally:
        if args.keep:
            print(f"# kept {csv} and {out}")
        elif args.dir:
            csv.unlink(missing_ok=True)
            csv.with_suffix(".json").unlink(missing_ok=True)
            out.unlink(missing_ok=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
