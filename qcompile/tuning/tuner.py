"""`qcompile tune`: the realized module's kernels, tuned by MetaSchedule in a child process.

The model goes through the same stages as a build (so the tasks are exactly the kernels a build
compiles), then `qcompile.tuning.worker` tunes them in a subprocess: a crash inside TVM's tuner is
reported as an error naming what happened, the database keeps every record committed before it, and
the CLI survives. A second run with the same `--tuning-db` continues from the records already there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from qcompile.config import BuildConfig
from qcompile.errors import InputError, QCompileError
from qcompile.lowering import lower
from qcompile.progress import progress_bar
from qcompile.targets import TARGETS
from qcompile.tuning.database import TuningDB, add_task_names, workload_hash
from qcompile.tuning.tasks import Task, extract_tasks


@dataclass
class TuneResult:
    database: Path  # the key folder the records went to
    tasks: list[str]
    measured: int = 0
    failed: int = 0
    best_us: dict[str, float] = field(default_factory=dict)
    stopped_by_budget: bool = False
    seconds: float = 0.0
    focused: list[str] = field(default_factory=list)  # the tasks the search worked on (qcompile.tuning.worker.focus)
    focus_share: float = 1.0  # their share of the estimated kernel time


def model_tasks(model, config: BuildConfig, calib=None, qparams=None) -> list[Task]:
    """Load, calibrate and realize like a build does, then lower: the kernels of the library."""
    from qcompile.pipeline import build

    target = TARGETS.get(config.target)
    if target.kernels is None:
        raise InputError(f"target {target.name!r} has no CPU kernel templates to tune")
    if not target.backend.tuned_here:
        raise InputError(
            f"target {target.name!r} has nothing to tune: its device compiler schedules the kernels, and "
            "the host library only checks the integers"
        )
    realized = build(model, None, calib=calib, qparams=qparams, config=config, stop_after="realize").realized
    assert realized is not None
    return extract_tasks(lower(realized, target.tvm(), target.kernels), target.kernels)


def tune(
    model,
    tuning_db: str | Path,
    *,
    config: BuildConfig | None = None,
    calib=None,
    qparams=None,
    trials: int = 1000,
    time_budget_s: float | None = None,
    threads: int | None = None,
    per_iter: int = 16,
    rpc: str | None = None,
    device_key: str | None = None,
) -> TuneResult:
    began = time.monotonic()  # the budget covers the whole command, the build stages included
    config = config or BuildConfig()
    if trials <= 0:
        raise InputError("--trials must be positive")
    if time_budget_s is not None and time_budget_s <= 0:
        raise InputError("--time-budget must be positive")
    target = TARGETS.get(config.target)
    tracker = parse_tracker(rpc, device_key)
    if tracker is None and not target.runs_on_host:
        raise InputError(
            f"target {target.name!r} does not run on this machine, so its kernels cannot be measured here "
            "(tuning measures every candidate); tune on the device itself or through it: --rpc HOST:PORT "
            "--device-key KEY"
        )
    tasks = model_tasks(model, config, calib, qparams)
    if not tasks:
        raise InputError("the model has no conv / matmul kernels to tune")
    db = TuningDB(Path(tuning_db))
    db.open(target, create=True)  # creates the key folder (and says so early if it cannot)
    folder = db.folder(target)
    add_task_names(folder, {workload_hash(t.workload): t.name for t in tasks})
    result = TuneResult(folder, [t.name for t in tasks])
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qcompile-tune-job-") as tmp:
        job = {
            "target": target.name,
            "db": str(Path(tuning_db).resolve()),
            "trials": trials,
            "per_iter": per_iter,
            "time_budget_s": None if time_budget_s is None else max(time_budget_s - (started - began), 0.001),
            "threads": threads or os.cpu_count() or 1,
            "tasks": [],
            "rpc": tracker,
        }
        for i, task in enumerate(tasks):
            path = Path(tmp) / f"task{i}.json"
            path.write_text(tvm.ir.save_json(task.workload))
            job["tasks"].append({"name": task.name, "file": str(path), "weight": task.weight})
        (Path(tmp) / "job.json").write_text(json.dumps(job))
        _run_worker(Path(tmp), job, result)
    result.seconds = time.monotonic() - began
    return result


def parse_tracker(rpc: str | None, device_key: str | None) -> dict | None:
    """--rpc HOST:PORT and --device-key KEY: the TVM RPC tracker to measure through, checked reachable."""
    if rpc is None:
        if device_key is not None:
            raise InputError("--device-key needs --rpc HOST:PORT (the tracker the device is registered with)")
        return None
    host, _, port = rpc.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--rpc {rpc!r} is not HOST:PORT")
    if not device_key:
        raise InputError("--rpc needs --device-key KEY (the key the device's RPC server registered with)")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise InputError(f"cannot reach the RPC tracker at {rpc} ({exc.strerror or exc})") from None
    return {"host": host, "port": int(port), "key": device_key}


def _run_worker(tmp: Path, job: dict, result: TuneResult) -> None:
    notorch = str(Path(__file__).parent / "notorch")  # notorch/sitecustomize.py says why
    path = os.pathsep.join(p for p in (notorch, os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, TVM_NUM_THREADS=str(job["threads"]), PYTHONPATH=path)
    log_path = tmp / "tuner.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qcompile.tuning.worker", str(tmp / "job.json")],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
        assert proc.stdout is not None
        bar = progress_bar(job["trials"], "tuning", "trial")
        try:
            for line in proc.stdout:
                _on_event(line, result, bar)
        except BaseException:  # Ctrl-C, SIGTERM/SIGHUP: the tuner goes too (what it measured stays)
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            bar.close()
            code = proc.wait()
    if code != 0:
        tail = [ln for ln in log_path.read_text().splitlines() if ln.strip()][-1:] or ["(no output)"]
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        raise QCompileError(
            f"the tuner failed ({how}) after {result.measured} measured candidates, which the database "
            f"keeps: {tail[0][:300]}"
        )


def _on_event(line: str, result: TuneResult, bar) -> None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return  # TVM's own prints
    if event.get("event") == "measured":
        result.measured += event["count"]
        result.failed += event["failed"]
        if event["best_us"] is not None:
            result.best_us[event["task"]] = event["best_us"]
        bar.update(event["count"])
        bar.set_postfix_str(f"{event['task'][:40]} best {event['best_us'] or float('nan'):.1f} us")
    elif event.get("event") == "focus":
        result.focused, result.focus_share = event["tasks"], event["share"]
    elif event.get("event") == "done":
        result.stopped_by_budget = bool(event.get("stopped_by_budget"))
