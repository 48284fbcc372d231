"""qcompile bench and the fp32 (--bits 32) library it compares against."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from qcompile.cli import main
from qcompile.runtime import Runner, open_artifact


def test_fp32_library_matches_onnxruntime_and_bench_prints_every_engine(fashion, fashion_int8, tmp_path, capsys):
    fp32, int8 = tmp_path / "fp32", fashion_int8  # the shared default int8 build
    assert main(["build", str(fashion["model"]), "--bits", "32", "-o", str(fp32)]) == 0
    manifest = json.loads((fp32 / "manifest.json").read_text())
    assert manifest["quantization"]["bits"] == 32 and manifest["quantization"]["activations"]["dtype"] == "float32"
    x = np.load(fashion["eval"])["input"][:16]
    got = np.concatenate([Runner(open_artifact(fp32))({"input": s[None]})[0] for s in x])
    session = ort.InferenceSession(str(fashion["model"]))  # the model's batch is 1
    ref = np.concatenate([session.run(None, {"input": s[None]})[0] for s in x])
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)

    capsys.readouterr()
    out = tmp_path / "bench.json"
    args = ["bench", str(int8), str(fp32), "--model", str(fashion["model"]), "--vs-onnxruntime"]
    args += ["--ort-int8-calib", str(fashion["calib"]), "--threads", "2", "--rounds", "2", "--per-round", "3"]
    assert main([*args, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    engines = [r["engine"] for r in rows]
    assert engines == [
        "qcompile int8 (default schedules)",
        "qcompile fp32 (default schedules)",
        "onnxruntime fp32",
        "onnxruntime int8 (QDQ)",
    ]
    assert all(r["median_ms"] > 0 and r["p10_ms"] <= r["median_ms"] for r in rows)
    assert rows[0]["ratio_to_first"] == 1.0
    for engine in engines:
        assert engine in table


def test_bench_needs_the_model_for_onnxruntime(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--vs-onnxruntime"]) == 2
    assert "need --model" in capsys.readouterr().err


def test_background_load_measures_every_engine_again_and_ends_its_processes(fashion, fashion_int8, tmp_path, capsys):
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "loaded.json"
    args = ["bench", str(fashion_int8), "--model", str(fashion["model"]), "--vs-onnxruntime", "--threads", "2"]
    assert main([*args, "--rounds", "2", "--per-round", "3", "--background", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["background"] == 2 and len(doc["rows"]) == 2
    for row in doc["rows"]:
        assert row["loaded_median_ms"] > 0
        assert abs(row["slowdown"] - row["loaded_median_ms"] / row["median_ms"]) < 2e-3
    assert "with 2 busy background processes" in capsys.readouterr().out
    left = {p.pid for p in psutil.Process().children(recursive=True)} - before
    assert not left, f"background processes outlived the benchmark: {left}"


def test_background_count_is_checked(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--background", "-1"]) == 2
    assert "--background -1" in capsys.readouterr().err


def test_profile_times_every_kernel_the_library_calls(fashion_int8, tmp_path, capsys):
    import re

    import tvm

    art = open_artifact(fashion_int8)
    table = art.read_json("kernels.json")["kernels"]
    program = tvm.relax.VMExecutable(tvm.runtime.load_module(str(art.library))).as_text()
    called = {m for m in re.findall(r"call\s+(\S+)", program) if not m.startswith("vm.builtin.")}
    assert {k["kernel"] for k in table} == called  # the inventory is what main really calls
    assert sum(k["calls"] for k in table) == len([m for m in re.findall(r"call\s+(\S+)", program) if m in called])
    assert {k["schedule"] for k in table} <= {"tuned", "default", "plain"}

    out = tmp_path / "profile.json"
    assert main(["bench", str(fashion_int8), "--profile", "--threads", "2", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())[str(fashion_int8)]
    assert {r["kernel"] for r in doc["kernels"]} == called and not doc["not_timed"]
    assert all(
        r["per_call_ms"] > 0 and abs(r["total_ms"] - r["per_call_ms"] * r["calls"]) < 1e-9 for r in doc["kernels"]
    )
    totals = [r["total_ms"] for r in doc["kernels"]]
    assert totals == sorted(totals, reverse=True) and doc["model_ms"] > 0
    convs = [r for r in doc["kernels"] if "conv2d" in r["kernel"]]
    assert convs and all(r["schedule"] == "default" for r in convs)  # the shared build has no tuning database
    kinds = doc["by_schedule"]
    assert sum(k["kernels"] for k in kinds.values()) == len(doc["kernels"])
    assert (
        abs(sum(k["share"] for k in kinds.values()) - 1) < 1e-9
        and abs(sum(k["ms"] for k in kinds.values()) - sum(totals)) < 1e-9
    )
    printed = capsys.readouterr().out
    assert "outside them: the VM's own work" in printed and "by schedule, of the kernels' time: default" in printed


def test_profile_of_an_artifact_without_kernel_table_says_rebuild(fashion_int8, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(fashion_int8, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["kernels.json"]
    (old / "kernels.json").unlink()
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert main(["bench", str(old), "--profile"]) == 2
    assert "rebuild it to profile" in capsys.readouterr().err
