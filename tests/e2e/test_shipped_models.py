"""Third-party ONNX files exactly as their PyPI packages ship them (dynamic dims, shape subgraphs, If,
LSTM, integer and state inputs), built the way a user would, each scored on its own task against fp32
on real data of the right kind: photos for the detector, this machine's files for magika, synthesised
speech in noise for the voice activity detector. Artifacts are built once per run (tests/conftest.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import qcompile
from qcompile.cli import main
from qcompile.runtime import Runner, open_artifact
from tests.conftest import SILERO_ARGS


def _report(artifact):
    return json.loads((artifact / "report.json").read_text())


def test_yolo_detections_agree_with_fp32(yolo, yolo_int8):
    m = qcompile.verify(yolo_int8, yolo["model"], yolo["eval"], task="detect")
    task = m["task"]
    assert m["samples"] == 64 and task["boxes_fp32"] >= 150, task  # enough boxes for the rates to mean much
    # measured: AP50 vs fp32 ~97.3, box F1 90.5-93 (boxes near the 0.25 score threshold flip), SQNR ~35 dB
    assert task["ap50_vs_fp32"] >= 95.0 and task["box_f1"] >= 87.0 and task["box_mean_iou"] >= 0.9, task
    assert m["sqnr_db"] >= 30.0, m


def test_yolo_layers_are_integer_and_accounting_counts_constant_weights(yolo, yolo_int8):
    plan = json.loads((yolo_int8 / "plan.json").read_text())
    assert len(plan["quantized_layers"]) == 64 and plan["float_layers"] == []
    manifest = open_artifact(yolo_int8).manifest
    assert manifest["model"]["folding"]["evaluated_nodes"] > 0 and manifest["model"]["prepared_sha256"]
    info = qcompile.inspect(yolo["model"], {"images": (1, 3, 320, 320)})
    weights = _report(yolo_int8)["weights_fp32_bytes"]
    assert info["weights_fp32_bytes"] == weights and weights > 11_000_000  # 3.0M parameters, fp32
    assert open_artifact(yolo_int8).total_bytes <= 0.40 * weights


def test_magika_file_types_agree_with_fp32(magika, magika_int8):
    m = qcompile.verify(magika_int8, magika["model"], magika["eval"], task="classify")
    assert m["samples"] >= 200
    # measured 99.1 (95.0 before GELU-tanh's multiplies moved into the layer epilogue and the LayerNorm
    # islands stayed float)
    assert m["task"]["top1_agreement"] >= 97.0 and m["sqnr_db"] >= 30.0, m


def test_silero_speech_decisions_agree_with_fp32(silero, silero_int8):
    m = qcompile.verify(silero_int8, silero["model"], silero["eval"], task="binary")
    assert 0.2 < m["task"]["positives_fp32"] / m["samples"] < 0.95, m["task"]  # speech and pauses both there
    assert m["task"]["decision_agreement"] >= 99.0, m
    plan = json.loads((silero_int8 / "plan.json").read_text())
    assert len(plan["quantized_layers"]) == 8, plan  # 6 conv1d (as conv2d) + the LSTM's two projections


def test_silero_runs_recurrently_on_its_own_state(silero, silero_int8):
    """Deployed, the library feeds itself its own state chunk after chunk: its speech decisions still
    follow the float model's over a whole stream."""
    from qcompile.zoo.speech import CHUNK, CONTEXT, RATE, vad_chunks

    ref = vad_chunks(silero["model"], silero["eval_stream"])["prob"]
    runner = Runner(open_artifact(silero_int8))
    stream = silero["eval_stream"]
    state, context, probs = np.zeros((2, 1, 128), np.float32), np.zeros(CONTEXT, np.float32), []
    for k in range(len(stream) // CHUNK):
        x = np.concatenate([context, stream[k * CHUNK : (k + 1) * CHUNK]])[None]
        prob, state = runner({"input": x, "state": state})
        probs.append(float(prob.reshape(-1)[0]))
        context = x[0, -CONTEXT:]
    agreement = np.mean((np.array(probs) > 0.5) == (ref > 0.5))
    assert len(probs) * CHUNK / RATE > 20 and agreement >= 0.98, agreement


def test_data_may_carry_the_fixed_input(silero, silero_int8, tmp_path):
    data = dict(np.load(silero["eval"]))
    n = len(data["input"])
    np.savez(tmp_path / "with_sr.npz", **data, sr=np.full(n, 16000, np.int64))
    np.savez(tmp_path / "other_sr.npz", **data, sr=np.full(n, 8000, np.int64))
    assert qcompile.verify(silero_int8, silero["model"], tmp_path / "with_sr.npz", max_samples=32)["samples"] == 32
    with pytest.raises(qcompile.QCompileError, match="differs from the value"):
        qcompile.verify(silero_int8, silero["model"], tmp_path / "other_sr.npz")


def test_if_on_sample_rate_needs_fix_input(silero, capsys, tmp_path):
    from qcompile.zoo.shipped import shipped_model

    model = shipped_model("silero-ifless")
    args = ["--input-shape", "input:1x576", "--input-shape", "state:2x1x128", "--calib", str(silero["calib"])]
    assert main(["build", str(model), "-o", str(tmp_path / "a"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--fix-input sr=VALUE" in err, err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_budgeted_builds_reach_97_percent(yolo, magika, silero, tmp_path):
    """Where plain int8 misses 97% agreement, the mixed-precision search meets it with few float layers
    (measured at --min-sqnr 41: YOLO one float layer, box F1 96.9-97.3 / AP50 99.1; magika one float
    layer, 99.0)."""
    from qcompile.zoo.shipped import shipped_model

    yolo_out = tmp_path / "yolo"
    shape = ["--input-shape", "images:1x3x320x320"]
    _ = _build_search(
        yolo["model"], yolo_out, *shape, "--calib", yolo["calib"], "--eval", yolo["eval"], "--min-sqnr", 42.5
    )
    task = qcompile.verify(yolo_out, yolo["model"], yolo["eval"], task="detect")["task"]
    assert task["box_f1"] >= 97.0 and task["ap50_vs_fp32"] >= 98.0, task
    assert len(json.loads((yolo_out / "mixed_precision.json").read_text())["float_layers"]) <= 3
    mag_out = tmp_path / "magika"
    _build_search(magika["model"], mag_out, "--calib", magika["calib"], "--eval", magika["eval"], "--max-top1-drop", 2)
    assert qcompile.verify(mag_out, magika["model"], magika["eval"])["top1_agreement"] >= 97.0
    ifless = tmp_path / "ifless"
    _build_search(shipped_model("silero-ifless"), ifless, *SILERO_ARGS, "--calib", silero["calib"])
    m = qcompile.verify(ifless, shipped_model("silero-ifless"), silero["eval"], task="binary")
    assert m["task"]["decision_agreement"] >= 99.0, m


def _build_search(model, out, *args):
    assert main(["build", str(model), "-o", str(out), *map(str, args)]) == 0
    return out
