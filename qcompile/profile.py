"""Where a compiled library's time goes: per kernel, from the library itself.

The build records every kernel `main` calls (kernels.json: name, calls, argument shapes and dtypes,
how it was scheduled). `qcompile bench --profile` loads the artifact's library, times each kernel on
its own with TVM's time evaluator (arguments of the recorded shapes, zero-filled: the kernels are
dense, so their time does not depend on the values), and multiplies by the calls. What the whole
model takes beyond the sum of its kernels is the VM's own work (allocations, argument checks, the calls
themselves) and what kernels lose in the real sequence (colder caches than when timed alone). This TVM
wheel's Relax VM has no profiling mode of its own."""

from __future__ import annotations

import statistics
import time

import numpy as np
import tvm
from tvm import relax

KERNELS_FILE = "kernels.json"


def kernel_table(lowered: tvm.IRModule, tuned: set[str]) -> list[dict]:
    """Each PrimFunc `main` calls through call_tir: calls, the shapes of its arguments (inputs then
    outputs; None when symbolic), its schedule (tuned / default / plain: no template fit) and, for an
    integer conv / dense, its dot-product form (`dot`: pairs, quad or quad16, qcompile.kernels.intrinsics)."""
    from qcompile.kernels.compute import DOT_FORM
    from qcompile.kernels.templates import SCHEDULED, anchor_annotations

    sites: dict[str, dict] = {}

    def shape_of(ty):
        if not isinstance(ty, relax.TensorType) or ty.shape is None:
            return None
        dims = getattr(ty.shape, "values", None)
        if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            return None
        return {"shape": [int(d) for d in dims], "dtype": str(ty.dtype)}

    def visit(expr) -> None:
        if not (isinstance(expr, relax.Call) and expr.op.same_as(tvm.ir.Op.get("relax.call_tir"))):
            return
        name = expr.args[0].name_hint
        if name in sites:
            sites[name]["calls"] += 1
            return
        outs = expr.ty_args[0]
        outs = list(outs.fields) if isinstance(outs, relax.TupleType) else [outs]
        args = [shape_of(a.ty) for a in expr.args[1].fields] + [shape_of(o) for o in outs]
        symbolic = len(expr.args) > 2 or any(a is None for a in args)
        sites[name] = {"kernel": name, "calls": 1, "args": None if symbolic else args}

    relax.analysis.post_order_visit(lowered["main"], visit)
    for name, site in sites.items():
        func = lowered[name]
        scheduled = func.attrs is not None and SCHEDULED in func.attrs
        site["schedule"] = "tuned" if name in tuned else ("default" if scheduled else "plain")
        form = (anchor_annotations(func) or {}).get(DOT_FORM, "float")
        if form != "float":
            site["dot"] = form
    return sorted(sites.values(), key=lambda s: s["kernel"])


def model_time_ms(runner, feed: dict, runs: int) -> float:
    for _ in range(2):
        runner(feed)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        runner(feed)
        times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times)


