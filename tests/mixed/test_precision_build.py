"""Per-layer precision on the real Fashion CNN: int16 / fp32 layers where the rules say, correct
conversions at every boundary (accuracy stays at the fp32 level), and the search's precision file
reproduces its library exactly."""

import json

import numpy as np

from qcompile.cli import main
from qcompile.runtime import Runner, open_artifact


def _build(tmp_path, fashion, name, *extra):
    out = tmp_path / name
    assert main(["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "-o", str(out), *extra]) == 0
    return out


def _verify(out, fashion, data=None):
    import qcompile

    return qcompile.verify(out, fashion["model"], data or fashion["test"])["outputs"]["logits"]


def test_int16_and_fp32_layers_by_name_and_glob(tmp_path, fashion):
    out = _build(
        tmp_path,
        fashion,
        "mixed",
        "--precision",
        "/conv3/conv3.0/Conv=int16,/stem/*=int16,/stem/stem.0/stem.0.0/Conv=fp32,/fc/Gemm=fp32",
    )
    plan = json.loads((out / "plan.json").read_text())
    assert plan["layer_precision"] == {
        "/stem/stem.0/stem.0.0/Conv": "fp32",  # exact name over the glob
        "/stem/stem.1/stem.1.0/Conv": "int16",
        "/conv3/conv3.0/Conv": "int16",  # reads the max-pooled stem output, stored int16 for it
        "/res_conv/Conv": "int8",
        "/conv5/conv5.0/Conv": "int8",
        "/fc/Gemm": "fp32",
    }
    assert {s["dtype"] for s in plan["sites"].values()} == {"int16", "uint8"}
    m = _verify(out, fashion)
    assert m["top1_drop"] <= 0.3 and m["sqnr_db"] > 40.0, m


def test_search_meets_an_sqnr_budget_and_its_precision_file_rebuilds_it(tmp_path, fashion, fashion_int8):
    data = np.load(fashion["test"])
    subset = tmp_path / "test500.npz"  # 500 of the 2000 test images: each configuration is one pass over them
    np.savez(subset, input=data["input"][:500], labels=data["labels"][:500])
    plain = _verify(fashion_int8, fashion, subset)
    budget = plain["sqnr_db"] + 4.0
    out = _build(tmp_path, fashion, "auto", "--eval", str(subset), "--min-sqnr", str(budget))
    report = json.loads((out / "mixed_precision.json").read_text())
    assert report["verified"]["met"] and report["verified"]["sqnr_db"] >= budget
    assert 0 < len(report["float_layers"]) < 6
    assert report["sensitivity"] and report["evaluated"][0]["note"] == "all integer"
    assert _verify(out, fashion, subset)["sqnr_db"] >= budget > plain["sqnr_db"]
    again = _build(tmp_path, fashion, "again", "--precision-file", str(out / "precision.json"))
    x = {"input": np.load(fashion["eval"])["input"][:8]}
    a, b = Runner(open_artifact(out)), Runner(open_artifact(again))
    for i in range(8):
        batch = {"input": x["input"][i : i + 1]}
        np.testing.assert_array_equal(a(batch)[0], b(batch)[0])


def test_top1_budget_with_labels_already_met_by_all_int8(tmp_path, fashion):
    out = _build(tmp_path, fashion, "top1", "--eval", str(fashion["test"]), "--max-top1-drop", "0.3", "--labels")
    report = json.loads((out / "mixed_precision.json").read_text())
    assert report["verified"]["met"] and report["verified"]["top1_drop"] <= 0.3
    assert report["float_layers"] == []


def test_analyze_writes_a_ranked_report_with_plots(tmp_path, fashion):
    out = tmp_path / "report"
    code = main(
        [
            "analyze",
            str(fashion["model"]),
            "--calib",
            str(fashion["calib"]),
            "--data",
            str(fashion["test"]),
            "-o",
            str(out),
            "--max-samples",
            "64",
            "--schemes",
            "int8,int4,binary",
        ]
    )
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    schemes = report["schemes"]["rows"]  # each layer alone under int4 and binary, on the same 64 images
    assert sorted((r["layer"], r["scheme"]) for r in schemes) == sorted(
        (row["layer"], s) for row in report["layers"] for s in ("int4", "binary")
    )
    for layer in {r["layer"] for r in schemes}:
        int4, binary = (
            next(r for r in schemes if r["layer"] == layer and r["scheme"] == s) for s in ("int4", "binary")
        )
        assert int4["sqnr_db"] > binary["sqnr_db"] + 10, (int4, binary)  # measured 18-38 dB apart
        assert binary["weight_bytes"] < int4["weight_bytes"] < int4["int8_weight_bytes"]
    assert len(report["layers"]) == 6 and report["samples"] == 64
    for row in report["layers"]:
        assert {"int8_sqnr_db", "float_sqnr_db", "int8_top1_change", "float_top1_change", "macs_share"} <= set(row)
    assert report["curve"][0]["float_layers"] == 0 and report["curve"][-1]["float_layers"] == 6
    assert report["curve"][-1]["top1_agreement"] == 100.0  # every layer float is the float model
    assert report["curve"][-1]["weight_bytes"] > 3.5 * report["curve"][0]["weight_bytes"]
    page = (out / "report.html").read_text()
    for png in ("sqnr_per_layer.png", "tradeoff.png"):
        assert png in page and (out / png).read_bytes()[:4] == b"\x89PNG"


def test_scheme_search_builds_a_smaller_mix_within_the_budget(tmp_path, fashion, fashion_int8):
    evals = tmp_path / "eval200.npz"  # 200 held-out images keep the search's evaluations short
    np.savez(evals, **{k: v[:200] for k, v in np.load(fashion["eval"]).items()})
    out = _build(
        tmp_path, fashion, "schemes",
        "--eval", str(evals), "--max-top1-drop", "1.0", "--schemes", "int8,int4,ternary",
        "--max-size-mb", "0.09", "--probe-samples", "16",
    )  # fmt: skip
    search = json.loads((out / "scheme_search.json").read_text())
    report = json.loads((out / "report.json").read_text())["integer_weights"]
    int8 = json.loads((fashion_int8 / "report.json").read_text())["integer_weights"]["stored_bytes"]
    assert search["verified"]["met"] and search["verified"]["top1_agreement"] >= 99.0, search["verified"]
    assert search["size_met"] and report["stored_bytes"] == search["weight_bytes"] <= 90_000 < int8
    assert search["int8_weight_bytes"] == int8
    assert search["layers"] and set(search["layers"].values()) <= {"int4", "ternary"}
    layers = json.loads((out / "precision.json").read_text())["layers"]
    assert layers == search["layers"]  # the map, reusable with --precision-file
    assert {k: v["scheme"].split("/")[0] for k, v in report["by_layer"].items() if k in layers} == layers
