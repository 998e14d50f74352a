"""Scoring benchmark: `custseg score` throughput (rows/s) against the read of the same file.

Trains once on a 20k-row generated table, then for each N generates N new customers (5 known
segments, as `custseg generate` does) and times, interleaved `--repeat` times:

- the pyarrow read of the CSV (the I/O floor),
- `score_customers_with_drift` (read + assign + novelty + drift report, in process),
- `write_score_set` (predictions.csv, drift.json, drift.html, atomically),
- `custseg score` end to end as a separate process (interpreter and imports included).

It prints one row per N with medians and the ratios to the read in the same run.

    .venv/bin/python bench/score.py --sizes 100k,1M
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "bench"))

from scale import label, parse_size  # noqa: E402


def read_seconds(path: Path) -> float:
    import pyarrow.csv as pacsv

    start = time.perf_counter()
    pacsv.read_csv(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100k,1M", help="comma-separated N (100k, 1M, ...)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions")
    args = parser.parse_args()

    from custseg.generate import generate_customers
    from custseg.options import PipelineConfig
    from custseg.pipeline import run_pipeline
    from custseg.rundir import resolve_run
    from custseg.scoring import score_customers_with_drift, write_score_set

    work = Path(tempfile.mkdtemp(prefix="custseg-bench-score-"))
    try:
        train = work / "train.csv"
        generate_customers(20_000, segments=5, seed=1).drop(columns=["segment"]).to_csv(
            train, index=False)  # fmt: skip
        root = work / "art"
        run_pipeline(PipelineConfig(k_max=10), input_path=str(train), out=str(root))
        run = resolve_run(str(root))
        print("| new customers | read (pyarrow) | score + drift | write score set | "
              "`custseg score` (process) | rows/s (score + drift) | score / read | "
              "process / read |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for n in [parse_size(s) for s in args.sizes.split(",")]:
            path = work / f"new-{n}.csv"
            generate_customers(n, segments=5, seed=2).drop(columns=["segment"]).to_csv(
                path, index=False)  # fmt: skip
            reads, scores, writes, procs = [], [], [], []
            for i in range(args.repeat):
                reads.append(read_seconds(path))
                start = time.perf_counter()
                result = score_customers_with_drift(run, str(path))
                scores.append(time.perf_counter() - start)
                start = time.perf_counter()
                write_score_set(result, work / "scores" / f"{n}-{i}")
                writes.append(time.perf_counter() - start)
                start = time.perf_counter()
                subprocess.run([str(BIN / "custseg"), "score", "--model", str(root), "--input",
                                str(path), "--out", str(work / "scores" / f"p{n}-{i}")],
                               check=True, capture_output=True)  # fmt: skip
                procs.append(time.perf_counter() - start)
            r, s, w, p = (statistics.median(x) for x in (reads, scores, writes, procs))
            print(f"| {label(n)} | {r:.2f} s | {s:.2f} s | {w:.2f} s | {p:.2f} s | "
                  f"{n / s:,.0f} | {s / r:.1f}x | {p / r:.1f}x |", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
