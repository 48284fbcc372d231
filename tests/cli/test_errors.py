"""Every bad input: exit code 2, one line on stderr naming the problem, no traceback, no artifact."""

import subprocess
import sys

import numpy as np
import pytest

from qcompile.cli import main
from tests.support.synthetic import random_inputs, unsupported_model


def _build_fails(capsys, tmp_path, args, expect):
    out = tmp_path / "art"
    code = main(["build", *map(str, args), "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("qcompile: error:"), err
    assert "Traceback" not in err
    assert expect in err, err
    assert not out.exists(), "no partial artifact"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".art")], "no staging leftovers"
    return err


def test_missing_model(capsys, tmp_path, block):
    _build_fails(capsys, tmp_path, [tmp_path / "nope.onnx", "--calib", block["calib"]], "model file not found")


def test_not_an_onnx_file(capsys, tmp_path, block):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a protobuf\n" * 10)
    _build_fails(capsys, tmp_path, [bad, "--calib", block["calib"]], "not a readable ONNX model")


def test_truncated_onnx(capsys, tmp_path, block):
    cut = tmp_path / "cut.onnx"
    data = block["model"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    _build_fails(capsys, tmp_path, [cut, "--calib", block["calib"]], "ONNX model")


def test_unsupported_ops_listed_together(capsys, tmp_path, block):
    model = unsupported_model(tmp_path / "u.onnx")
    err = _build_fails(capsys, tmp_path, [model, "--calib", block["calib"]], "unsupported ONNX operators")
    assert "StringNormalizer" in err and "TfIdfVectorizer" in err


@pytest.mark.parametrize(
    "arrays,expect",
    [
        ({"image": random_inputs(4, 0)}, "model inputs are ['input']"),
        ({"input": random_inputs(4, 0, shape=(3, 8, 8))}, "the model wants [N, 3, 12, 12]"),
        ({"input": np.zeros((4, 3, 12, 12), np.int32)}, "is int32; the model input is float32"),
        ({"input": np.zeros((0, 3, 12, 12), np.float32)}, "is empty"),
        ({"input": np.full((4, 3, 12, 12), np.nan, np.float32)}, "NaN/Inf"),
    ],
    ids=["names", "shape", "dtype", "empty", "nan"],
)
def test_calibration_data_mismatch(capsys, tmp_path, block, arrays, expect):
    calib = tmp_path / "calib.npz"
    np.savez(calib, **arrays)
    _build_fails(capsys, tmp_path, [block["model"], "--calib", calib], expect)


def test_empty_image_folder(capsys, tmp_path, block):
    folder = tmp_path / "images"
    folder.mkdir()
    _build_fails(capsys, tmp_path, [block["model"], "--calib", folder], "holds no images")


def test_unknown_target_lists_known(capsys, tmp_path, block):
    _build_fails(
        capsys,
        tmp_path,
        [block["model"], "--calib", block["calib"], "--target", "riscv"],
        "known: arm, arm-dotprod, arm-i8mm, cuda-sm80, cuda-sm86, cuda-sm90, npu, npu-u55-256, npu-u65, npu-u85, x86,",
    )


def test_unsupported_bits(capsys, tmp_path, block):
    _build_fails(capsys, tmp_path, [block["model"], "--calib", block["calib"], "--bits", "4"], "--bits 4")


def test_unknown_skip_name(capsys, tmp_path, block):
    _build_fails(capsys, tmp_path, [block["model"], "--calib", block["calib"], "--skip", "conv9"], "conv9")


def test_unwritable_output_path(capsys, tmp_path, block):
    """The output's parent is a regular file: nothing can be created there (holds for root too)."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["build", str(block["model"]), "--calib", str(block["calib"]), "-o", str(blocker / "art")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "not writable" in err, err


def test_bad_flag_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, "-m", "qcompile.cli", "build", "--frobnicate"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--precision", "/nope/Conv=int16"], "--precision names no quantizable layer: /nope/Conv"),
        (["--precision", "/fc/*=int3"], "is not one of int8, int16, fp16, fp32"),
        (["--precision", "/fc/Gemm=fp16"], "fp16 layers need a GPU target"),
        (["--precision-file", "missing.json"], "--precision-file missing.json: no such file"),
        (["--max-top1-drop", "0.5"], "need --eval DATA"),
        (["--eval", "EVAL"], "--eval needs a budget"),
        (["--eval", "EVAL", "--max-top1-drop", "1", "--min-sqnr", "30"], "exactly one accuracy budget"),
    ],
)
def test_bad_precision_and_search_options(capsys, tmp_path, fashion, extra, expect):
    extra = [str(fashion["eval"]) if a == "EVAL" else a for a in extra]
    _build_fails(capsys, tmp_path, [fashion["model"], "--calib", fashion["calib"], *extra], expect)


def test_analyze_bad_data_is_one_line_and_writes_nothing(capsys, tmp_path, fashion):
    out = tmp_path / "report"
    args = ["analyze", str(fashion["model"]), "--calib", str(fashion["calib"]), "--data", str(tmp_path / "no.npz")]
    assert main([*args, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "evaluation data not found" in err, err
    assert not out.exists()
