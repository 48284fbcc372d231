"""`qcompile` command line: parses arguments and calls the Python API, nothing else.

Exit codes: 0 success, 1 verification bar missed or internal error, 2 bad input (one line on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from qcompile import __version__
from qcompile.cli_options import add_model_options, add_thread_pool_option, config_from_args
from qcompile.cli_perf import COMMANDS as PERF_COMMANDS
from qcompile.cli_perf import add_parsers as add_perf_parsers
from qcompile.config import STAGES
from qcompile.errors import InputError, QCompileError, VerificationFailed
from qcompile.interrupts import Terminated, quiet_finalizers, signals_raise
from qcompile.precision import SEARCH_SCHEMES
from qcompile.threads import configured as threads_configured


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, exit 2, like every bad input
        self.exit(2, f"qcompile: error: {one_line(message)} (see --help)\n")


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
    b.add_argument(
        "-o",
        "--output",
        help="artifact directory to write; an existing artifact there is replaced atomically, any other "
        "non-empty folder is refused",
    )
    b.add_argument(
        "--force",
        action="store_true",
        help="also replace a damaged artifact folder (one holding a qcompile manifest that no longer checks out)",
    )
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
    m = b.add_argument_group(
        "automatic mixed precision",
        "start from all-integer and keep float the fewest, cheapest layers (ranked by output noise removed "
        "per MAC, measured on one switchable compiled model) until the budget holds on --eval; the "
        "artifact is then verified and gets precision.json (reuse: --precision-file) and mixed_precision.json",
    )
    m.add_argument("--eval", metavar="DATA", help="evaluation .npz the budget is measured on (may hold 'labels')")
    m.add_argument("--max-top1-drop", type=float, metavar="POINTS", help="budget: top-1 drop vs fp32, in points")
    m.add_argument("--min-sqnr", type=float, metavar="DB", help="budget: output SQNR vs fp32 of at least DB")
    m.add_argument(
        "--labels", action="store_true", help="measure the top-1 drop as accuracy on the eval labels, not agreement"
    )
    m.add_argument(
        "--time-budget", metavar="DURATION", help="stop searching after this long (90s, 10m) and keep the best"
    )
    m.add_argument(
        "--probe-samples", type=int, default=32, metavar="N", help="samples per layer sensitivity run (default 32)"
    )
    m.add_argument(
        "--schemes",
        metavar="LIST",
        help="search weight schemes per layer instead of float layers: choose for each conv/matmul among "
        f"these (default with --max-size-mb: {','.join(SEARCH_SCHEMES)}); the smallest mix within the "
        "budget is built and verified, its map saved as precision.json and the search as scheme_search.json",
    )
    m.add_argument(
        "--max-size-mb",
        type=float,
        metavar="MB",
        help="with the scheme search: the integer layers' stored weights must fit in MB (exit 0 with a "
        "warning when no mix within the budget does)",
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
    add_thread_pool_option(v)
    v.add_argument("--per-layer", action="store_true", help="add a per-layer SQNR table (which layer broke it?)")
    v.add_argument("--max-samples", type=int, help="evaluate at most this many samples")
    v.add_argument(
        "--shifts",
        metavar="SPEC",
        help="also measure under input shifts: 'default' (noise, blur, brightness, contrast, jpeg, crop, and "
        "snr/gain for audio, each at 3 severities), 'imagenet-c' (albumentations' shot_noise, impulse_noise, "
        "defocus_blur, motion_blur, zoom_blur, glass_blur, snow, fog, pixelate: qcompile[shifts]) or e.g. "
        "'noise:0.05,0.1;blur:1,2;brightness:-0.3,0.3;contrast:-0.5;jpeg:30;crop:0.2;fog:0.4' (noise/brightness in "
        "units of the input's value range, blur sigma in pixels, contrast factor - 1, JPEG quality, crop fraction); "
        "per shift and severity: int8-vs-fp32 agreement and SQNR, fp32's own change from clean, and the "
        "activation sites clipping beyond their calibrated range. Needs -o",
    )
    v.add_argument("-o", "--output", metavar="DIR", help="with --shifts: folder for robustness.json/.html/.png")
    v.add_argument(
        "--task",
        choices=["classify", "detect", "binary", "embed"],
        help="also score the task: classify (top-1/top-5 of the first output), detect (YOLO-style boxes after "
        "NMS matched to fp32's at IoU 0.5: recall, precision, F1, AP50), binary (p > 0.5 decisions of the "
        "first output, e.g. voice activity), embed (cosine per sample, and retrieval top-1 when the data "
        "has 'pair_of'; the default for unit-length outputs or data with pairs)",
    )

    r = sub.add_parser("run", help="run an artifact on inputs with the TVM runtime only")
    r.add_argument("artifact", help="artifact directory")
    r.add_argument("--input", required=True, help=".npz with one array per model input")
    r.add_argument("-o", "--output", required=True, help=".npz to write, one array per model output")
    add_thread_pool_option(r)

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

    a = sub.add_parser(
        "analyze",
        help="per-layer sensitivity: which layer broke it? (report.json + report.html with plots)",
        description="Calibrates, compiles one switchable model (every layer integer or float at run time) "
        "and measures, per quantizable layer, the output SQNR and top-1 change when only that layer is "
        "integer and when only it is float, its share of the MACs and of the int8 speedup, and the "
        "accuracy / size / latency curve of keeping the top-ranked layers float.",
    )
    a.add_argument("model", help="float ONNX model file")
    a.add_argument("-o", "--output", required=True, help="report directory (report.json, report.html, PNGs)")
    a.add_argument("--data", required=True, help="evaluation .npz (one array per input, optional 'labels')")
    a.add_argument("--max-samples", type=int, default=100, help="evaluate on at most this many samples (default 100)")
    a.add_argument(
        "--calib-subsets",
        type=int,
        metavar="K",
        help="also K builds, each calibrated on one of K disjoint subsets of --calib (every K-th batch), each "
        "verified on --data: the spread (mean, std, min, max) of agreement, accuracy and SQNR says whether the "
        "calibration set is large enough (calib_subsets.json)",
    )
    a.add_argument(
        "--schemes",
        metavar="LIST",
        help="also the sensitivity per weight scheme (e.g. int8,int4,pow2,ternary): each layer alone under "
        "each scheme, every other layer int8 weights, activations float: output SQNR, top-1 agreement and "
        "weight bytes (report.json 'schemes')",
    )
    add_model_options(a)

    add_perf_parsers(sub)

    i = sub.add_parser(
        "inspect",
        help="list a model's ops, shapes and quantizable layers, or what a built artifact holds (an npu "
        "artifact: which operators run on the NPU and on the CPU, Vela's cycle and memory estimates)",
    )
    i.add_argument("model", help="ONNX model file, or an artifact folder")
    i.add_argument("--input-shape", action="append", metavar="NAME:DIMS", help="concrete shape of a dynamic input")
    i.add_argument("--fix-input", action="append", metavar="NAME=VALUE", help="fold an input in as a constant")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def _build(args: argparse.Namespace) -> int:
    import qcompile as api
    from qcompile.artifact import artifact_bytes

    config = config_from_args(args)
    search = _mixed_search(args)
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
        search=search,
        force=args.force,
    )
    if result.mixed is not None and result.mixed.get("kind") == "schemes":
        v = result.mixed["verified"]
        state = "met" if v["met"] else "NOT met"
        schemes = sorted(set(result.mixed["layers"].values()))
        print(
            f"scheme search: {len(result.mixed['layers'])} layers below int8 ({', '.join(schemes) or 'none'}), "
            f"weights {result.mixed['weight_bytes'] / 1e6:.3f} MB "
            f"(all-int8 {result.mixed['int8_weight_bytes'] / 1e6:.3f} MB); budget ({result.mixed['budget']}) "
            f"{state} by the built library: {v['value']:.3f}"
        )
        if not result.mixed["size_met"]:
            print(
                f"qcompile: --max-size-mb cannot be met within the budget: the smallest mix that meets it has "
                f"{result.mixed['weight_bytes'] / 1e6:.3f} MB of weights",
                file=sys.stderr,
            )
    elif result.mixed is not None:
        v = result.mixed["verified"]
        state = "met" if v["met"] else "NOT met"
        print(
            f"mixed precision: {len(result.mixed['float_layers'])} float layers, budget "
            f"({result.mixed['budget']}) {state} by the built library: {v['value']:.3f}"
        )
        if not result.mixed["feasible"]:
            print("qcompile: the budget cannot be met even with every searchable layer float", file=sys.stderr)
    if result.artifact is not None:
        report = json.loads((result.artifact / "report.json").read_text())
        total = artifact_bytes(result.artifact)
        print(
            f"wrote {result.artifact}: {report['quantized_layers']} integer layers, "
            f"{len(report['float_layers'])} float, {total / 1e6:.2f} MB "
            f"({100 * total / max(report['weights_fp32_bytes'], 1):.1f}% of the fp32 weights)"
            + _integer_weights_note(report.get("integer_weights") or {})
        )
        if "pre_quantized" in report:
            from qcompile.calibration.graph import summary_line

            print(summary_line(report["pre_quantized"]))
        npu = json.loads((result.artifact / "manifest.json").read_text()).get("npu")
        if npu is not None:
            from qcompile.npu.package import summary_line as npu_summary

            print(npu_summary(npu))
        if args.tuning_db is not None:
            from qcompile.profile import tuning_note

            print(tuning_note(result.artifact))
    else:
        print(f"stopped after {args.stop_after}" + (f"; IR in {args.dump_ir}" if args.dump_ir else ""))
    return 0


def _integer_weights_note(doc: dict) -> str:
    """'; integer layers' weights 10.6 MB -> 1.5 MB (14.5%)' when some layer stores sub-8-bit weights."""
    schemes = doc.get("by_scheme", {})
    if all(k.startswith(("int8", "uint8", "int16")) for k in schemes):
        return ""
    parts = ", ".join(f"{k}: {100 * v['fraction']:.1f}% of fp32 ({v['layers']} layers)" for k, v in schemes.items())
    return f"; integer weights {parts}"


