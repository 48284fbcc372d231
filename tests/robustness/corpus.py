"""A corpus of bad inputs, one Case each, and the contract every one of them must meet:

exit code 2, exactly one line on stderr, no traceback, nothing left at or beside the output path, and no
input file changed (every file of the case's workspace is hashed before and after).

Each case runs in a workspace of its own (a copy of a small synthetic model, its data and a built
artifact), in-process through `qcompile.cli.main`. Most cases fail before any compile.

    python -m tests.robustness.corpus        # the contract on every case, counted per class
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Setup = Callable[[Path], list[str]]  # workspace -> argv (the workspace's files already in place)


@dataclass(frozen=True)
class Case:
    name: str
    klass: str  # data loss | integrity | silently accepted | leftovers | internal error | external data
    setup: Setup
    output: str | None = None  # workspace-relative path the command would write (must not appear)
    expect: str = ""  # a piece of the one-line message


@dataclass
class Outcome:
    code: int
    stderr: str
    leftovers: list[str]
    changed: list[str]

    def problems(self, case: Case) -> list[str]:
        lines = self.stderr.strip().splitlines()
        out = []
        if self.code != 2:
            out.append(f"exit {self.code}")
        if len(lines) != 1:
            out.append(f"{len(lines)} stderr lines")
        if "Traceback" in self.stderr:
            out.append("traceback")
        if case.expect and case.expect not in self.stderr:
            out.append(f"message lacks {case.expect!r}")
        if self.leftovers:
            out.append(f"left {self.leftovers}")
        if self.changed:
            out.append(f"changed {self.changed}")
        return out


# ---- the workspace every case starts from ----


def make_base(root: Path) -> Path:
    """model.onnx (the synthetic block model), calib.npz, eval.npz (labels 0..9), notes.txt, and art/
    (an int8 artifact of the model)."""
    from qcompile.cli import main
    from tests.support.synthetic import block_model, random_inputs

    root.mkdir(parents=True, exist_ok=True)
    block_model(root / "model.onnx")
    np.savez(root / "calib.npz", input=random_inputs(16, seed=1))
    np.savez(root / "eval.npz", input=random_inputs(8, seed=2), labels=np.arange(8) % 10)
    np.savez(root / "x.npz", input=random_inputs(2, seed=3))
    (root / "notes.txt").write_text("the user's own notes\n")
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            main(["build", str(root / "model.onnx"), "--calib", str(root / "calib.npz"), "-o", str(root / "art")]) == 0
        )
    return root


def _digest(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_case(case: Case, base: Path, work: Path) -> Outcome:
    from qcompile.cli import main

    if work.exists():
        shutil.rmtree(work)
    work.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(base, work, symlinks=True)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        argv = case.setup(work)
        before = _digest(work)
        existed = case.output is not None and (case.output == "." or (work / case.output).exists())
        siblings = _siblings(work, case.output)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse
                code = int(exc.code or 0)
        after = _digest(work)
    finally:
        os.chdir(cwd)
    changed = sorted(k for k in before if before[k] != after.get(k))
    leftovers = []
    if case.output is not None:
        leftovers = sorted(set(_siblings(work, case.output)) - set(siblings))
        if (work / case.output).exists() and not existed:
            leftovers.append(case.output)
    return Outcome(code, err.getvalue(), leftovers, changed)


def _siblings(work: Path, output: str | None) -> list[str]:
    if output is None:
        return []
    out = (work / output).absolute()
    parent = out.parent
    if not parent.is_dir():
        return []
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.") or p.name.endswith(".partial"))


# ---- helpers the cases use ----


def _manifest(work: Path) -> dict:
    return json.loads((work / "art" / "manifest.json").read_text())


def _write_manifest(work: Path, doc) -> None:
    (work / "art" / "manifest.json").write_text(json.dumps(doc) if not isinstance(doc, str) else doc)


def _run(work: Path, art: str = "art") -> list[str]:
    return ["run", art, "--input", "x.npz", "-o", "y.npz"]


def _build(*extra: str) -> list[str]:
    return ["build", "model.onnx", "--calib", "calib.npz", *extra]


def _npz_raw(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 3, 12, 12), np.float32))
    return buf.getvalue()


def _npy_header(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    pad = 64 - (10 + len(header) + 1) % 64
    header += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def _tuning_db(work: Path, workloads: bytes, records: bytes, packed: bool = False) -> Path:
    from qcompile.targets import TARGETS
    from qcompile.tuning.database import RECORDS, WORKLOADS, TuningDB

    folder = TuningDB(work / "db").folder(TARGETS.get("x86"))
    folder.mkdir(parents=True)
    (folder / "key.json").write_text("{}")
    for name, data in ((WORKLOADS, workloads), (RECORDS, records)):
        if packed:
            (folder / (name + ".gz")).write_bytes(data)
        else:
            (folder / name).write_bytes(data)
    return work / "db"


def _model_with(work: Path, **fields) -> str:
    import onnx

    m = onnx.load(str(work / "model.onnx"))
    if "opset" in fields:
        m.opset_import[0].version = fields["opset"]
    if "ir" in fields:
        m.ir_version = fields["ir"]
    name = fields.get("name", "odd.onnx")
    (work / name).write_bytes(m.SerializeToString())
    return name


def _image(work: Path, size: tuple[int, int]) -> str:
    from PIL import Image

    folder = work / "images"
    folder.mkdir()
    Image.new("1", size).save(folder / "big.png")
    return "images"


def _cases() -> list[Case]:
    c: list[Case] = []

    def case(name, klass, output=None, expect=""):
        def wrap(fn: Setup) -> Setup:
            c.append(Case(name, klass, fn, output, expect))
            return fn

        return wrap

    # -- data loss: the output may never be, hold, or sit inside what the command reads --
    case("build -o the model's folder", "data loss", ".", "would replace the folder")(lambda w: _build("-o", str(w)))
    case("build -o '' from the model's folder", "data loss", None, "-o is empty")(lambda w: _build("-o", ""))
    case("build -o the parent of the model's folder", "data loss", None, "would replace the folder")(
        lambda w: _build("-o", str(w.parent))
    )

    @case("build -o inside the calibration image folder", "data loss", "imgs/out", "inside the data folder")
    def _(w):
        from PIL import Image

        (w / "imgs").mkdir()
        Image.new("RGB", (16, 16)).save(w / "imgs" / "a.png")
        return ["build", "model.onnx", "--calib", "imgs", "--preprocess", "resize=12,crop=12", "-o", "imgs/out"]

    @case("build -o a folder that is not an artifact", "data loss", "mine", "not a qcompile artifact")
    def _(w):
        (w / "mine").mkdir()
        (w / "mine" / "thesis.tex").write_text("years of work")
        return _build("-o", "mine")

    @case("build --force -o a folder that is not an artifact", "data loss", "mine", "not a qcompile artifact")
    def _(w):
        (w / "mine").mkdir()
        (w / "mine" / "thesis.tex").write_text("years of work")
        return _build("-o", "mine", "--force")

    @case("build -o a damaged artifact without --force", "data loss", "art", "--force replaces it")
    def _(w):
        (w / "art" / "manifest.json").write_text("{broken")
        return _build("-o", "art")

    case("build -o an existing file", "data loss", "notes.txt", "not a directory")(lambda w: _build("-o", "notes.txt"))
    case("build -o under /proc", "data loss", None, "cannot be written")(lambda w: _build("-o", "/proc/qcompile-art"))
    case("build -o below a file", "data loss", None, "not writable")(lambda w: _build("-o", "notes.txt/art"))
    case("run -o the input file", "data loss", None, "is one of the command's inputs")(
        lambda w: ["run", "art", "--input", "x.npz", "-o", "x.npz"]
    )
    case("verify --json onto the data file", "data loss", None, "is one of the command's inputs")(
        lambda w: ["verify", "art", "--model", "model.onnx", "--data", "eval.npz", "--json", "eval.npz"]
    )

    # -- integrity: only what the manifest lists and hashes is ever loaded --
    @case("manifest library outside the artifact", "integrity", "y.npz", "is not listed")
    def _(w):
        shutil.copy(w / "art" / "model.so", w / "other.so")
        m = _manifest(w)
        m["library"] = "../other.so"
        _write_manifest(w, m)
        return _run(w)

    @case("library dropped from files, then byte-flipped", "integrity", "y.npz", "is not listed")
    def _(w):
        m = _manifest(w)
        del m["files"]["model.so"]
        _write_manifest(w, m)
        data = bytearray((w / "art" / "model.so").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (w / "art" / "model.so").write_bytes(bytes(data))
        return _run(w)

    @case("files lists a path outside the artifact", "integrity", "y.npz", "not a plain file name")
    def _(w):
        m = _manifest(w)
        m["files"]["../../etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
        _write_manifest(w, m)
        return _run(w)

    @case("files lists an absolute path", "integrity", "y.npz", "not a plain file name")
    def _(w):
        m = _manifest(w)
        m["files"]["/etc/passwd"] = {"sha256": "0" * 64, "bytes": 1}
        _write_manifest(w, m)
        return _run(w)

    @case("byte-flipped library", "integrity", "y.npz", "does not match its size and sha256")
    def _(w):
        data = bytearray((w / "art" / "model.so").read_bytes())
        data[-100] ^= 0x01
        (w / "art" / "model.so").write_bytes(bytes(data))
        return _run(w)

    @case("library replaced by a symlink out of the artifact", "integrity", "y.npz", "not a regular file inside")
    def _(w):
        shutil.copy(w / "art" / "model.so", w / "copy.so")
        (w / "art" / "model.so").unlink()
        (w / "art" / "model.so").symlink_to(w / "copy.so")
        return _run(w)

    @case("manifest symlinked to a file outside", "integrity", "y.npz", "not a regular file inside")
    def _(w):
        shutil.copy(w / "art" / "manifest.json", w / "outside.json")
        (w / "art" / "manifest.json").unlink()
        (w / "art" / "manifest.json").symlink_to(w / "outside.json")
        return _run(w)

    @case("tampered qparams.json", "integrity", None, "does not match its size and sha256")
    def _(w):
        p = w / "art" / "qparams.json"
        p.write_text(p.read_text().replace('"scale":', '"scale": ', 1))
        return ["verify", "art", "--model", "model.onnx", "--data", "eval.npz", "--per-layer"]

    for name, mutate, expect in (
        ("manifest is a list", lambda m: [m], "not an object"),
        ("manifest without inputs", lambda m: {k: v for k, v in m.items() if k != "inputs"}, "'inputs' must be"),
        ("manifest file entry without sha256", lambda m: _drop_sha(m), "no valid sha256"),
        ("manifest with a zero input dim", lambda m: _zero_dim(m), "not a tensor shape"),
        ("manifest of another format", lambda m: {**m, "format": "other/9"}, "this qcompile reads"),
        ("manifest with inputs as a string", lambda m: {**m, "inputs": "x"}, "'inputs' must be a list"),
    ):
        case(name, "integrity", "y.npz", expect)(_mutated(mutate))
    case("deeply nested manifest JSON", "integrity", "y.npz", "nests JSON too deeply")(
        lambda w: (_write_manifest(w, "[" * 100000 + "]" * 100000), _run(w))[1]
    )
    case("manifest that is not UTF-8", "integrity", "y.npz", "not UTF-8")(
        lambda w: ((w / "art" / "manifest.json").write_bytes(b"\xff\xfe{}"), _run(w))[1]
    )

    # -- silently accepted before --
    case("model declaring opset 99", "silently accepted", "out", "opset 99")(
        lambda w: ["build", _model_with(w, opset=99), "--calib", "calib.npz", "-o", "out"]
    )
    case("model with IR version 99", "silently accepted", "out", "IR version 99")(
        lambda w: ["build", _model_with(w, ir=99), "--calib", "calib.npz", "-o", "out"]
    )
    for label in (1000, -5):

        @case(f"labels out of range ({label})", "silently accepted", "m.json", "class indices 0..9")
        def _(w, label=label):
            data = dict(np.load(w / "eval.npz"))
            data["labels"][3] = label
            np.savez(w / "bad.npz", **data)
            return ["verify", "art", "--model", "model.onnx", "--data", "bad.npz", "--json", "m.json"]

    # -- leftovers --
    case("run -o an existing folder", "leftovers", "folder", "is a directory")(
        lambda w: ((w / "folder").mkdir(), ["run", "art", "--input", "x.npz", "-o", "folder"])[1]
    )
    case("run -o ''", "leftovers", None, "-o is empty")(lambda w: ["run", "art", "--input", "x.npz", "-o", ""])

    # -- internal errors where the input is at fault --
    case("corrupt tuning database JSON (build)", "internal error", "out", "line 1")(
        lambda w: _build("-o", "out", "--tuning-db", str(_tuning_db(w, b"{not json\n", b"")))
    )
    case("corrupt tuning database gzip (build)", "internal error", "out", "is damaged")(
        lambda w: _build("-o", "out", "--tuning-db", str(_tuning_db(w, b"\x1f\x8b\x08garbage", b"", packed=True)))
    )
    case("tuning record naming no workload (tuning-db info)", "internal error", None, "not a MetaSchedule")(
        lambda w: ["tuning-db", "info", str(_tuning_db(w, b'["a", "b"]\n', b"[7, []]\n"))]
    )
    case("corrupt tuning database (tune)", "internal error", None, "line 1")(
        lambda w: [
            "tune",
            "model.onnx",
            "--calib",
            "calib.npz",
            "--trials",
            "1",
            "--tuning-db",
            str(_tuning_db(w, b"[[[\n", b"")),
        ]  # fmt: skip
    )
    case("a .npy where an .npz is expected", "internal error", "out", "single .npy array")(
        lambda w: (np.save(w / "c.npy", np.zeros((4, 3, 12, 12), np.float32)), _build_with_calib("c.npy"))[1]
    )
    case("npz member that is not .npy", "internal error", "out", "is not a .npy array")(
        lambda w: (_npz_raw(w / "c.npz", {"input.npy": _npy_bytes(), "readme.txt": b"hi"}), _build_with_calib("c.npz"))[
            1
        ]
    )
    case("npy header claiming terabytes", "internal error", "out", "declares shape")(
        lambda w: (
            _npz_raw(w / "c.npz", {"input.npy": _npy_header((1 << 20, 1 << 20, 3, 12))}),
            _build_with_calib("c.npz"),
        )[1]  # fmt: skip
    )
    case("npz member that is text named .npy", "internal error", "out", "not a readable .npz")(
        lambda w: (_npz_raw(w / "c.npz", {"input.npy": b"hello world"}), _build_with_calib("c.npz"))[1]
    )
    case("image over the decompression-bomb limit", "internal error", "out", "cannot be read")(
        lambda w: ["build", "model.onnx", "--calib", _image(w, (15000, 15000)), "-o", "out"]
    )
    for spec, expect in (
        ("mean=1/2", "one value or three"),
        ("std=0", "std must be positive"),
        ("resize=0", "resize 0"),
        ("crop=300", "crop 300"),
        ("gamma=2", "unknown --preprocess key"),
        ("mean=nan", "one value or three"),
    ):
        case(f"--preprocess {spec}", "internal error", "out", expect)(
            lambda w, spec=spec: [
                "build",
                "model.onnx",
                "--calib",
                _image(w, (16, 16)),
                "--preprocess",
                spec,
                "-o",
                "out",
            ]
        )
    for shape in ("input:0x3x12x12", "input:-1x3x12x12", "input:1x3x12", "input:1x3x12xq"):
        case(f"--input-shape {shape}", "internal error", "out", "--input-shape")(
            lambda w, shape=shape: _build("-o", "out", "--input-shape", shape)
        )
    case("verify --json into a missing folder", "internal error", None, "does not exist")(
        lambda w: ["verify", "art", "--model", "model.onnx", "--data", "eval.npz", "--json", "no/such/m.json"]
    )
    case("bench --data with a wrong input name", "internal error", None, "model inputs are")(
        lambda w: (
            np.savez(w / "b.npz", image=np.zeros((2, 3, 12, 12), np.float32)),
            ["bench", "art", "--data", "b.npz"],
        )[1]
    )
    case("a model path holding a newline", "internal error", "out", "model file not found")(
        lambda w: ["build", "mo\ndel.onnx", "--calib", "calib.npz", "-o", "out"]
    )
    case("precision file nested too deeply", "internal error", "out", "nests JSON too deeply")(
        lambda w: (
            (w / "p.json").write_text("[" * 100000 + "]" * 100000),
            _build("-o", "out", "--precision-file", "p.json"),
        )[1]
    )
    case("precision file that is a list", "internal error", "out", "expected a JSON object")(
        lambda w: ((w / "p.json").write_text("[1]"), _build("-o", "out", "--precision-file", "p.json"))[1]
    )
    case("qparams with a malformed site", "internal error", "out", "malformed site")(
        lambda w: (
            _bad_qparams(w),
            ["build", "model.onnx", "--qparams", "q.json", "--weight-rounding", "nearest", "-o", "out"],
        )[1]  # fmt: skip
    )
    case("--fix-input on an unknown input", "internal error", "out", "unknown input")(
        lambda w: _build("-o", "out", "--fix-input", "rate=1")
    )
    case("--fix-input without a value", "internal error", "out", "is not NAME=VALUE")(
        lambda w: _build("-o", "out", "--fix-input", "input")
    )
    case("--task that does not exist", "internal error", None, "invalid choice")(
        lambda w: ["verify", "art", "--model", "model.onnx", "--data", "eval.npz", "--task", "dance"]
    )

    # -- external data --
    @case("external data outside the model's folder", "external data", "out", "points outside the directory")
    def _(w):
        _external_model(w, "../secret.bin")
        return ["build", "m/evil.onnx", "--calib", "calib.npz", "-o", "out"]

    return c


def _build_with_calib(calib: str) -> list[str]:
    return ["build", "model.onnx", "--calib", calib, "-o", "out"]


def _mutated(mutate):
    def setup(w: Path) -> list[str]:
        _write_manifest(w, mutate(_manifest(w)))
        return _run(w)

    return setup


def _drop_sha(m: dict) -> dict:
    m["files"]["model.so"] = {"bytes": 1}
    return m


def _zero_dim(m: dict) -> dict:
    m["inputs"][0]["shape"][1] = 0
    return m


def _bad_qparams(w: Path) -> None:
    doc = json.loads((w / "art" / "qparams.json").read_text())
    first = next(iter(doc["sites"]))
    doc["sites"][first] = {"scale": "big", "zero_point": [], "dtype": 3}
    (w / "q.json").write_text(json.dumps(doc))


def _external_model(w: Path, location: str) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (w / "m").mkdir(exist_ok=True)
    weight = numpy_helper.from_array(np.ones((10, 3 * 12 * 12), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("Gemm", ["f", "w"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(w / "m" / "evil.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    proto = onnx.load(str(w / "m" / "evil.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    (w / "secret.bin").write_bytes((w / "m" / "w.bin").read_bytes())
    onnx.save(proto, str(w / "m" / "evil.onnx"))


CASES = _cases()


def main() -> int:
    import tempfile

    counts: dict[str, list[int]] = {}
    with tempfile.TemporaryDirectory(prefix="qcompile-corpus-") as tmp:
        base = make_base(Path(tmp) / "base")
        for k, case in enumerate(CASES):
            outcome = run_case(case, base, Path(tmp) / f"w{k}" / "ws")  # its parent may be destroyed
            problems = outcome.problems(case)
            contract = [p for p in problems if not p.startswith("message lacks")]
            held = counts.setdefault(case.klass, [0, 0, 0])
            held[0] += not problems
            held[1] += not contract
            held[2] += 1
            if problems:
                print(f"FAIL {case.klass}: {case.name}: {'; '.join(problems)}: {outcome.stderr.strip()[:200]}")
    print("class: held with the expected message / held the contract (exit 2, one line, nothing lost) / cases")
    for klass, (ok, contract, total) in counts.items():
        print(f"{klass:>20}: {ok} / {contract} / {total}")
    ok, contract = sum(v[0] for v in counts.values()), sum(v[1] for v in counts.values())
    print(f"{'all':>20}: {ok} / {contract} / {len(CASES)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
