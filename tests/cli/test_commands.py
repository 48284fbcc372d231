"""build / verify / run / inspect through the CLI on the synthetic block model."""

import json

import numpy as np
import onnxruntime as ort

from qcompile.cli import main


def _build(model, calib, out=None, *extra) -> int:
    args = ["build", str(model), "--calib", str(calib), *map(str, extra)]
    return main(args + (["-o", str(out)] if out is not None else []))


def test_build_verify_run_inspect(capsys, tmp_path, block):
    art = tmp_path / "art"
    assert _build(block["model"], block["calib"], art, "--dump-ir", tmp_path / "ir") == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["inputs"] == [{"name": "input", "shape": [1, 3, 12, 12], "dtype": "float32"}]
    assert manifest["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert manifest["target"]["name"] == "x86" and manifest["versions"]["tvm"]
    assert set(manifest["files"]) == {
        "model.so",
        "report.json",
        "qparams.json",
        "plan.json",
        "rounding.npz",
        "kernels.json",
    }
    realized = (tmp_path / "ir" / "04_realize.py").read_text()
    assert 'out_dtype="int32"' in realized and "uint8" in realized

    metrics_file = tmp_path / "m.json"
    verify = ["verify", str(art), "--model", str(block["model"]), "--data", str(block["eval"])]
    assert main([*verify, "--json", str(metrics_file), "--per-layer"]) == 0
    metrics = json.loads(metrics_file.read_text())
    for key in ("top1_agreement", "top1_fp32", "top1_int8", "sqnr_db", "cosine", "latency_ms_int8_qcompile",
                "latency_ms_fp32_onnxruntime", "library_bytes", "artifact_bytes", "weights_fp32_bytes"):  # fmt: skip
        assert key in metrics, key
    layers = [row["layer"] for row in metrics["per_layer"] if row["op"] in ("nn.conv2d", "matmul")]
    assert layers == ["conv1", "dw", "fc"]

    out = tmp_path / "y.npz"
    assert main(["run", str(art), "--input", str(block["eval"]), "-o", str(out)]) == 0
    got = np.load(out)["logits"]
    session = ort.InferenceSession(str(block["model"]))
    ref = np.concatenate([session.run(None, {"input": x[None]})[0] for x in np.load(block["eval"])["input"]])
    assert got.shape == ref.shape == (16, 10)
    assert np.mean(got.argmax(1) == ref.argmax(1)) >= 0.9

    capsys.readouterr()
    assert main(["inspect", str(block["model"]), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert [layer["name"] for layer in info["layers"]] == ["conv1", "dw", "fc"]
    assert info["ops"]["Conv"] == 2 and all(layer["quantizable"] for layer in info["layers"])


def test_verify_bar_fails_with_exit_1(capsys, tmp_path, block):
    art = tmp_path / "art"
    options = ("--skip-first", "--method", "minmax", "--no-bias-correction")
    assert _build(block["model"], block["calib"], art, *options) == 0
    config = json.loads((art / "manifest.json").read_text())["quantization"]["config"]
    assert config["method"] == "minmax" and config["bias_correction"] is False and config["skip_first"] is True
    # labels of the synthetic set are arbitrary, so accuracy is ~10%; a negative budget cannot hold
    verify = ["verify", str(art), "--model", str(block["model"]), "--data", str(block["eval"])]
    code = main([*verify, "--max-top1-drop", "-1"])
    assert code == 1 and "exceeds --max-top1-drop" in capsys.readouterr().err


def test_run_refuses_a_library_for_instructions_this_cpu_lacks(capsys, tmp_path, block):
    art = tmp_path / "art"
    assert _build(block["model"], block["calib"], art) == 0
    manifest_file = art / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    assert manifest["target"]["cpu_flags"] == ["avx2", "fma"]
    manifest["target"]["cpu_flags"].append("no_such_isa")
    manifest_file.write_text(json.dumps(manifest))
    assert main(["run", str(art), "--input", str(block["eval"]), "-o", str(tmp_path / "y.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no_such_isa" in err and "--target x86-64" in err
    assert not (tmp_path / "y.npz").exists()


def test_stop_after_realize_writes_ir_but_no_artifact(tmp_path, block):
    assert _build(block["model"], block["calib"], None, "--stop-after", "realize", "--dump-ir", tmp_path / "ir") == 0
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [
        "00_import.py", "01_canonicalize.py", "02_annotate.json", "03_calibrate.json", "04_realize.py",
    ]  # fmt: skip


def test_dynamic_batch_needs_no_flag_and_accepts_input_shape(tmp_path):
    from tests.support.synthetic import block_model, random_inputs

    model = block_model(tmp_path / "dyn.onnx", batch="N")
    np.savez(tmp_path / "c.npz", input=random_inputs(8, 0))
    assert _build(model, tmp_path / "c.npz", tmp_path / "a", "--input-shape", "input:1x3x12x12") == 0
    assert _build(model, tmp_path / "c.npz", tmp_path / "b") == 0
