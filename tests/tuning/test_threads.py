"""The runtime thread pool qcompile picks (qcompile.threads): what reaches TVM, and who wins."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qcompile.cli import main
from qcompile.errors import InputError
from qcompile.threads import apply, resolve


def test_shared_pool_sleeps_and_unpins_but_keeps_what_the_user_set():
    env = apply({"TVM_BIND_THREADS": "1"})
    assert env["TVM_THREAD_POOL_SPIN_COUNT"] == "0"
    assert env["TVM_BIND_THREADS"] == "1"  # set by the user: kept
    assert "TVM_NUM_THREADS" not in env


def test_naming_a_pool_replaces_the_other_pools_settings():
    env = apply({"TVM_THREAD_POOL_SPIN_COUNT": "0", "TVM_BIND_THREADS": "0"}, "dedicated", threads=3)
    assert "TVM_THREAD_POOL_SPIN_COUNT" not in env and "TVM_BIND_THREADS" not in env  # TVM's spinning defaults
    assert env["TVM_NUM_THREADS"] == "3" and env["QCOMPILE_THREAD_POOL"] == "dedicated"
    assert apply(env)["QCOMPILE_THREAD_POOL"] == "dedicated"  # a child process keeps the choice


def test_unknown_pool_and_bad_thread_count_are_input_errors(monkeypatch):
    monkeypatch.setenv("QCOMPILE_THREAD_POOL", "busy")
    with pytest.raises(InputError, match="QCOMPILE_THREAD_POOL"):
        resolve()
    with pytest.raises(InputError, match="--threads 0"):
        apply({}, "shared", threads=0)


def test_a_runner_starts_tvm_with_the_shared_pool(fashion_int8):
    code = (
        "import os, sys\n"
        "from qcompile.runtime import Runner, open_artifact\n"
        "Runner(open_artifact(sys.argv[1]))\n"
        "print(os.environ.get('TVM_THREAD_POOL_SPIN_COUNT'), os.environ.get('TVM_BIND_THREADS'))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("TVM_", "QCOMPILE_THREAD"))}
    out = subprocess.run([sys.executable, "-c", code, str(fashion_int8)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0"]


def test_bench_reports_the_pool_its_engines_ran_with(fashion, fashion_int8, tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", str(fashion_int8), "--threads", "2", "--rounds", "1", "--per-round", "2"]
    assert main([*args, "--thread-pool", "dedicated", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["thread_pool"] == "dedicated"
    assert "(dedicated thread pool)" in capsys.readouterr().out


def test_the_librarys_own_launcher_runs_it_exactly_as_tvms_pool(fashion, fashion_int8, monkeypatch):
    """The default pool runs the artifact's parallel kernels on the launcher linked into its library
    (qcompile/deploy/pool.c); the outputs are the same integers TVM's pool computes."""
    import numpy as np

    from qcompile.runtime import Runner, open_artifact

    images = np.load(fashion["test"])["input"][:64]
    monkeypatch.delenv("QCOMPILE_THREAD_POOL", raising=False)
    ours = Runner(open_artifact(fashion_int8))
    assert ours.launcher is True
    monkeypatch.setenv("QCOMPILE_THREAD_POOL", "tvm")
    tvms = Runner(open_artifact(fashion_int8))
    assert tvms.launcher is False
    for image in images:
        batch = {"input": image[None]}
        np.testing.assert_array_equal(ours(batch)[0], tvms(batch)[0])


def test_a_runner_copies_each_call_into_the_input_it_reuses(fashion, fashion_int8):
    """Runner copies each call's inputs into the device tensors of the call before, through numpy views
    of their memory (TVM's copy and a fresh tensor per call cost ~20-40 us of a small model's ~200):
    every call still sees its own input, a non-contiguous one included, and what a call returned is
    not changed by the next one."""
    import numpy as np

    from qcompile.runtime import Runner, open_artifact

    a, b = ({"input": image[None]} for image in np.load(fashion["test"])["input"][:2])
    runner = Runner(open_artifact(fashion_int8))
    first = runner(a)[0]
    kept = first.copy()
    second = runner(b)[0]
    np.testing.assert_array_equal(first, kept)
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(runner(a)[0], kept)
    np.testing.assert_array_equal(Runner(open_artifact(fashion_int8))(b)[0], second)
    strided = {"input": np.asfortranarray(b["input"])}
    assert not strided["input"].flags.c_contiguous
    np.testing.assert_array_equal(runner(strided)[0], second)
