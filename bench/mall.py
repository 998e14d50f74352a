"""`custseg run` on the canonical Mall file against the seed lab's own script, interleaved.

Runs each `--repeat` times, alternating which goes first, as separate processes (wall time
includes the interpreter and imports, as a user sees it), and prints the medians and the
ratio custseg / seed. The issue's target is custseg <= 1.0x with everything custseg adds
(criteria, stability, plots, report).

A third process, interleaved with both, only imports what the seed script imports (pandas,
scikit-learn's KMeans, skops.io, kneed): the floor under both, since any process that saves
a skops model and finds a kneed elbow pays it. `--pin CPU` runs all three on one core
(`taskset`), for a comparison that another job on the machine does not skew.

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
IMPORTS = "import pandas, sklearn.cluster, skops.io, kneed"


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--input", default=str(MALL))
    parser.add_argument("--pin", type=int, help="run every process on this CPU only")
    parser.add_argument("--custseg", default=str(BIN / "custseg"), help="the custseg to time")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="custseg-bench-mall-"))
    pin = ["taskset", "-c", str(args.pin)] if args.pin is not None else []
    commands = {
        "custseg": lambda i: [args.custseg, "run", "--input", args.input, "--out",
                              str(work / f"c{i}"), "--no-progress"],
        "seed": lambda i: [sys.executable, str(ROOT / "bench" / "seed_lab.py"), args.input,
                           str(work / f"s{i}")],
        "imports": lambda i: [sys.executable, "-c", IMPORTS],
    }  # fmt: skip
    times: dict[str, list[float]] = {who: [] for who in commands}
    for i in range(args.repeat):
        order = list(commands) if i % 2 == 0 else list(commands)[::-1]
        for who in order:
            times[who].append(timed(pin + commands[who](i)))
    c, s, f = (statistics.median(times[who]) for who in ("custseg", "seed", "imports"))
    print(
        "| custseg run s (median) | seed script s (median) | custseg / seed | seed's imports "
        "alone s | custseg - imports s | seed - imports s | runs |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {c:.2f} | {s:.2f} | {c / s:.2f} | {f:.2f} | {c - f:.2f} | {s - f:.2f} | "
        f"{args.repeat} each, interleaved{f', CPU {args.pin}' if pin else ''} |"
    )


if __name__ == "__main__":
    main()