def profile(artifact, feed: dict, runs: int = 20) -> dict:
    """Per-kernel times of `artifact` (a runtime.Artifact built with kernels.json), heaviest first,
    with the model's own median time on `feed` beside their sum."""
    from qcompile.errors import InputError
    from qcompile.runtime import Runner

    if KERNELS_FILE not in artifact.manifest["files"]:
        raise InputError(f"{artifact.path} has no {KERNELS_FILE} (built by an older qcompile): rebuild it to profile")
    table = artifact.read_json(KERNELS_FILE)["kernels"]
    runner = Runner(artifact)  # loads a private copy of the library and starts the thread pool
    rows, skipped = time_kernels(runner, table, number=max(1, runs // 2), repeat=3, min_repeat_ms=20)
    kernels_ms = sum(r["total_ms"] for r in rows)
    model_ms = model_time_ms(runner, feed, runs)
    for r in rows:
        r["share"] = r["total_ms"] / model_ms if model_ms else 0.0
    return {
        "model_ms": model_ms,
        "kernels_ms": kernels_ms,
        "outside_kernels_ms": model_ms - kernels_ms,
        "kernels": rows,
        "by_schedule": by_schedule(rows),
        "not_timed": skipped,
    }


def time_kernels(runner, table: list[dict], **timer) -> tuple[list[dict], list[str]]:
    """Each kernel of `table` timed on its own in the runner's library (heaviest first), and the names
    of those with symbolic shapes, which cannot be timed without the model's own values."""
    library = runner.module.imports[0]  # the kernels; the VM executable imports them
    dev = tvm.cpu()
    rows, skipped = [], []
    for site in table:
        if site["args"] is None:
            skipped.append(site["kernel"])
            continue
        args = [tvm.runtime.tensor(np.zeros(a["shape"], a["dtype"]), dev) for a in site["args"]]
        per_call = 1e3 * library.time_evaluator(site["kernel"], dev, **timer)(*args).median
        row = {k: v for k, v in site.items() if k != "args"}
        rows.append({**row, "per_call_ms": per_call, "total_ms": per_call * site["calls"]})
    rows.sort(key=lambda r: -r["total_ms"])
    return rows, skipped


def by_schedule(rows: list[dict]) -> dict[str, dict]:
    """Kernel count and time per schedule kind (tuned / default / plain), and its share of the kernels' time."""
    total = sum(r["total_ms"] for r in rows) or 1.0
    out: dict[str, dict] = {}
    for r in rows:
        entry = out.setdefault(r["schedule"], {"kernels": 0, "ms": 0.0})
        entry["kernels"] += 1
        entry["ms"] += r["total_ms"]
    for entry in out.values():
        entry["share"] = entry["ms"] / total
    return out


def tuning_note(artifact_path) -> str:
    """After a build with a tuning database: kernels with a record, and how much of the library's kernel
    time runs tuned schedules, each kernel timed once here (a quick estimate, not a benchmark), when the
    library runs on this host."""
    from qcompile.errors import InputError
    from qcompile.runtime import Runner, open_artifact

    artifact = open_artifact(artifact_path)
    sched = artifact.manifest.get("kernels", {}).get("schedules", {})
    tuned, untuned = sched.get("tuned", 0), sched.get("default", 0)
    note = f"tuning database: {tuned} of {tuned + untuned} tunable kernels tuned"
    not_measured = " (the library does not run on this host, so their share of its time is not measured)"
    if KERNELS_FILE not in artifact.manifest["files"]:
        return note
    try:
        runner = Runner(artifact)
    except InputError:
        return note + not_measured
    rows, _ = time_kernels(runner, artifact.read_json(KERNELS_FILE)["kernels"], number=1, repeat=3)
    return note + f"; of the kernels' time, timed here: {describe_schedules(by_schedule(rows))}"


def describe_schedules(shares: dict[str, dict]) -> str:
    """'tuned 72% (14 kernels), default 20% (30 kernels), plain 8% (39 kernels)', of the kernels' time."""
    kinds = ("tuned", "default", "plain")
    order = sorted(shares, key=lambda k: kinds.index(k) if k in kinds else len(kinds))
    return ", ".join(f"{k} {100 * shares[k]['share']:.0f}% ({shares[k]['kernels']} kernels)" for k in order)


def format_profile(result: dict, top: int = 25) -> str:
    lines = [
        f"model {result['model_ms']:.3f} ms; its kernels timed one by one add up to {result['kernels_ms']:.3f} ms "
        f"({len(result['kernels'])} kernels); the rest ({result['outside_kernels_ms']:+.3f} ms) is outside them: the "
        "VM's own work (allocations, calls) and what a kernel loses in the model's sequence (colder caches)",
        f"  {'total ms':>9} {'share':>6} {'calls':>5} {'per call':>9}  {'schedule':<8} {'dot':<6} kernel",
    ]
    for r in result["kernels"][:top]:
        lines.append(
            f"  {r['total_ms']:>9.3f} {100 * r['share']:>5.1f}% {r['calls']:>5d} {r['per_call_ms']:>9.4f}  "
            f"{r['schedule']:<8} {r.get('dot', ''):<6} {r['kernel'][:90]}"
        )
    if len(result["kernels"]) > top:
        rest = result["kernels"][top:]
        lines.append(
            f"  {sum(r['total_ms'] for r in rest):>9.3f} {100 * sum(r['share'] for r in rest):>5.1f}% "
            f"      ({len(rest)} more kernels)"
        )
    lines.append(f"  by schedule, of the kernels' time: {describe_schedules(result['by_schedule'])}")
    if result["not_timed"]:
        lines.append(f"  not timed (symbolic shapes): {', '.join(result['not_timed'])}")
    return "\n".join(lines)
