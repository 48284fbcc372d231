"""The committed tuning database (examples/tuning_db): CI rebuilds the real models from it with
--require-tuned and zero trials, and the tuned libraries compute exactly what the default-schedule
libraries compute (integer kernels: a schedule changes the loop order, never the result)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qcompile.cli import main
from qcompile.runtime import Runner, open_artifact
from tests.conftest import ROOT

TUNING_DB = ROOT / "examples" / "tuning_db"


def _db_bytes() -> dict[str, int]:
    return {str(p): p.stat().st_size for p in TUNING_DB.rglob("*") if p.is_file()}


def _rebuild(model: Path, calib: Path, out: Path, *extra: str) -> None:
    assert main(["build", str(model), "--calib", str(calib), "-o", str(out), *extra]) == 0


def _outputs(art: Path, inputs: np.ndarray) -> np.ndarray:
    runner = Runner(open_artifact(art))
    return np.concatenate([runner({"input": x[None]})[0] for x in inputs])


@pytest.mark.parametrize("name", ["fashion", "efficientnet"])
def test_rebuild_from_committed_db_is_complete_and_exact(name, request, tmp_path, capsys):
    data = request.getfixturevalue(name)
    before = _db_bytes()
    tuned = tmp_path / "tuned"
    _rebuild(data["model"], data["calib"], tuned, "--tuning-db", str(TUNING_DB), "--require-tuned")
    assert _db_bytes() == before, "a build only reads the database: zero trials, nothing written"
    schedules = json.loads((tuned / "manifest.json").read_text())["kernels"]["schedules"]
    assert schedules["tuned"] > 0 and schedules["default"] == 0 and schedules["untuned_kernels"] == []
    note = re.search(
        r"tuning database: (\d+) of (\d+) tunable kernels tuned; .* timed here: tuned (\d+)%", capsys.readouterr().out
    )
    assert note and int(note[1]) == int(note[2]) == schedules["tuned"] and 0 < int(note[3]) <= 100
    default = tmp_path / "default"
    _rebuild(data["model"], data["calib"], default)
    inputs = np.load(data["eval"])["input"][:8]
    np.testing.assert_array_equal(_outputs(tuned, inputs), _outputs(default, inputs))


def test_tuning_db_info_lists_every_task(capsys):
    assert main(["tuning-db", "info", str(TUNING_DB)]) == 0
    out = capsys.readouterr().out
    assert "target x86, TVM 0.27.0" in out
    assert main(["tuning-db", "info", str(TUNING_DB), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)
    tasks = [t for key in keys for t in key["tasks"]]
    assert len(tasks) >= 10 and all(t["best_us"] is not None and t["best_us"] > 0 for t in tasks)


def test_fp32_rebuild_from_committed_db(fashion, tmp_path):
    tuned, default = tmp_path / "tuned", tmp_path / "default"
    model = str(fashion["model"])
    assert (
        main(["build", model, "--bits", "32", "-o", str(tuned), "--tuning-db", str(TUNING_DB), "--require-tuned"]) == 0
    )
    assert main(["build", model, "--bits", "32", "-o", str(default)]) == 0
    inputs = np.load(fashion["eval"])["input"][:8]
    np.testing.assert_allclose(_outputs(tuned, inputs), _outputs(default, inputs), rtol=1e-5, atol=1e-5)
