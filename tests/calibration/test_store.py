import json

import pytest

from qcompile.calibration.store import load_qparams
from qcompile.config import BuildConfig
from qcompile.errors import InputError
from qcompile.pipeline import annotate_stage, build, canonicalize_stage, load_stage
from qcompile.targets import TARGETS


def test_qparams_round_trip_gives_identical_library(block, tmp_path):
    first = build(block["model"], tmp_path / "a", calib=block["calib"], config=BuildConfig(method="percentile"))
    again = build(
        block["model"], tmp_path / "b", qparams=first.artifact / "qparams.json", config=BuildConfig(method="percentile")
    )
    assert again.qparams == first.qparams
    a = json.loads((first.artifact / "manifest.json").read_text())["files"]["model.so"]["sha256"]
    b = json.loads((again.artifact / "manifest.json").read_text())["files"]["model.so"]["sha256"]
    assert a == b, "the same model and qparams must compile to the same library"


def test_qparams_for_other_plan_are_rejected(block, tmp_path):
    first = build(block["model"], tmp_path / "a", calib=block["calib"])
    config = BuildConfig(bits=16)
    canon = canonicalize_stage(load_stage(block["model"], config))
    plan = annotate_stage(canon, config, TARGETS.get("x86"))
    with pytest.raises(InputError, match="does not match this build's plan"):
        load_qparams(first.artifact / "qparams.json", canon.model.sha256, plan)
    with pytest.raises(InputError, match="different model"):
        load_qparams(first.artifact / "qparams.json", "0" * 64, plan)
