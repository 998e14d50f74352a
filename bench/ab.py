"""A/B benchmark: `custseg run` of two installs on the same generated tables, interleaved.

Times each install's `custseg run` as a process (wall seconds, peak RSS via GNU time), in
alternating order so that machine noise hits both alike, and prints the median ratio B/A
per size. Use it to check that a refactor keeps the speed, e.g. with the previous commit
checked out in a worktree with its own venv:

    git worktree add /tmp/custseg-old HEAD~1 && (cd /tmp/custseg-old && make venv)
    .venv/bin/python bench/ab.py --a /tmp/custseg-old/.venv/bin/custseg \\
        --b .venv/bin/custseg --sizes 100k,1M,10M --repeat 3

Both runs must choose the same k and write the same final SSE (to 1e-9 relative); the
script says so per size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import label, parse_size, timed_process  # noqa: E402


def run_once(custseg: str, data: Path, out: Path) -> tuple[float, float, dict]:
    """Wall seconds, peak RSS (GB) and metrics.json of one `custseg run`."""
    seconds, rss, _ = timed_process([custseg, "run", "--input", str(data), "--out", str(out),
                                     "--run-id", "ab", "--no-progress"])  # fmt: skip
    # the run's own folder: a run the promotion gate holds back has no latest.json
    return seconds, rss, json.loads((out / "runs" / "ab" / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", required=True, help="baseline custseg executable")
    parser.add_argument("--b", required=True, help="candidate custseg executable")
    parser.add_argument("--sizes", default="100k,1M,10M", help="comma-separated N values")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each install per size")
    parser.add_argument("--work", help="directory for data and runs (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="custseg-ab-"))
    print(
        "| N | A median s | B median s | B / A | A peak RSS GB | B peak RSS GB | k A | k B "
        "| final SSE equal |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in [parse_size(s) for s in args.sizes.split(",")]:
        data = work / f"customers-{label(n)}.csv"
        if not data.exists():
            subprocess.run([args.b, "generate", "--rows", str(n), "--seed", "0", "--out",
                            str(data)], check=True, capture_output=True)  # fmt: skip
        times: dict[str, list[float]] = {"a": [], "b": []}
        rss: dict[str, float] = {"a": 0.0, "b": 0.0}
        found: dict[str, dict] = {}
        for i in range(args.repeat):
            for who in ("a", "b") if i % 2 == 0 else ("b", "a"):
                out = work / f"out-{label(n)}-{who}-{i}"
                seconds, peak, metrics = run_once(getattr(args, who), data, out)
                times[who].append(seconds)
                rss[who] = max(rss[who], peak)
                found[who] = metrics
        ma, mb = statistics.median(times["a"]), statistics.median(times["b"])
        sse_a, sse_b = found["a"]["final_sse"], found["b"]["final_sse"]
        same = abs(sse_a - sse_b) <= 1e-9 * abs(sse_a)
        print(f"| {label(n)} | {ma:.2f} | {mb:.2f} | {mb / ma:.2f} | {rss['a']:.2f} | "
              f"{rss['b']:.2f} | {found['a']['chosen_k']} | {found['b']['chosen_k']} | "
              f"{'yes' if same else f'no ({sse_a} vs {sse_b})'} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
