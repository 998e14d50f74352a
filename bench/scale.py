"""Scale benchmark: `custseg run` against the classic lab algorithm and the pyarrow read floor.

For each N it generates N customers with 5 known segments (`custseg generate`), then times:
the pyarrow read of the whole CSV (the I/O floor), `custseg run` end to end as a separate
process (wall time and peak RSS), and the classic lab algorithm (KMeans init="random",
n_init=10, max_iter=300 for k in 1..49, then KneeLocator) on the same MinMax-scaled features.
It prints one table row per N; ratios are against baselines measured in the same run.

Beside the in-process read floor it measures, once per invocation, what any run pays whatever
N is: a separate process that only reads the CSV (`custseg run` is timed as a process, so
interpreter start is in its time too), a process that only imports the stack a run needs
(scikit-learn, skops, pyarrow, pandas, matplotlib), and `custseg run` on a table no larger
than the sweep sample (the fixed cost: the k sweep, the criteria, plots, report).

    .venv/bin/python bench/scale.py --sizes 100k,1M,10M
    .venv/bin/python bench/scale.py --sizes 100k --classic full

`--classic estimate` (the default above 100k) fits a few ks with a few of the 10 inits
and extrapolates the time of the full 1..49 sweep (linear in k between measured ks, inits
scaled up); its chosen k is then not computed and the row says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FEATURES = ["Annual Income (k$)", "Spending Score (1-100)"]
CLASSIC_KS = list(range(1, 50))  # the lab's range(1, 50)
ESTIMATE_KS = [1, 2, 5, 10, 20, 35, 49]
ESTIMATE_KS_LARGE = [2, 10, 25, 49]  # above 1M rows: fewer ks, one init each


def parse_size(text: str) -> int:
    """`100k`, `1M`, `10M` or a plain number."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    scale = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"


def timed_process(cmd: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (GB) and stdout of a child process (GNU time when present)."""
    gnu_time = Path("/usr/bin/time")
    full = [str(gnu_time), "-v", *cmd] if gnu_time.exists() else cmd
    start = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    rss = int(m.group(1)) / 1e6 if m else float("nan")
    return wall, rss, proc.stdout


def io_floor(path: Path) -> float:
    """Best of two full pyarrow reads of the CSV (all columns, default options)."""
    import pyarrow.csv as pacsv

    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        pacsv.read_csv(path)
        best = min(best, time.perf_counter() - start)
    return best


def process_seconds(code: str) -> float:
    """Best of two wall times of `python -c code` (interpreter start and imports included)."""
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - start)
    return best


STACK_IMPORTS = (
    "import sklearn.cluster, sklearn.preprocessing, skops.io, pyarrow.csv, pandas, "
    "matplotlib.pyplot"
)


def fixed_costs(work: Path) -> dict:
    """N-independent costs: importing the stack, and a whole run on a sample-sized table."""
    n = 5_000
    csv = work / "customers_fixed.csv"
    timed_process([str(BIN / "custseg"), "generate", "--rows", str(n), "--seed", "1",
                   "--out", str(csv)])  # fmt: skip
    runs = []
    for i in range(2):
        cmd = [str(BIN / "custseg"), "run", "--input", str(csv), "--out", str(work / "out_fixed"),
               "--no-progress", "--run-id", f"fixed{i}"]  # fmt: skip
        runs.append(timed_process(cmd)[0])
    return {"imports_s": process_seconds(STACK_IMPORTS), "run_5k_s": min(runs)}


def scaled_features(path: Path) -> np.ndarray:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(include_columns=FEATURES))
    X = np.column_stack([table.column(f).to_numpy().astype(np.float64) for f in FEATURES])
    return (X - X.min(axis=0)) / np.ptp(X, axis=0)


def classic(X: np.ndarray, *, mode: str, threads: int | None) -> dict:
    """The lab algorithm's time (measured or estimated) and its chosen k (when measured)."""
    from kneed import KneeLocator
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    def fit(k: int, n_init: int) -> tuple[float, float]:
        start = time.perf_counter()
        km = KMeans(n_clusters=k, init="random", n_init=n_init, max_iter=300, random_state=0)
        km.fit(X)
        return time.perf_counter() - start, float(km.inertia_)

    with threadpool_limits(limits=threads):
        if mode == "full":
            times, sse = zip(*(fit(k, 10) for k in CLASSIC_KS), strict=True)
            knee = KneeLocator(CLASSIC_KS, list(sse), curve="convex", direction="decreasing").knee
            k = None if knee is None else int(knee)
            return {"seconds": sum(times), "k": k, "how": "measured (all 49 ks, 10 inits)"}
        ks, inits = (ESTIMATE_KS, 2) if len(X) <= 1_000_000 else (ESTIMATE_KS_LARGE, 1)
        per_k = [fit(k, inits)[0] * 10 / inits for k in ks]
    total = float(np.interp(CLASSIC_KS, ks, per_k).sum())
    how = f"estimated from ks {ks} with {inits} of the 10 inits each (x{10 // inits}), interpolated"
    return {"seconds": total, "k": None, "how": how}


def best_of_10(X: np.ndarray, k: int) -> float:
    """SSE of the best of 10 k-means++ fits at k on all rows."""
    from sklearn.cluster import KMeans

    return float(KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=0).fit(X).inertia_)


