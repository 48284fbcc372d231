"""`qcompile` command line: parses arguments and calls the Python API, nothing else.

Exit codes: 0 success, 1 verification bar missed or internal error, 2 bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from qcompile import __version__
from qcompile.cli_options import add_model_options, config_from_args
from qcompile.cli_perf import COMMANDS as PERF_COMMANDS
from qcompile.cli_perf import add_parsers as add_perf_parsers
from qcompile.config import STAGES
from qcompile.errors import QCompileError, VerificationFailed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        self.exit(2, f"qcompile: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:

    p = _Parser(prog="qcompile", description="Compile a float ONNX model into a verified integer library.")
    p.add_argument("--version", action="version", version=f"qcompile {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser(
        "build",
        help="quantize and compile a model into an artifact directory",
        description="ONNX -> Relax -> annotate -> calibrate -> realize (integer ops) -> compile "
        "-> artifact directory (library, manifest.json, report.json, qparams.json, plan.json).",
    )
    b.add_argument("model", help="float ONNX model file (opset 11 or newer)")
    b.add_argument("-o", "--output", help="artifact directory to write (replaced atomically if it exists)")
    add_model_options(b)
    b.add_argument(
        "--tuning-db",
        metavar="DIR",
        help="apply the best schedules of this tuning database (qcompile tune) with zero new trials; "
        "kernels without a record get the default schedules",
    )
    b.add_argument(
        "--require-tuned",
        action="store_true",
        help="fail, naming them, when a kernel has no record in --tuning-db for this target and TVM version",
    )
    b.add_argument("--dump-ir", metavar="DIR", help="write the Relax IR after each stage as TVMScript into DIR")
    b.add_argument("--stop-after", choices=STAGES, help="stop after this stage (with --dump-ir to look at the IR)")

    v = sub.add_parser(
        "verify",
        help="compare an artifact with the float model on held-out data",
        description="Runs the compiled artifact and the float model (onnxruntime) on the same data: "
        "top-1/top-5 agreement, accuracy when the data has 'labels', MSE, SQNR, cosine, sizes, latency.",
    )
    v.add_argument("artifact", help="artifact directory written by qcompile build")
    v.add_argument("--model", required=True, help="the float ONNX model the artifact was built from")
    v.add_argument("--data", required=True, help="evaluation .npz (one array per input, optional integer 'labels')")
    v.add_argument("--json", metavar="FILE", help="also write the metrics as JSON to FILE")
    v.add_argument(
        "--max-top1-drop",
        type=float,
        metavar="POINTS",
        help="exit 1 when top-1 accuracy (or agreement, without labels) drops more than POINTS",
    )
    v.add_argument("--per-layer", action="store_true", help="add a per-layer SQNR table (which layer broke it?)")
    v.add_argument("--max-samples", type=int, help="evaluate at most this many samples")

    r = sub.add_parser("run", help="run an artifact on inputs with the TVM runtime only")
    r.add_argument("artifact", help="artifact directory")
    r.add_argument("--input", required=True, help=".npz with one array per model input")
    r.add_argument("-o", "--output", required=True, help=".npz to write, one array per model output")

    k = sub.add_parser(
        "package",
        help="bundle an artifact for its device: library, TVM runtime, a C++ runner",
        description="Writes a self-contained folder for the artifact's target: the library and manifest, "
        "the TVM runtime libraries for the target's architecture (downloaded once from PyPI for "
        "cross targets), qcompile-run (a C++ program: .npy inputs in, .npy outputs out, no Python) "
        "and run.py (the same with the TVM Python runtime).",
    )
    k.add_argument("artifact", help="artifact directory written by qcompile build")
    k.add_argument("-o", "--output", help="bundle folder to write (default: ARTIFACT/deploy)")
    k.add_argument("--runner", default="cpp", choices=["cpp"], help="the runner program to build (default cpp)")

    add_perf_parsers(sub)

    i = sub.add_parser("inspect", help="list a model's ops, shapes and quantizable layers")
    i.add_argument("model", help="ONNX model file")
    i.add_argument("--input-shape", action="append", metavar="NAME:DIMS", help="concrete shape of a dynamic input")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _build(args: argparse.Namespace) -> int:
    import qcompile as api
    from qcompile.artifact import artifact_bytes

    config = config_from_args(args)
    result = api.build(
        args.model,
        args.output,
        calib=args.calib,
        qparams=args.qparams,
        config=config,
        dump_ir=args.dump_ir,
        stop_after=args.stop_after,
        tuning_db=args.tuning_db,
        require_tuned=args.require_tuned,
    )
    if result.artifact is not None:
        report = json.loads((result.artifact / "report.json").read_text())
        total = artifact_bytes(result.artifact)
        print(
            f"wrote {result.artifact}: {report['quantized_layers']} integer layers, "
            f"{len(report['float_layers'])} float, {total / 1e6:.2f} MB "
            f"({100 * total / max(report['weights_fp32_bytes'], 1):.1f}% of the fp32 weights)"
        )
    else:
        print(f"stopped after {args.stop_after}" + (f"; IR in {args.dump_ir}" if args.dump_ir else ""))
    return 0


def _verify(args: argparse.Namespace) -> int:
    import qcompile as api

    code = 0
    try:
        metrics = api.verify(
            args.artifact,
            args.model,
            args.data,
            max_top1_drop=args.max_top1_drop,
            per_layer=args.per_layer,
            max_samples=args.max_samples,
        )
    except VerificationFailed as exc:
        metrics, code = exc.metrics, 1
        print(f"qcompile: FAILED: {exc}", file=sys.stderr)
    print(_format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    return code


def _format_metrics(m: dict) -> str:
    lines = [f"samples: {m['samples']}"]
    for name, out in m["outputs"].items():
        lines.append(f"output {name}: " + ", ".join(f"{k}={v}" for k, v in out.items()))
    lines.append(
        f"size: library {m['library_bytes'] / 1e6:.2f} MB, whole artifact {m['artifact_bytes'] / 1e6:.2f} MB "
        f"({100 * m['artifact_to_fp32_weights']:.1f}% of the fp32 weights, {m['weights_fp32_bytes'] / 1e6:.2f} MB)"
    )
    lines.append(
        f"latency per sample: onnxruntime fp32 {m['latency_ms_fp32_onnxruntime']} ms, "
        f"qcompile int8 {m['latency_ms_int8_qcompile']} ms"
    )
    for row in m.get("per_layer", []):
        lines.append(f"  {row['sqnr_db']:>7.2f} dB  {row['op']:<12} {row['layer']}")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    import qcompile as api

    print(f"wrote {api.run(args.artifact, args.input, args.output)}")
    return 0


def _package(args: argparse.Namespace) -> int:
    from qcompile.deploy.package import package

    print(f"wrote {package(args.artifact, args.output, args.runner)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from qcompile.inspection import format_inspection, inspect_model
    from qcompile.model import parse_input_shapes

    info = inspect_model(args.model, parse_input_shapes(args.input_shape))
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0 if info["supported"] else 2


COMMANDS = {"build": _build, "verify": _verify, "run": _run, "inspect": _inspect, "package": _package, **PERF_COMMANDS}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except QCompileError as exc:
        print(f"qcompile: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("qcompile: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug in qcompile or TVM, not the user's input
        if os.environ.get("QCOMPILE_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(
            f"qcompile: internal error: {type(exc).__name__}: {first} (set QCOMPILE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