def _mixed_search(args: argparse.Namespace):
    from qcompile.cli_perf import parse_duration
    from qcompile.errors import InputError
    from qcompile.mixed import Budget
    from qcompile.pipeline import MixedSearch
    from qcompile.scheme_search import parse_schemes

    wants = args.max_top1_drop is not None or args.min_sqnr is not None
    if args.eval is None:
        if wants or args.labels or args.time_budget or args.schemes or args.max_size_mb is not None:
            raise InputError(
                "--max-top1-drop / --min-sqnr / --labels / --time-budget / --schemes / --max-size-mb need --eval DATA"
            )
        return None
    if not wants:
        raise InputError("--eval needs a budget: --max-top1-drop POINTS or --min-sqnr DB")
    if args.probe_samples <= 0:
        raise InputError("--probe-samples must be positive")
    budget = Budget(max_top1_drop=args.max_top1_drop, min_sqnr=args.min_sqnr, labels=args.labels)
    if args.max_size_mb is not None and args.max_size_mb <= 0:
        raise InputError(f"--max-size-mb {args.max_size_mb}: must be positive")
    schemes: tuple[str, ...] = ()
    if args.schemes or args.max_size_mb is not None:
        schemes = parse_schemes(args.schemes or ",".join(SEARCH_SCHEMES))
    return MixedSearch(
        args.eval, budget, parse_duration(args.time_budget), args.probe_samples, schemes, args.max_size_mb
    )


