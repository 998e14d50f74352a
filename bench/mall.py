"""`custseg run` on the canonical Mall file against the seed lab's own script, interleaved.

Runs each `--repeat` times, alternating which goes first, as separate processes (wall time
includes the interpreter and imports, as a user sees it), and prints the medians and the
ratio custseg / seed. The issue's target is custseg <= 1.0x with everything custseg adds
(criteria, stability, plots, report).

    .venv/bin/python bench/mall.py --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MALL = ROOT.parent / "shared" / "data" / "Mall_Customers.csv"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--input", default=str(MALL))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="custseg-bench-mall-"))
    times: dict[str, list[float]] = {"custseg": [], "seed": []}
    for i in range(args.repeat):
        order = ("custseg", "seed") if i % 2 == 0 else ("seed", "custseg")
        for who in order:
            if who == "custseg":
                cmd = [str(BIN / "custseg"), "run", "--input", args.input, "--out",
                       str(work / f"c{i}"), "--no-progress"]  # fmt: skip
            else:
                cmd = [sys.executable, str(ROOT / "bench" / "seed_lab.py"), args.input,
                       str(work / f"s{i}")]  # fmt: skip
            times[who].append(timed(cmd))
    c, s = statistics.median(times["custseg"]), statistics.median(times["seed"])
    print("| custseg run s (median) | seed script s (median) | custseg / seed | runs |")
    print("|---|---|---|---|")
    print(f"| {c:.2f} | {s:.2f} | {c / s:.2f} | {args.repeat} each, interleaved |")


if __name__ == "__main__":
    main()
