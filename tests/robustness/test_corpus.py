"""The bad-input corpus (tests/robustness/corpus.py): every case exits 2 with exactly one stderr line,
no traceback, nothing left at or beside its output path, and no input file changed."""

from __future__ import annotations

import pytest

from tests.robustness.corpus import CASES, make_base, run_case


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("corpus") / "base")


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_meets_the_contract(case, base, tmp_path):
    outcome = run_case(case, base, tmp_path / "work")
    assert not outcome.problems(case), (outcome.problems(case), outcome.stderr)


def test_the_corpus_covers_every_class():
    classes = {c.klass for c in CASES}
    assert classes == {"data loss", "integrity", "silently accepted", "leftovers", "internal error", "external data"}
    assert len(CASES) >= 60, len(CASES)


def test_a_manifest_naming_outside_files_opens_none_of_them(base, tmp_path):
    """The outside 'library' is a FIFO: opening it would block, so a run that returns at all (in time)
    returned before touching it."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    art = tmp_path / "art"
    shutil.copytree(base / "art", art)
    os.mkfifo(tmp_path / "fifo")
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["library"] = "../fifo"
    manifest["files"]["../fifo"] = {"sha256": "0" * 64, "bytes": 0}
    (art / "manifest.json").write_text(json.dumps(manifest))
    cmd = [
        sys.executable,
        "-m",
        "qcompile.cli",
        "run",
        str(art),
        "--input",
        str(base / "x.npz"),
        "-o",
        str(tmp_path / "y.npz"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a plain file name" in proc.stderr, proc.stderr
    assert not (tmp_path / "y.npz").exists()
