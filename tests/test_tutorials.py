import runpy
from pathlib import Path

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"


def test_quickstart_runs(capsys):
    runpy.run_path(str(TUTORIALS / "01_quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "agreement" in out and "logits of 4 images" in out


def test_deploy_to_arm_runs(capsys):
    runpy.run_path(str(TUTORIALS / "02_deploy_to_arm.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ARM (emulated) classes" in out and "max |ARM - x86| = 0.0" in out


def test_mixed_precision_runs(capsys):
    runpy.run_path(str(TUTORIALS / "03_mixed_precision.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "rank 1:" in out and "manual mix:" in out and "search: float layers" in out
