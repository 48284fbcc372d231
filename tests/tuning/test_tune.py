"""qcompile tune on the real Fashion-MNIST CNN: a fresh database gets a measured record for every
kernel, a second run continues it, --require-tuned names what is missing, a dead tuner is an error."""

from __future__ import annotations

import json

import pytest

from qcompile.cli import main
from qcompile.errors import QCompileError
from qcompile.targets import TARGETS
from qcompile.tuning.database import TuningDB, folder_name, key_of, summarize
from qcompile.tuning.tuner import TuneResult, _run_worker


def test_keys_separate_targets_and_tvm_versions():
    x86, vnni = key_of(TARGETS.get("x86")), key_of(TARGETS.get("x86-vnni"))
    assert folder_name(x86) != folder_name(vnni)
    assert x86["tvm_version"] in folder_name(x86) and "x86-64-v3" in x86["tvm_target"]


def test_tune_then_resume_then_require_tuned(fashion, tmp_path, capsys):
    db = tmp_path / "db"
    tune = ["tune", str(fashion["model"]), "--calib", str(fashion["calib"]), "--tuning-db", str(db)]
    assert main([*tune, "--trials", "8"]) == 0
    first = summarize(db)
    assert len(first) == 1 and first[0]["target"] == "x86"
    tasks = first[0]["tasks"]
    assert len(tasks) == 6 and all(t["best_us"] > 0 for t in tasks)  # every kernel: at least its default
    assert main([*tune, "--trials", "8", "--time-budget", "5m"]) == 0
    assert summarize(db)[0]["records"] > first[0]["records"], "a second run adds to the database"
    capsys.readouterr()

    out = tmp_path / "art"
    build = ["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "-o", str(out)]
    assert main([*build, "--tuning-db", str(db), "--require-tuned"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kernels"]["schedules"]["tuned"] == 6

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*build, "--tuning-db", str(empty), "--require-tuned"]) == 2
    err = capsys.readouterr().err
    assert "--require-tuned: 6 kernel(s) have no tuning record" in err and "fused_conv2d" in err
    assert err.count("\n") == 1


def test_a_failing_tuner_is_an_error_not_a_dead_cli(tmp_path):
    (tmp_path / "job.json").write_text(json.dumps({"target": "no-such-target"}))
    job = {"threads": 1, "trials": 1}
    with pytest.raises(QCompileError, match=r"the tuner failed \(exit code 1\).*no-such-target"):
        _run_worker(tmp_path, job, TuneResult(tmp_path, []))


def test_require_tuned_needs_a_database(fashion, capsys, tmp_path):
    args = ["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "-o", str(tmp_path / "a")]
    assert main([*args, "--require-tuned"]) == 2
    assert "--require-tuned needs --tuning-db DIR" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_tuning_db_must_exist(fashion, capsys, tmp_path):
    args = ["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "-o", str(tmp_path / "a")]
    assert main([*args, "--tuning-db", str(tmp_path / "nope")]) == 2
    assert "no such directory" in capsys.readouterr().err


def test_time_budget_must_parse(fashion, capsys, tmp_path):
    args = ["tune", str(fashion["model"]), "--calib", str(fashion["calib"]), "--tuning-db", str(tmp_path)]
    assert main([*args, "--time-budget", "soon"]) == 2
    assert "expected a duration like 90s" in capsys.readouterr().err
    assert TuningDB(tmp_path).exists_for(TARGETS.get("x86")) is False


def test_a_budget_goes_to_the_heaviest_kernels_first():
    from qcompile.tuning.worker import FOCUS_SHARE, ROUNDS_PER_TASK, focus

    est = [1.0, 50.0, 5.0, 30.0, 14.0]  # estimated seconds per task (calls x best known time)
    assert focus(est, [0, 1, 2, 3, 4], None, 0.5, 16) == [1, 3, 4, 2, 0]  # no budget: every task, heaviest first
    round_s = ROUNDS_PER_TASK * 16 * 0.5
    assert focus(est, [0, 1, 2, 3, 4], 2 * round_s, 0.5, 16) == [1, 3]  # time for two tasks' rounds
    assert focus(est, [0, 2, 4], 2 * round_s, 0.5, 16) == [4, 2]  # the next batch, once 1 and 3 were searched
    assert focus(est, [0, 1, 2, 3, 4], 0.1, 0.5, 16) == [1]  # at least one task, however short the budget
    # enough time for all, but the two lightest are left once FOCUS_SHARE of the time is covered
    chosen = focus(est, [0, 1, 2, 3, 4], 100 * round_s, 0.5, 16)
    assert chosen == [1, 3, 4, 2] and sum(est[i] for i in chosen[:-1]) < FOCUS_SHARE * sum(est)
