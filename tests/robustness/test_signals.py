"""Every signal that ends a build leaves nothing behind: SIGINT, SIGTERM and SIGHUP, sent while the
artifact is being written into its staging folder (the moment a leftover could appear)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_signal_while_writing_the_artifact_leaves_nothing(block, tmp_path, sig):
    out = tmp_path / "art"
    cmd = [sys.executable, "-m", "qcompile.cli", "build", str(block["model"]), "--calib", str(block["calib"])]
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    staged = _wait_for_staging(tmp_path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert staged, "the build finished before its staging folder was seen"
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no artifact, no staging folder"


def _wait_for_staging(folder: Path, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    start = time.monotonic()
    while time.monotonic() - start < timeout and proc.poll() is None:
        if any(p.name.startswith(".art.") and p.name.endswith(".partial") for p in folder.iterdir()):
            return True
        time.sleep(0.005)
    return False
