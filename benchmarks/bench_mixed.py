"""Automatic mixed precision on EfficientNet-Lite0 (the issue's bar run; prints numbers, asserts nothing):
plain int8 vs the searched mix on a 500-image held-out set of photo views, the share of layers kept int8,
library size, and latency of both libraries measured side by side (qcompile.bench), plus the search time.

    python benchmarks/bench_mixed.py                               # --max-top1-drop 1.0 (>= 99% agreement)
    python benchmarks/bench_mixed.py --max-top1-drop 2 --area 0.08,0.6   # fragment crops (near-ties)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-top1-drop", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--area", default="0.25,1.0", help="crop area range of the held-out views")
    parser.add_argument("--time-budget", type=float, default=None, help="search time budget in seconds")
    args = parser.parse_args()

    import qcompile
    from qcompile.bench import bench, format_table
    from qcompile.zoo.efficientnet import efficientnet_lite0_onnx
    from qcompile.zoo.photos import photo_batches, photo_holdout

    work = Path(tempfile.mkdtemp(prefix="qcompile-mixed-"))
    model = efficientnet_lite0_onnx(batch=None)
    np.savez(work / "calib.npz", input=photo_batches("calib")[0])
    lo, hi = (float(v) for v in args.area.split(","))
    np.savez(work / "eval.npz", input=photo_holdout(args.images, (lo, hi)))

    plain = qcompile.build(model, work / "int8", calib=work / "calib.npz").artifact
    budget = qcompile.Budget(max_top1_drop=args.max_top1_drop)
    search = qcompile.MixedSearch(work / "eval.npz", budget, args.time_budget)
    t = time.perf_counter()
    mixed = qcompile.build(model, work / "mixed", calib=work / "calib.npz", search=search)
    seconds = time.perf_counter() - t
    m_plain = qcompile.verify(plain, model, work / "eval.npz")
    m_mixed = qcompile.verify(mixed.artifact, model, work / "eval.npz")
    layers = mixed.plan.layer_precision
    int8 = sum(1 for p in layers.values() if p == "int8")
    for name, m in (("plain int8", m_plain), ("mixed", m_mixed)):
        out = m["outputs"]["logits"]
        print(
            f"{name:>10}: top-1 agreement {out['top1_agreement']:.2f}%  SQNR {out['sqnr_db']:.2f} dB  "
            f"library {m['library_bytes'] / 1e6:.2f} MB"
        )
    print(
        f"mixed keeps {int8}/{len(layers)} layers int8 ({100 * int8 / len(layers):.1f}%); "
        f"build with search {seconds:.0f} s (search alone {mixed.timings['mixed_search']:.0f} s)"
    )
    print("float layers:", ", ".join(mixed.mixed["float_layers"]) or "none")
    inputs = [{"input": x[None]} for x in np.load(work / "eval.npz")["input"][:8]]
    result = bench([plain, mixed.artifact], model=Path(model), inputs=inputs, threads=2, rounds=5, per_round=20)
    print(format_table(result))
    (work / "summary.json").write_text(json.dumps({"plain": m_plain, "mixed": m_mixed, "search_s": seconds}, indent=2))
    print(f"details: {work}")


if __name__ == "__main__":
    main()
