"""Tuning databases on disk: MetaSchedule's JSON format, one folder per (target, TVM version).

MetaSchedule's own lookup matches a record by workload only and ignores the target, so a database
shared by an AVX2 and a VNNI build would hand one the other's schedules (tensorized with instructions
the other CPU lacks). qcompile therefore keeps one MetaSchedule JSON database per *key*: the target
preset, a hash of the exact TVM target (triple, CPU, features) and the TVM version. A build only ever
opens the folder of its own key, so a record applies to the same workload on the same target with the
same TVM, and nothing else.

    logs/
      x86__tvm0.27.0.post1__1a2b3c4d/
        key.json                       what the key stands for (target preset, TVM target, TVM version)
        tasks.json                     which kernel names each workload was tuned under
        database_workload.json         MetaSchedule: one structural workload per line
        database_tuning_record.json    MetaSchedule: one measured schedule (trace + latencies) per line

`qcompile tuning-db prune` keeps the best record per workload and gzips both files (a workload is
~250 KB of base64-encoded, indented JSON that compresses 17x): the form to commit. Builds read either
form; `qcompile tune` turns a gzipped folder back into plain files and appends to them.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import tvm

from qcompile.errors import InputError
from qcompile.targets.base import TargetSpec

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
KEY_FILE = "key.json"
TASK_NAMES = "tasks.json"  # structural hash of a workload -> the kernel names it was tuned under


def _is_db(folder: Path) -> bool:
    return (folder / WORKLOADS).is_file() or (folder / (WORKLOADS + ".gz")).is_file()


def validate_folder(folder: Path) -> None:
    """Every line of the folder's database files is a MetaSchedule JSON entry, every record names a
    workload that exists, the gzip streams are whole: checked before MetaSchedule (C++) reads them, so a
    damaged database is a one-line error naming the file and line, not a crash inside TVM."""
    from qcompile.manifest import load_json_file, parse_json

    counts = {}
    for name in (WORKLOADS, RECORDS):
        plain, packed = folder / name, folder / (name + ".gz")
        path = packed if packed.is_file() and not plain.is_file() else plain
        if not path.is_file():
            counts[name] = 0
            continue
        try:
            if path.suffix == ".gz":
                with gzip.open(path, "rt", encoding="utf-8") as fh:
                    lines = fh.read().splitlines()
            else:
                lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
            raise InputError(f"tuning database file {path} is damaged ({exc})") from None
        n = 0
        for k, line in enumerate(lines, 1):
            if not line.strip():
                continue
            entry = parse_json(line, f"tuning database file {path} line {k}")
            if name == RECORDS:
                ok = isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int)
                ok = ok and 0 <= entry[0] < counts[WORKLOADS]
            else:
                ok = isinstance(entry, list) and len(entry) >= 2
            if not ok:
                raise InputError(f"tuning database file {path} line {k} is not a MetaSchedule {name[9:-5]} entry")
            n += 1
        counts[name] = n
    for name in (KEY_FILE, TASK_NAMES):
        if (folder / name).is_file() and not isinstance(load_json_file(folder / name, "tuning database file"), dict):
            raise InputError(f"tuning database file {folder / name} is not a JSON object")


def _json_database(folder: Path, create: bool):
    """MetaSchedule's JSONDatabase over `folder` (validated first). Gzipped files are read from a
    temporary copy (the database loads everything when it is opened), or, when tuning (`create`),
    unpacked in place."""
    from qcompile.kernels.intrinsics import register_all

    validate_folder(folder)
    register_all()  # loading parses every record's trace, which names the intrinsics it tensorized with
    try:
        return _open_json_database(folder, create)
    except InputError:
        raise
    except Exception as exc:  # structurally valid JSON that MetaSchedule still cannot parse (a bad trace)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
        raise InputError(f"tuning database {folder} cannot be read by MetaSchedule ({first})") from None


def _open_json_database(folder: Path, create: bool):
    from tvm.s_tir import meta_schedule as ms

    packed = (folder / (WORKLOADS + ".gz")).is_file()
    if not packed:
        return ms.database.JSONDatabase(
            str(folder / WORKLOADS), str(folder / RECORDS), allow_missing=create, module_equality="structural"
        )
    where = folder if create else Path(tempfile.mkdtemp(prefix="qcompile-db-"))
    try:
        for name in (WORKLOADS, RECORDS):
            with gzip.open(folder / (name + ".gz"), "rb") as src, open(where / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
        db = ms.database.JSONDatabase(
            str(where / WORKLOADS), str(where / RECORDS), allow_missing=False, module_equality="structural"
        )
        if create:
            for name in (WORKLOADS, RECORDS):
                (folder / (name + ".gz")).unlink()
        return db
    finally:
        if not create:
            shutil.rmtree(where, ignore_errors=True)


def tvm_version() -> str:
    return str(tvm.__version__)


def key_of(target: TargetSpec) -> dict:
    """What a record must match besides its workload."""
    return {"target": target.name, "tvm_target": str(target.tvm()), "tvm_version": tvm_version()}


def folder_name(key: dict) -> str:
    digest = hashlib.sha256(key["tvm_target"].encode()).hexdigest()[:8]
    return f"{key['target']}__tvm{key['tvm_version']}__{digest}"


@dataclass(frozen=True)
class TuningDB:
    """A tuning-database directory (`--tuning-db DIR`); it holds one MetaSchedule database per key."""

    root: Path

    def folder(self, target: TargetSpec) -> Path:
        return self.root / folder_name(key_of(target))

    def exists_for(self, target: TargetSpec) -> bool:
        return _is_db(self.folder(target))

    def open(self, target: TargetSpec, create: bool = False):
        """The MetaSchedule JSONDatabase for `target`; `create` makes the folder (tuning), otherwise a
        missing one is an empty database (a build that applies records)."""
        from tvm.s_tir import meta_schedule as ms

        folder = self.folder(target)
        if create:
            if _is_db(folder):
                validate_folder(folder)  # before anything is written into it
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InputError(f"--tuning-db {self.root}: cannot create directory ({exc.strerror})") from None
            (folder / KEY_FILE).write_text(json.dumps(key_of(target), indent=2) + "\n")
        elif not self.exists_for(target):
            return ms.database.MemoryDatabase(module_equality="structural")
        return _json_database(folder, create)

    def check(self) -> None:
        if not self.root.is_dir():
            raise InputError(f"--tuning-db {self.root}: no such directory")


def workload_hash(mod: tvm.IRModule) -> str:
    import tvm_ffi

    return f"{tvm_ffi.structural_hash(mod) & 0xFFFFFFFFFFFFFFFF:016x}"


def read_task_names(folder: Path) -> dict[str, list[str]]:
    from qcompile.manifest import load_json_file

    path = folder / TASK_NAMES
    return load_json_file(path, "tuning database file") if path.is_file() else {}


def add_task_names(folder: Path, named: dict[str, str]) -> None:
    """Remember which kernel names (`fused_conv2d_nhwc_add...`) each workload was tuned under."""
    names = read_task_names(folder)
    for digest, name in named.items():
        if name not in names.setdefault(digest, []):
            names[digest].append(name)
    (folder / TASK_NAMES).write_text(json.dumps(names, indent=1, sort_keys=True) + "\n")


def mean_seconds(run_secs) -> float | None:
    """The mean of a measurement's run times (a record's or a runner result's), None when it has none or
    failed: MetaSchedule stores a failed measurement as 1e10 s."""
    secs = [float(s) for s in (run_secs or []) if float(s) < 1e9]
    return sum(secs) / len(secs) if secs else None


def summarize(root: Path) -> list[dict]:
    """`qcompile tuning-db info`: per key, its identity and per task the number of measured candidates
    and the best mean latency."""
    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    keys = []
    for folder in sorted(p for p in root.iterdir() if _is_db(p)):
        db = _json_database(folder, create=False)  # validates the folder, key.json included
        key = json.loads((folder / KEY_FILE).read_text()) if (folder / KEY_FILE).is_file() else {}
        names = read_task_names(folder)
        tasks: dict[str, dict] = {}
        for record in db.get_all_tuning_records():
            digest = workload_hash(record.workload.mod)
            name = ", ".join(names.get(digest, ["?"]))
            task = tasks.setdefault(digest, {"task": name, "trials": 0, "best_us": None})
            task["trials"] += 1
            secs = mean_seconds(record.run_secs)
            if secs is not None:
                us = 1e6 * secs
                task["best_us"] = us if task["best_us"] is None else min(task["best_us"], us)
        rows = sorted(tasks.values(), key=lambda t: -(t["best_us"] or 0.0))
        keys.append({"folder": folder.name, **key, "records": len(db), "tasks": rows})
    return keys


def prune(root: Path) -> list[tuple[str, int, int]]:
    """Keep only the best record of each workload (what a build applies), gzipped: the form to
    commit. Returns (folder, records before, records after) per key."""
    from tvm.s_tir import meta_schedule as ms

    done = []
    for folder in sorted(p for p in root.iterdir() if _is_db(p)):
        db = _json_database(folder, create=False)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            pruned = ms.database.JSONDatabase(str(Path(tmp) / WORKLOADS), str(Path(tmp) / RECORDS), allow_missing=True)
            db.dump_pruned(pruned)
            after = len(pruned)
            for name in (WORKLOADS, RECORDS):
                with open(Path(tmp) / name, "rb") as src, gzip.open(folder / (name + ".gz.partial"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
            for name in (WORKLOADS, RECORDS):
                (folder / (name + ".gz.partial")).replace(folder / (name + ".gz"))
                (folder / name).unlink(missing_ok=True)
        done.append((folder.name, len(db), after))
    return done