def bench_one(n: int, work: Path, *, classic_mode: str, classic_threads: int | None) -> dict:
    csv = work / f"customers_{label(n)}.csv"
    gen_s, _, _ = timed_process([str(BIN / "custseg"), "generate", "--rows", str(n),
                                 "--seed", "1", "--out", str(csv)])  # fmt: skip
    floor = io_floor(csv)
    process_floor = process_seconds(f"import pyarrow.csv as c; c.read_csv({str(csv)!r})")
    out = work / f"out_{label(n)}"
    cmd = [str(BIN / "custseg"), "run", "--input", str(csv), "--out", str(out)]
    run_s, rss, _ = timed_process([*cmd, "--no-progress", "--run-id", "bench"])
    metrics = json.loads((out / "runs" / "bench" / "metrics.json").read_text())
    X = scaled_features(csv)
    base = classic(X, mode=classic_mode, threads=classic_threads)
    best = best_of_10(X, metrics["chosen_k"])
    return {
        "n": n,
        "generate_s": gen_s,
        "io_floor_s": floor,
        "process_read_s": process_floor,
        "custseg_s": run_s,
        "peak_rss_gb": rss,
        "custseg_k": metrics["chosen_k"],
        "select": metrics["selection"]["method"],
        "sample_size": metrics.get("sample_size"),
        "classic_s": base["seconds"],
        "classic_k": base["k"],
        "classic_how": base["how"],
        "final_sse": metrics["final_sse"],
        "best10_sse": best,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1M,10M", help="comma-separated N values")
    parser.add_argument("--classic", choices=["auto", "full", "estimate"], default="auto",
                        help="auto: full at <= 100k rows, estimated above")  # fmt: skip
    parser.add_argument(
        "--classic-threads", type=int, default=1,
        help="BLAS/OpenMP threads for the classic fits (0: the library default)",
    )  # fmt: skip
    parser.add_argument("--work", help="directory for data and runs (default: a temp dir)")
    parser.add_argument("--json", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="custseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"# load average at start: {os.getloadavg()}; cores: {os.cpu_count()}; work: {work}")
    fixed = fixed_costs(work)
    print(json.dumps(fixed), file=sys.stderr, flush=True)
    results = []
    for n in sizes:
        mode = args.classic if args.classic != "auto" else ("full" if n <= 100_000 else "estimate")
        r = bench_one(n, work, classic_mode=mode, classic_threads=args.classic_threads or None)
        r["load_avg"] = os.getloadavg()
        results.append(r)
        print(json.dumps(r, default=float), file=sys.stderr, flush=True)
    head = (
        "| N | custseg run s | classic s | speedup | run / I/O floor | I/O floor s | "
        "read as a process s | run / process read | "
        "peak RSS GB | k custseg | k classic | sweep sample | final SSE / best-of-10 | load |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for r in results:
        k_classic = r["classic_k"] if r["classic_k"] is not None else "n/a"
        est = " (est.)" if r["classic_k"] is None else ""
        print(
            f"| {label(r['n'])} | {r['custseg_s']:.1f} | {r['classic_s']:.0f}{est} | "
            f"{r['classic_s'] / r['custseg_s']:.0f}x | {r['custseg_s'] / r['io_floor_s']:.1f}x | "
            f"{r['io_floor_s']:.2f} | {r['process_read_s']:.2f} | "
            f"{r['custseg_s'] / r['process_read_s']:.1f}x | "
            f"{r['peak_rss_gb']:.2f} | {r['custseg_k']} | {k_classic} | "
            f"{r['sample_size']} | {r['final_sse'] / r['best10_sse']:.4f} | "
            f"{r['load_avg'][0]:.1f} |"
        )
    for r in results:
        print(f"# {label(r['n'])}: classic {r['classic_how']}; custseg select={r['select']}")
    print(
        f"# fixed costs, whatever N: importing the stack {fixed['imports_s']:.2f} s "
        f"({STACK_IMPORTS.removeprefix('import ')}); custseg run on 5,000 rows "
        f"(the sweep sample size) {fixed['run_5k_s']:.2f} s"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"fixed": fixed, "sizes": results}, indent=2,
                                              default=float))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
