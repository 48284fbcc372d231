"""qcompile tune --rpc: candidates measured on a device registered with a TVM RPC tracker. Here the
tracker and the device's RPC server are started on loopback by the test (an x86 server: an aarch64 one
would need an aarch64 Python under emulation)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qcompile.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str]) -> subprocess.Popen:
    notorch = Path(__import__("qcompile.tuning", fromlist=["x"]).__file__).parent / "notorch"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(notorch), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def tracker():
    port = _free_port()
    procs = [_start(["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)])]
    try:
        deadline = time.monotonic() + 60
        while True:  # the tracker is up when it accepts connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert procs[0].poll() is None and time.monotonic() < deadline, "RPC tracker did not start"
                time.sleep(0.5)
        server_port = _free_port()
        procs.append(
            _start(["tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key", "qtest-device",
                    "--host", "127.0.0.1", "--port", str(server_port), "--port-end", str(server_port + 1)])
        )  # fmt: skip
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


def test_tune_measures_through_rpc_tracker(tracker, fashion, tmp_path, capsys):
    db = tmp_path / "db"
    args = ["tune", str(fashion["model"]), "--calib", str(fashion["calib"]), "--tuning-db", str(db)]
    assert main([*args, "--trials", "8", "--rpc", tracker, "--device-key", "qtest-device"]) == 0
    assert "(0 failed)" in capsys.readouterr().out
    assert main(["tuning-db", "info", str(db), "--json"]) == 0
    tasks = [t for key in json.loads(capsys.readouterr().out) for t in key["tasks"]]
    assert len(tasks) == 6 and all(t["best_us"] > 0 for t in tasks)  # every kernel measured on the "device"
    out = tmp_path / "art"
    build = ["build", str(fashion["model"]), "--calib", str(fashion["calib"]), "-o", str(out)]
    assert main([*build, "--tuning-db", str(db), "--require-tuned"]) == 0


def test_rpc_errors_are_one_line(fashion, tmp_path, capsys):
    base = ["tune", str(fashion["model"]), "--calib", str(fashion["calib"]), "--tuning-db", str(tmp_path / "db")]
    assert main([*base, "--rpc", f"127.0.0.1:{_free_port()}", "--device-key", "k"]) == 2
    assert "cannot reach the RPC tracker" in capsys.readouterr().err
    assert main([*base, "--device-key", "k"]) == 2
    assert "--device-key needs --rpc" in capsys.readouterr().err
    assert main([*base, "--rpc", "nohost"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert not (tmp_path / "db").exists()
