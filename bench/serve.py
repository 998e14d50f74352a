"""Benchmark `custseg serve`: latency of 1- and 1,000-record requests, throughput at
concurrency 1 and 16, and a sustained load with no error, beside `custseg predict` on the
same 1,000 customers (its baseline, measured in the same run).

    .venv/bin/python bench/serve.py                  # 60 s load at concurrency 16
    .venv/bin/python bench/serve.py --load-seconds 10

It trains a model on generated customers, starts `custseg serve` on a free 127.0.0.1 port and
sends requests only there; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
FEATURES = ["Annual Income (k$)", "Spending Score (1-100)"]


def start(root: Path, work: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([str(BIN / "custseg"), "serve", "--model", str(root), "--port",
                             str(port)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"server did not start: {(work / 'serve.log').read_text()[-2000:]}")


def latencies(client: httpx.Client, body: list, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        res = client.post("/predict", json=body)
        out.append(time.perf_counter() - t)
        res.raise_for_status()
    return out


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def load(base: str, body: list, *, concurrency: int, seconds: float) -> tuple[int, int]:
    """Requests and errors from `concurrency` clients sending for `seconds`."""
    counts, errors, stop = [0] * concurrency, [0] * concurrency, time.monotonic() + seconds

    def worker(i: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while time.monotonic() < stop:
                try:
                    ok = c.post("/predict", json=body).status_code == 200
                except httpx.HTTPError:
                    ok = False
                counts[i] += 1
                errors[i] += not ok

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), sum(errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--requests", type=int, default=300, help="requests per latency row")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="custseg-bench-serve-"))
    data, new = work / "customers.csv", work / "new.csv"
    for path, rows, seed in ((data, 20_000, 1), (new, 1000, 2)):
        subprocess.run([str(BIN / "custseg"), "generate", "--rows", str(rows), "--seed",
                        str(seed), "--out", str(path), "--no-truth"], check=True,
                       capture_output=True)  # fmt: skip
    root = work / "art"
    subprocess.run([str(BIN / "custseg"), "run", "--input", str(data), "--out", str(root),
                    "--no-progress"], check=True, capture_output=True)  # fmt: skip
    t = time.perf_counter()
    subprocess.run([str(BIN / "custseg"), "predict", "--model", str(root), "--input", str(new),
                    "--out", str(work / "p.csv")], check=True, capture_output=True)  # fmt: skip
    predict_s = time.perf_counter() - t
    import pandas as pd

    batch = pd.read_csv(new)[FEATURES].to_dict(orient="records")
    proc, base = start(root, work)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            latencies(client, batch[:1], 50)  # warm up
            one = latencies(client, batch[:1], args.requests)
            thousand = latencies(client, batch, max(20, args.requests // 10))
        rps1 = load(base, batch[:1], concurrency=1, seconds=5)[0] / 5
        rps16 = load(base, batch[:1], concurrency=16, seconds=5)[0] / 5
        total, errors = load(base, batch[:1], concurrency=16, seconds=args.load_seconds)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = {
        "1 record p50 ms": pct(one, 0.5), "1 record p99 ms": pct(one, 0.99),
        "1,000 records p50 ms": pct(thousand, 0.5), "1,000 records p99 ms": pct(thousand, 0.99),
        "req/s at concurrency 1": rps1, "req/s at concurrency 16": rps16,
        f"load {args.load_seconds:.0f} s at c=16: requests": total, "errors": errors,
        "custseg predict, 1,000 customers (process) s": predict_s,
        "1,000 records p50 / custseg predict": pct(thousand, 0.5) / 1000 / predict_s,
    }  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, value in rows.items():
        print(f"| {name} | {value:.3f} |" if isinstance(value, float) else f"| {name} | {value} |")
    print(json.dumps({"cores": os.cpu_count(), "median_1": statistics.median(one)}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
