"""Per-layer precision rules: parsing, precedence (exact name > last matching glob > default), errors."""

import json

import pytest

from qcompile.errors import InputError
from qcompile.precision import PrecisionSpec

LAYERS = ["/stem/Conv", "/blocks.3/a/Conv", "/blocks.3/b/Conv", "/head/Gemm"]


def test_exact_name_beats_glob_and_last_glob_wins():
    spec = PrecisionSpec.parse("/blocks.3/*=fp32,/blocks.3/b*=int16,/blocks.3/a/Conv=int8,default=int8")
    assert spec.resolve(LAYERS, "int16") == {
        "/stem/Conv": "int8",  # the spec's default beats the build's
        "/blocks.3/a/Conv": "int8",  # exact name over both globs
        "/blocks.3/b/Conv": "int16",  # the later glob over the earlier
        "/head/Gemm": "int8",
    }


def test_build_default_applies_without_a_spec_default():
    assert PrecisionSpec.parse("/head/Gemm=fp32").resolve(LAYERS, "int8")["/stem/Conv"] == "int8"
    assert PrecisionSpec.parse("/head/Gemm=fp32").resolve(LAYERS, "int8")["/head/Gemm"] == "fp32"


@pytest.mark.parametrize(
    "text, message",
    [
        ("/nope/Conv=int8", "names no quantizable layer: /nope/Conv"),
        ("/nothing/*=fp32", "matches no quantizable layer"),
        ("/stem/Conv=int3", "is not one of int8, int16, fp16, fp32"),
        ("/stem/Conv", "is not NAME=PRECISION"),
        ("default=float", "is not one of"),
    ],
)
def test_bad_rules_are_one_line_errors(text, message):
    with pytest.raises(InputError, match=message):
        PrecisionSpec.parse(text).resolve(LAYERS, "int8")


def test_file_round_trip_and_merge(tmp_path):
    spec = PrecisionSpec.parse("/blocks.3/*=fp32,default=int8")
    path = tmp_path / "precision.json"
    path.write_text(json.dumps(spec.to_json()))
    loaded = PrecisionSpec.load(path)
    assert loaded == spec
    merged = loaded.merged(PrecisionSpec.parse("/blocks.3/a/Conv=int16"))
    assert merged.resolve(LAYERS, "int8")["/blocks.3/a/Conv"] == "int16"
    assert merged.resolve(LAYERS, "int8")["/blocks.3/b/Conv"] == "fp32"
    with pytest.raises(InputError, match="no such file"):
        PrecisionSpec.load(tmp_path / "missing.json")