def _verify(args: argparse.Namespace) -> int:
    import qcompile as api

    if args.json is not None:
        check_output_file(args.json, "--json", [args.artifact, args.model, args.data])
    shifts = None
    if args.shifts is not None:
        from qcompile.shifts import parse_shifts

        shifts = parse_shifts(args.shifts)  # a bad spec fails before any work
        if not args.output:
            raise InputError("--shifts needs -o DIR: the folder for robustness.json, .html and .png")
    elif args.output:
        raise InputError("-o is the --shifts report folder: give --shifts too")
    code = 0
    try:
        metrics = api.verify(
            args.artifact,
            args.model,
            args.data,
            max_top1_drop=args.max_top1_drop,
            per_layer=args.per_layer,
            max_samples=args.max_samples,
            task=args.task,
        )
    except VerificationFailed as exc:
        metrics, code = exc.metrics, 1
        print(f"qcompile: FAILED: {exc}", file=sys.stderr)
    print(_format_metrics(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n")
    if shifts is not None:
        from qcompile.robustness import format_shifts, shift_report

        doc = shift_report(args.artifact, args.model, args.data, shifts, args.output, max_samples=args.max_samples)
        print(format_shifts(doc))
        print(f"wrote {Path(args.output) / 'robustness.html'} (and robustness.json, robustness.png)")
    return code


def check_output_file(path: str, flag: str, reads: list[str]) -> Path:
    """A file the command will write: named, not a directory, in a folder that exists, and not one of
    the files it reads."""
    if not path.strip():
        raise InputError(f"{flag} is empty: name the file to write")
    out = Path(path)
    if out.is_dir():
        raise InputError(f"{flag} {path} is a directory; name a file")
    if not out.absolute().parent.is_dir():
        raise InputError(f"{flag} {path}: the folder {out.absolute().parent} does not exist")
    if not os.access(out.absolute().parent, os.W_OK):
        raise InputError(f"{flag} {path}: the folder {out.absolute().parent} is not writable")
    for given in reads:
        if given and Path(given).exists() and out.exists() and os.path.samefile(given, out):
            raise InputError(f"{flag} {path} is one of the command's inputs; name another file")
    return out


def _npu_line(npu: dict) -> str:
    check = npu["library_vs_reference"]
    if npu["identical"]:
        same = f"identical on all {check['values']} output values"
    elif not check["differing"]:  # float outputs of a layer kept float (on the device's CPU)
        same = f"equal up to float rounding on all {check['values']} output values (max {check['max_abs']:.3g})"
    else:
        same = (
            f"{check['differing']} of {check['values']} output values differ (up to {check['max_lsb']} LSB, "
            f"{check['max_abs']:.3g} absolute)"
        )
    est = npu["estimates"]
    return (
        f"NPU: metrics from {npu['kernels']}; qcompile's integer library vs those kernels: {same}; Vela's "
        f"estimate {est['inference_ms']} ms per inference, {est['sram_kib']} KiB SRAM"
    )


def _format_metrics(m: dict) -> str:
    lines = [f"samples: {m['samples']}"]
    for name, out in m["outputs"].items():
        lines.append(f"output {name}: " + ", ".join(f"{k}={v}" for k, v in out.items()))
    for name, out in m.get("vs_qdq_model", {}).items():  # a pre-quantized model's second reference
        scores = ", ".join(f"{k}={v}" for k, v in out.items())
        lines.append(f"output {name} vs the pre-quantized model itself in onnxruntime: {scores}")
    lines.append(
        f"size: library {m['library_bytes'] / 1e6:.2f} MB, whole artifact {m['artifact_bytes'] / 1e6:.2f} MB "
        f"({100 * m['artifact_to_fp32_weights']:.1f}% of the fp32 weights, {m['weights_fp32_bytes'] / 1e6:.2f} MB)"
    )
    if "npu" in m:
        lines.append(_npu_line(m["npu"]))
    else:
        lines.append(
            f"latency per sample: onnxruntime fp32 {m['latency_ms_fp32_onnxruntime']} ms, "
            f"qcompile int8 {m['latency_ms_int8_qcompile']} ms"
        )
    if "task" in m:
        lines.append(f"task {m['task']['name']}: " + ", ".join(f"{k}={v}" for k, v in m["task"].items() if k != "name"))
    for row in m.get("per_layer", []):
        lines.append(f"  {row['sqnr_db']:>7.2f} dB  {row['op']:<12} {row['layer']}")
    return "\n".join(lines)


def _analyze(args: argparse.Namespace) -> int:
    from qcompile.analysis import analyze
    from qcompile.scheme_search import parse_schemes

    if args.calib_subsets is not None and (args.calib is None or args.calib_subsets < 2):
        raise InputError("--calib-subsets K needs --calib DATA and K >= 2 (it calibrates on K parts of DATA)")
    report = analyze(
        args.model,
        args.output,
        calib=args.calib,
        qparams=args.qparams,
        data=args.data,
        config=config_from_args(args),
        max_samples=args.max_samples,
        schemes=parse_schemes(args.schemes) if args.schemes else (),
    )
    print("all integer: " + ", ".join(f"{k}={v}" for k, v in report["all_integer"].items()))
    print("most sensitive layers (noise removed per MAC when kept float):")
    for row in report["layers"][:10]:
        sqnr = f"{row['float_sqnr_db']:>7.2f} dB float-only  {row['int8_sqnr_db']:>7.2f} dB int8-only"
        print(f"  {row['rank']:>3}  {sqnr}  {row['layer']}")
    if "schemes" in report:
        rows = report["schemes"]["rows"]
        names = list(dict.fromkeys(r["scheme"] for r in rows))
        print("weight schemes, one layer at a time (output SQNR dB / top-1 agreement %):")
        print(f"  {'layer':<40} " + " ".join(f"{n:>16}" for n in names))
        for layer in dict.fromkeys(r["layer"] for r in rows):
            cells = {r["scheme"]: r for r in rows if r["layer"] == layer}
            text = [f"{cells[n]['sqnr_db']:>7.2f}/{cells[n].get('top1_agreement', float('nan')):>7.2f}" for n in names]
            print(f"  {layer[-40:]:<40} " + " ".join(f"{t:>16}" for t in text))
    print(f"wrote {args.output}/report.json and report.html ({report['seconds']} s)")
    if args.calib_subsets is not None:
        from qcompile.robustness import calib_subsets, format_subsets

        doc = calib_subsets(
            args.model,
            args.calib,
            args.data,
            args.calib_subsets,
            args.output,
            config=config_from_args(args),
            max_samples=args.max_samples,
        )
        print(format_subsets(doc))
        print(f"wrote {args.output}/calib_subsets.json")
    return 0


def _run(args: argparse.Namespace) -> int:
    import qcompile as api

    check_output_file(args.output, "-o", [args.artifact, args.input])
    print(f"wrote {api.run(args.artifact, args.input, args.output)}")
    return 0


def _package(args: argparse.Namespace) -> int:
    from qcompile.deploy.package import package

    print(f"wrote {package(args.artifact, args.output, args.runner)}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from qcompile.inspection import format_inspection, inspect_model
    from qcompile.model import parse_fixed_inputs, parse_input_shapes

    if Path(args.model).is_dir():  # a built artifact
        from qcompile.artifact_info import format_artifact, inspect_artifact

        info = inspect_artifact(args.model)
        print(json.dumps(info, indent=2) if args.json else format_artifact(info))
        return 0
    info = inspect_model(args.model, parse_input_shapes(args.input_shape), parse_fixed_inputs(args.fix_input))
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0 if info["supported"] else 2


COMMANDS = {
    "build": _build,
    "analyze": _analyze,
    "verify": _verify,
    "run": _run,
    "inspect": _inspect,
    "package": _package,
    **PERF_COMMANDS,
}


def one_line(text: str) -> str:
    """A message for stderr on exactly one line (a path may hold a newline)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        with signals_raise(), threads_configured(getattr(args, "thread_pool", None)):  # before TVM's pool starts
            return COMMANDS[args.command](args)
    except QCompileError as exc:
        print(f"qcompile: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        quiet_finalizers()
        print("qcompile: interrupted", file=sys.stderr)
        return 130
    except Terminated as exc:
        quiet_finalizers()
        print(f"qcompile: terminated by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:  # stdout went away (| head): nothing to report, and nothing more to print
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug in qcompile or TVM, not the user's input
        if os.environ.get("QCOMPILE_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(
            f"qcompile: internal error: {type(exc).__name__}: {one_line(first)} (set QCOMPILE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
