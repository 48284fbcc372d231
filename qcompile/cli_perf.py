"""The performance commands of the CLI: `tune`, `tuning-db info`, `bench`. Argument parsing and output
only; the work is in qcompile.tuning and qcompile.bench."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from qcompile.cli_options import add_model_options, add_thread_pool_option, config_from_args
from qcompile.errors import InputError


def add_parsers(sub) -> None:
    t = sub.add_parser(
        "tune",
        help="tune the model's kernels with MetaSchedule into a tuning database",
        description="Takes the model through the build stages, then tunes every conv / depthwise / matmul "
        "kernel of the integer (or --bits 32 float) module with MetaSchedule: qcompile's schedule templates "
        "with sampled tile sizes, evolutionary search guided by the XGBoost cost model, candidates built "
        "and measured on this machine. Runs in a child process; every measurement is committed as it "
        "comes, so a later run (or a build) continues from what is there.",
    )
    t.add_argument("model", help="float ONNX model file")
    t.add_argument("--tuning-db", required=True, metavar="DIR", help="tuning database directory (created)")
    t.add_argument("--trials", type=int, default=1000, help="measured candidates in total, over all kernels")
    t.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="bound the whole command (90s, 30m, 2h), keeping the best so far: every kernel's default is "
        "measured first, then the search goes to the heaviest kernels (calls x best time) in batches the time "
        "left can give three rounds each, until 95%% of the estimated time is covered",
    )
    t.add_argument("--threads", type=int, help="threads the kernels run with while measured (default: all)")
    t.add_argument(
        "--rpc",
        metavar="HOST:PORT",
        help="measure candidates on a device through this TVM RPC tracker (python -m tvm.exec.rpc_tracker; "
        "the device runs python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY); needed for targets "
        "that do not run on this machine, such as arm",
    )
    t.add_argument("--device-key", metavar="KEY", help="the key the device's RPC server registered with")
    add_model_options(t)

    d = sub.add_parser("tuning-db", help="look into a tuning database")
    dsub = d.add_subparsers(dest="db_command", required=True, parser_class=type(d))
    info = dsub.add_parser("info", help="per target and TVM version: tasks, trials, best latencies")
    info.add_argument("database", help="tuning database directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    prune = dsub.add_parser("prune", help="keep only the best record per kernel (what builds apply; to commit)")
    prune.add_argument("database", help="tuning database directory")

    b = sub.add_parser(
        "bench",
        help="latency of artifacts next to onnxruntime, measured side by side",
        description="Runs each artifact (and onnxruntime on the float model, and on its own static int8 "
        "quantization) in its own process with the same threads, one at a time in interleaved rounds; "
        "prints medians, p10 and ratios.",
    )
    b.add_argument("artifacts", nargs="+", help="artifact directories (e.g. an int8 and a --bits 32 build)")
    b.add_argument("--model", help="the float ONNX model (needed for --vs-onnxruntime)")
    b.add_argument(
        "--vs-onnxruntime",
        action="store_true",
        help="add onnxruntime on --model: its fp32 speed, or its int8 speed when --model is already "
        "quantized (QDQ or QOperator)",
    )
    b.add_argument(
        "--ort-int8-calib",
        metavar="NPZ",
        help="also onnxruntime int8: its quantize_static (QDQ, per-channel) of --model with this calibration .npz",
    )
    b.add_argument(
        "--ort-int8-dynamic",
        action="store_true",
        help="also onnxruntime int8 dynamic: its quantize_dynamic of --model (per-channel int8 weights, "
        "activations quantized at run time; needs no calibration data)",
    )
    b.add_argument(
        "--data",
        metavar="NPZ",
        help="inputs to time on (default: random normal floats; integer inputs within the range the graph "
        "gives them, e.g. token ids below the vocabulary size and masks of ones, else an error asking for --data)",
    )
    b.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for every engine")
    b.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    b.add_argument("--per-round", type=int, default=20, help="runs per engine per round (default 20)")
    b.add_argument(
        "--background",
        type=int,
        default=0,
        metavar="N",
        help="measure again with N busy processes of its own running (each a spin loop, ended with the "
        "measurement and after 15 minutes at most) and report each engine's slowdown under that load",
    )
    add_thread_pool_option(b)
    b.add_argument(
        "--profile",
        action="store_true",
        help="instead of the side-by-side table: where each artifact's time goes, per kernel (each timed on its "
        "own with the recorded shapes, times its calls; share of the model's time; how it was scheduled), and "
        "what the VM itself takes beyond the kernels",
    )
    b.add_argument("--json", metavar="FILE", help="also write the table (or the profile) as JSON")


def parse_duration(text: str | None) -> float | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*", text)
    if not m:
        raise InputError(f"--time-budget {text!r}: expected a duration like 90s, 30m or 2h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def tune(args: argparse.Namespace) -> int:
    from qcompile.tuning.tuner import tune as run_tune

    result = run_tune(
        args.model,
        args.tuning_db,
        config=config_from_args(args),
        calib=args.calib,
        qparams=args.qparams,
        trials=args.trials,
        time_budget_s=parse_duration(args.time_budget),
        threads=args.threads,
        rpc=args.rpc,
        device_key=args.device_key,
    )
    why = "time budget reached" if result.stopped_by_budget else "trials done"
    focus = ""
    if len(result.focused) < len(result.tasks):
        focus = (
            f" (searched the heaviest {len(result.focused)}, {100 * result.focus_share:.0f}% of the estimated "
            "kernel time; the others keep their measured default schedules)"
        )
    print(
        f"tuned {len(result.tasks)} kernels{focus}: {result.measured} candidates measured ({result.failed} failed) "
        f"in {result.seconds:.0f} s, {why}; records in {result.database}"
    )
    return 0


def db_info(args: argparse.Namespace) -> int:
    from qcompile.tuning.database import summarize

    keys = summarize(Path(args.database))
    if args.json:
        print(json.dumps(keys, indent=2))
        return 0
    if not keys:
        print(f"{args.database}: no tuning records")
    for key in keys:
        print(
            f"{key['folder']}: target {key.get('target', '?')}, TVM {key.get('tvm_version', '?')}, "
            f"{len(key['tasks'])} tasks, {key['records']} records"
        )
        total = sum(t["best_us"] or 0.0 for t in key["tasks"])
        for t in key["tasks"]:
            best = f"{t['best_us']:10.1f} us" if t["best_us"] is not None else "    failed   "
            share = 100 * (t["best_us"] or 0.0) / total if total else 0.0
            print(f"  {best} {share:5.1f}%  {t['trials']:5d} trials  {t['task'][:90]}")
    return 0


def bench(args: argparse.Namespace) -> int:
    if args.threads <= 0 or args.rounds <= 0 or args.per_round <= 0:
        raise InputError("--threads, --rounds and --per-round must be positive")
    if args.background < 0 or args.background > 64:
        raise InputError(f"--background {args.background}: give 0 to 64 busy processes")
    if (args.vs_onnxruntime or args.ort_int8_calib or args.ort_int8_dynamic) and not args.model:
        raise InputError(
            "--vs-onnxruntime, --ort-int8-calib and --ort-int8-dynamic need --model (the float ONNX model)"
        )
    import tempfile

    from qcompile.bench import bench as run_bench
    from qcompile.bench import format_table, ort_dynamic_model, ort_int8_model
    from qcompile.runtime import open_artifact

    artifacts = [Path(a) for a in args.artifacts]
    inputs = None
    if args.data:
        from qcompile.data import load_data

        first = open_artifact(artifacts[0])
        data = load_data(args.data, first.inputs, "bench", fixed=first.fixed_inputs)
        inputs = list(data.batches(16))
    if args.profile:
        return profile(artifacts, inputs, args)
    with tempfile.TemporaryDirectory(prefix="qcompile-bench-") as tmp:
        ort_int8 = None
        if args.ort_int8_calib:
            from qcompile.data import load_data

            first = open_artifact(artifacts[0])
            calib_data = load_data(args.ort_int8_calib, first.inputs, "--ort-int8-calib")
            calib = {s.name: calib_data.samples(s.name) for s in first.inputs}
            ort_int8 = ort_int8_model(Path(args.model), calib, Path(tmp) / "int8.onnx")
        ort_dynamic = ort_dynamic_model(Path(args.model), Path(tmp) / "dynamic.onnx") if args.ort_int8_dynamic else None
        result = run_bench(
            artifacts,
            model=Path(args.model) if args.vs_onnxruntime else None,
            ort_int8=ort_int8,
            ort_dynamic=ort_dynamic,
            inputs=inputs,
            threads=args.threads,
            rounds=args.rounds,
            per_round=args.per_round,
            background=args.background,
            pool=args.thread_pool,
        )
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def profile(artifacts: list[Path], inputs: list[dict] | None, args: argparse.Namespace) -> int:
    from qcompile.bench import default_inputs
    from qcompile.profile import format_profile
    from qcompile.profile import profile as run_profile
    from qcompile.runtime import open_artifact
    from qcompile.threads import configure

    configure(args.thread_pool, args.threads)  # before the first kernel starts TVM's pool
    results = {}
    for path in artifacts:
        art = open_artifact(path)
        feed = (inputs or default_inputs(art.manifest["inputs"], count=1))[0]
        results[str(path)] = run_profile(art, feed, runs=args.per_round)
        print(f"{path} ({args.threads} threads):")
        print(format_profile(results[str(path)]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def db_prune(args: argparse.Namespace) -> int:
    from qcompile.tuning.database import prune

    root = Path(args.database)
    if not root.is_dir():
        raise InputError(f"{root}: no such directory")
    for folder, before, after in prune(root):
        print(f"{folder}: {before} -> {after} records")
    return 0


def tuning_db(args: argparse.Namespace) -> int:
    return {"info": db_info, "prune": db_prune}[args.db_command](args)


COMMANDS = {"tune": tune, "tuning-db": tuning_db, "bench": bench}
