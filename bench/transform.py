"""Evidence for the default transform of order-log features: none against log1p on CDNOW.

Runs `custseg run --transactions` (in process, full k = 1..50 sweep, default seed) on the
real CDNOW order log once per transform and prints, per transform: the chosen k and its
confidence, the smallest and largest segment's share, the promotion gate's verdict, the
silhouette of the final segments in the model's own (scaled) space, and the agreement (ARI)
of the segments with the classic RFM segments and with the r/f/m quintile scores.

    .venv/bin/python bench/transform.py           # CDNOW, from ../shared/data
    .venv/bin/python bench/transform.py --transactions orders.csv
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CDNOW = ROOT.parent / "shared" / "data" / "cdnow_transactions.csv"


def measure(transactions: Path, transform: str, out: Path, k: int | None) -> dict[str, Any]:
    """One run on the order log with `transform` (k chosen, or fixed at `k`), and what its
    segments look like."""
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    from custseg.model import load_model
    from custseg.options import PipelineConfig
    from custseg.preprocess import model_frame

    start = time.perf_counter()
    fixed = {"k_min": k, "k_max": k} if k else {}
    summary = pipeline_run(transactions, PipelineConfig(transform=transform, **fixed), out)
    seconds = time.perf_counter() - start
    run_dir = Path(summary["run_dir"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    table = pd.read_parquet(metrics["transactions"]["out"])
    idc = table.columns[0]
    seg = pd.read_parquet(run_dir / "assignments.parquet").set_index(idc)["segment"]
    table = table.set_index(idc).loc[seg.index]
    model = load_model(str(run_dir / "model.skops"))
    features = metrics["features"]
    scaled = model[0].transform(model_frame(table[features].to_numpy(float), features))
    rng = np.random.default_rng(0)
    rows = rng.choice(len(scaled), size=min(5000, len(scaled)), replace=False)
    k = metrics["chosen_k"]
    sil = silhouette_score(scaled[rows], seg.to_numpy()[rows]) if k > 1 else float("nan")
    rfm_cells = table[["r_score", "f_score", "m_score"]].astype(str).agg("".join, axis=1)
    shares = [s["share"] for s in metrics["segments"]]
    used = {f: explained_rank_variance(table[f], seg) for f in features}
    return {
        "transform": transform, "k": k if fixed else f"{k} (chosen)",
        "confidence": metrics["selection"].get("confidence"),
        "smallest": min(shares), "largest": max(shares),
        "gate": "failed" if metrics["promotion"]["forced"] else "passed",
        "silhouette": sil,
        "ari_rfm_segment": adjusted_rand_score(table["rfm_segment"], seg),
        "ari_rfm_cells": adjusted_rand_score(rfm_cells, seg),
        "seconds": seconds,
        "used": used,
    }  # fmt: skip


def explained_rank_variance(values: pd.Series, segments: pd.Series) -> float:
    """Share of a feature's rank variance that lies between the segments (eta squared on
    ranks): how much the segmentation separates customers on that feature, whatever its
    skew."""
    ranks = values.rank().to_numpy()
    seg = segments.to_numpy()
    means = pd.Series(ranks).groupby(seg).transform("mean").to_numpy()
    return float(((means - ranks.mean()) ** 2).sum() / ((ranks - ranks.mean()) ** 2).sum())


def pipeline_run(transactions: Path, config: Any, out: Path) -> dict[str, Any]:
    from custseg.pipeline import run_pipeline

    return run_pipeline(config, input_path="", out=str(out), transactions_path=str(transactions),
                        force_promote=True)  # fmt: skip


def row(r: dict[str, Any]) -> str:
    """One Markdown table row of a `measure` result."""
    used = ", ".join(f"{f} {v:.2f}" for f, v in r["used"].items())
    return (f"| {r['transform']} | {r['k']} | {r['confidence']} | {r['smallest']:.1%} | "
            f"{r['largest']:.1%} | {r['gate']} | {r['silhouette']:.3f} | "
            f"{r['ari_rfm_segment']:.3f} | {r['ari_rfm_cells']:.3f} | {used} | "
            f"{r['seconds']:.1f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=Path, default=CDNOW, help="the order log")
    parser.add_argument(
        "--k",
        type=int,
        nargs="*",
        default=[5, 8],
        help="also fit at these fixed ks (analysts often ask for a number)",
    )
    args = parser.parse_args()
    print(f"order log: {args.transactions}")
    header = ("transform", "k", "confidence", "smallest", "largest", "gate", "silhouette",
              "ARI vs rfm_segment", "ARI vs RFM cells", "rank R2 per feature",
              "seconds")  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory(prefix="custseg-transform-") as tmp:
        for k in [None, *args.k]:
            for transform in ("none", "log1p"):
                r = measure(args.transactions, transform, Path(tmp) / f"{transform}-{k}", k)
                print(row(r))


if __name__ == "__main__":
    main()
