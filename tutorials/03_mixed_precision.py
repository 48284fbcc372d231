"""Mixed precision: find the layers that cost accuracy, set precision per layer, let qcompile search.

Run it from the repository root:  python tutorials/03_mixed_precision.py
It uses the Fashion-MNIST CNN in examples/fashion_cnn (real data, real labels)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import qcompile
from qcompile.analysis import analyze

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion_cnn"
MODEL, CALIB, EVAL = EXAMPLE / "model.onnx", EXAMPLE / "calib.npz", EXAMPLE / "eval.npz"


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="qcompile-mixed-"))

    # 1. Which layer costs accuracy? Every layer alone int8, and alone float, on one switchable library.
    report = analyze(MODEL, out / "report", calib=CALIB, data=EVAL, max_samples=100)
    print(f"all int8: SQNR {report['all_integer']['sqnr_db']} dB; see {out / 'report' / 'report.html'}")
    for row in report["layers"][:3]:
        print(f"  rank {row['rank']}: {row['layer']}  float-only SQNR {row['float_sqnr_db']} dB")

    # 2. Precision per layer: an exact name wins over a glob, the last glob over earlier ones.
    top = report["layers"][0]["layer"]
    rules = qcompile.PrecisionSpec.parse(f"/stem/*=int16,{top}=fp32,default=int8")
    config = qcompile.BuildConfig(precision=rules)
    manual = qcompile.build(MODEL, out / "manual", calib=CALIB, config=config)
    print("manual mix:", manual.plan.layer_precision)

    # 3. Or let qcompile choose: the fewest, cheapest float layers for an output SQNR budget.
    plain = qcompile.verify(qcompile.build(MODEL, out / "int8", calib=CALIB).artifact, MODEL, EVAL)
    budget = qcompile.Budget(min_sqnr=plain["sqnr_db"] + 3.0)
    searched = qcompile.build(MODEL, out / "auto", calib=CALIB, search=qcompile.MixedSearch(EVAL, budget))
    verified = searched.mixed["verified"]
    print(f"search: float layers {searched.mixed['float_layers']}; SQNR {plain['sqnr_db']} -> {verified['sqnr_db']} dB")
    assert verified["met"], verified

    # 4. The chosen map is a file: the next build reuses it without searching.
    spec = qcompile.PrecisionSpec.load(searched.artifact / "precision.json")
    again = qcompile.build(MODEL, out / "again", calib=CALIB, config=qcompile.BuildConfig(precision=spec))
    assert again.plan.layer_precision == searched.plan.layer_precision
    print(json.dumps(spec.to_json()))


if __name__ == "__main__":
    main()
