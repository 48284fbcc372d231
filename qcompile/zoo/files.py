"""Data for the shipped magika file-type classifier: real files of this machine, turned into the model's
input by magika's own feature extraction (its first and last 1024 bytes after whitespace stripping,
padded with token 256), from the installed `magika` package.

The files are what any Debian + CPython machine holds: Python sources and bytecode, shared libraries
and executables (ELF), documentation text and its gzip archives, JSON/HTML/XML/CSS/JS/SVG/PNG/Markdown
files from installed packages, shell scripts, config files. Each kind is sampled by a seeded choice
from its sorted file list, so a given machine always yields the same set.
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import numpy as np

from qcompile.errors import QCompileError

INPUT = "bytes"
SEED = 20261202
# (root, glob); a root that does not exist is skipped. Roots are kept to folders that are small to walk
# (not all of site-packages, which holds torch): the walk costs seconds, not tens of them, on a cold disk.
_KINDS = {
    "python": [("stdlib", "*.py"), ("stdlib", "json/*.py")],
    "bytecode": [("stdlib", "__pycache__/*.pyc")],
    "elf": [("/usr/lib/x86_64-linux-gnu", "*.so*"), ("/usr/bin", "*")],
    "gzip": [("/usr/share/doc", "*/*.gz")],
    "text": [("/usr/share/doc", "*/copyright")],
    "json": [("purelib/onnx", "**/*.json"), ("purelib/tvm", "**/*.json"), ("purelib", "*.dist-info/*.json")],
    "html": [("stdlib", "pydoc_data/*.html"), ("/usr/share/doc", "*/*.html"), ("purelib/matplotlib", "**/*.html")],
    "xml": [("/usr/share/mime", "*.xml"), ("/usr/share/mime/packages", "*.xml"), ("stdlib", "test/xmltestdata/*")],
    "css": [("purelib/matplotlib", "**/*.css"), ("purelib/sklearn", "**/*.css")],
    "javascript": [("purelib/tvm", "**/*.js"), ("purelib/matplotlib", "**/*.js")],
    "svg": [("purelib/matplotlib", "mpl-data/images/*.svg")],
    "png": [("purelib/matplotlib", "mpl-data/images/*.png"), ("purelib/skimage", "data/*.png")],
    "markdown": [("purelib", "*.dist-info/licenses/*.md"), ("purelib", "*/README.md")],
    "csv": [("purelib/sklearn", "datasets/data/*.csv")],
    "shell": [("/usr/bin", "*.sh"), ("/etc", "*/*.sh")],
    "ini": [("/etc", "*.conf")],
    "c": [("/usr/include", "*.h")],
}


def _root(name: str) -> Path:
    """`stdlib/sub` or `purelib/pkg`: below this Python's own folders; anything else is a path."""
    head, _, rest = name.partition("/")
    paths = sysconfig.get_paths()
    return Path(paths[head]) / rest if head in paths else Path(name)


def machine_files(per_kind: int, seed: int = SEED) -> dict[str, list[Path]]:
    """kind -> up to `per_kind` of its files (at least 64 bytes, readable), seeded and deterministic."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[Path]] = {}
    for kind, patterns in sorted(_KINDS.items()):
        found: set[Path] = set()
        for root, pattern in patterns:
            base = _root(root)
            if base.is_dir():
                found.update(p for p in _limited_glob(base, pattern) if _usable(p))
        files = sorted(found)
        if files:
            picks = rng.choice(len(files), size=min(per_kind, len(files)), replace=False)
            chosen[kind] = [files[i] for i in sorted(picks)]
    return chosen


def _limited_glob(base: Path, pattern: str, limit: int = 20000):
    for k, p in enumerate(base.glob(pattern)):
        if k >= limit:
            break
        yield p


def _usable(p: Path) -> bool:
    try:
        return p.is_file() and not p.is_symlink() and p.stat().st_size >= 64
    except OSError:
        return False


def magika_features(paths: list[Path]) -> np.ndarray:
    """N x 2048 int32: magika's model input for each file, by magika's own extraction code."""
    try:
        from magika import Magika
        from magika.types.seekable import Seekable
    except ImportError as exc:
        raise QCompileError(f"magika's feature extraction needs the package magika==1.0.3: {exc}") from exc
    from qcompile.zoo.shipped import shipped_model

    config = json.loads((shipped_model("magika").parent / "config.min.json").read_text())
    rows = []
    for path in paths:
        with open(path, "rb") as fh:
            f = Magika._extract_features_from_seekable(
                Seekable(fh),
                config["beg_size"],
                config["mid_size"],
                config["end_size"],
                config["padding_token"],
                config["block_size"],
                config["use_inputs_at_offsets"],
            )
        rows.append(f.beg[: config["beg_size"]] + f.end[-config["end_size"] :])
    return np.asarray(rows, dtype=np.int32)


def file_feature_sets(calib_per_kind: int = 4, eval_per_kind: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, evaluation) features from disjoint sets of this machine's files."""
    calib: list[Path] = []
    evals: list[Path] = []
    for files in machine_files(calib_per_kind + eval_per_kind).values():
        calib += files[:calib_per_kind]
        evals += files[calib_per_kind:]
    return magika_features(calib), magika_features(evals)


if __name__ == "__main__":
    c, e = file_feature_sets()
    print(c.shape, e.shape, file=sys.stderr)
