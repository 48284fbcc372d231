"""Options shared by several commands: the model pipeline's (build, tune), the runtime thread pool's
(run, verify, bench)."""

from __future__ import annotations

import argparse

from qcompile.config import DEFAULT_METHOD, WEIGHT_ROUNDINGS, WEIGHT_SCHEMES
from qcompile.passes.scheme import DEFAULT_CODEBOOK
from qcompile.threads import ENV as THREAD_POOL_ENV
from qcompile.threads import POOLS


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Target, bits, calibration and quantization options (what BuildConfig holds)."""
    from qcompile.calibration import CALIBRATORS
    from qcompile.targets import TARGETS

    p.add_argument("--target", default="x86", help=f"deployment target: {', '.join(TARGETS.names())} (default x86)")
    p.add_argument(
        "--bits",
        type=int,
        default=8,
        help="activation bits: 8 (int8/uint8 per target), 16 (int16 activations, int8 weights) or 32 (no "
        "quantization: the float library, the fp32 baseline for benchmarks)",
    )
    p.add_argument("--calib", help="calibration data: .npz with one array per model input, or a folder of images")
    p.add_argument("--qparams", help="reuse a qparams.json from an earlier build instead of calibrating")
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"range method: {', '.join(CALIBRATORS.names())} (default {DEFAULT_METHOD})",
    )
    p.add_argument("--percentile", type=float, default=99.99, help="percentile for --method percentile (default 99.99)")
    p.add_argument(
        "--skip",
        nargs="+",
        default=[],
        metavar="NAME",
        help="ONNX node names of conv/gemm/matmul layers to keep in float",
    )
    p.add_argument(
        "--precision",
        metavar="RULES",
        help="per-layer precision: NAME=PREC,GLOB=PREC,default=PREC with PREC int8, int16 (16-bit activations "
        "into the layer), fp16 (GPU targets), fp32, w8a16/w4a16 (weight-only) or a weight scheme below 8 bits "
        "(int7, int4, int2, pow2, ternary, binary, codebook, codebookK; see --weights); an exact ONNX node name wins "
        "over a glob, the last matching glob over earlier ones, both over the default (--bits, --weights); "
        "e.g. conv_12=int16,/blocks.3/*=fp32,default=pow2",
    )
    p.add_argument(
        "--precision-file",
        metavar="FILE",
        help='per-layer precision as JSON {"default": "int8", "layers": {"NAME or GLOB": "fp32"}}, e.g. the '
        "precision.json an automatic search (--max-top1-drop) wrote; --precision rules apply on top",
    )
    p.add_argument("--skip-first", action="store_true", help="keep the first conv/matmul layer in float")
    p.add_argument("--skip-last", action="store_true", help="keep the last conv/matmul layer in float")
    p.add_argument(
        "--input-shape",
        action="append",
        metavar="NAME:DIMS",
        help="concrete shape of a dynamic input, e.g. input:1x3x224x224 (repeatable); -1, ? and named dims "
        "are dynamic, and a dynamic batch alone defaults to 1",
    )
    p.add_argument(
        "--fix-input",
        action="append",
        metavar="NAME=VALUE",
        help="fold an input into the model as a constant, e.g. sr=16000 (NAME=1/2/3 for a vector); an If on it "
        "becomes its taken branch, so the layers inside are quantized; the artifact then has no such input "
        "(repeatable)",
    )
    p.add_argument(
        "--preprocess",
        metavar="SPEC",
        help="image-folder preprocessing: resize=256,crop=224,mean=127,std=128,layout=NCHW (the default)",
    )
    p.add_argument("--max-calib-batches", type=int, help="use at most this many calibration batches")
    p.add_argument(
        "--calib-shifts",
        metavar="SPEC",
        help="calibrate on the data plus one shifted copy of it (each sample under one shift of SPEC, at one "
        "of its severities): 'default' or e.g. 'noise:0.02,0.05;blur:1' (the shifts of verify --shifts); "
        "ranges then cover shifted inputs",
    )
    p.add_argument(
        "--bias-correction",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="correct each layer's bias for the mean output shift its int8 weights cause (default on)",
    )
    p.add_argument(
        "--weight-rounding",
        choices=WEIGHT_ROUNDINGS,
        default="gptq",
        help="how int8 weights are rounded: gptq (default) rounds each layer's weights to minimise its output "
        "error on the calibration data (GPTQ; a --qparams rebuild reads the artifact's rounding.npz), "
        "nearest rounds each weight on its own",
    )
    p.add_argument(
        "--activations",
        choices=["static", "dynamic"],
        default="static",
        help="static (default): activation ranges from calibration data; dynamic: each layer's input is "
        "quantized at run time (int8, one scale per token for a matmul, per tensor for a conv) and its "
        "output stays float, like onnxruntime's quantize_dynamic; needs no calibration data",
    )
    p.add_argument(
        "--weights",
        choices=WEIGHT_SCHEMES,
        default="int8",
        help="the weight scheme of every layer with constant weights that no --precision rule names, with "
        "int8 activations and one scale per output channel: int8 (default); int7 (-63..63, held as int8: "
        "faster on x86 without VNNI, whose vpmaddubsw is exact when no pair of products leaves int16; "
        "depthwise convs, which no dot product computes, keep int8); "
        "int4 (-7..7; matmul layers "
        "become weight-only w4a16 instead: float activations, int4 weights in groups of --group-size input "
        "channels); int2 (-2..1); pow2 (0 and +-2^k, k=0..6: 4 bits); ternary (-a, 0, +a: 2 bits); binary "
        "(-a, +a with a = mean|w|: 1 bit); codebook (--codebook-size int8 centroids by k-means: log2 k bits). "
        "Below 8 bits (int7 aside) the library stores the weights bit-packed at that width (x86 and ARM; CUDA keeps "
        "int8) and unpacks them to int8 for the kernels, so results stay exact and identical across targets",
    )
    p.add_argument(
        "--codebook-size",
        type=int,
        default=DEFAULT_CODEBOOK,
        metavar="K",
        help="centroids of the codebook scheme, a power of two in 2..256 (default 16: 4-bit indices); "
        "--precision also takes codebookK per layer",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=64,
        metavar="N",
        help="input channels per int4 weight scale (w4a16 layers; default 64)",
    )
    p.add_argument(
        "--smooth",
        default="auto",
        metavar="auto|off|ALPHA",
        help="SmoothQuant: move outlier channels of an activation read only by linear layers into their "
        "weights (divisor max|x|^a / max|w|^(1-a)); auto (default) picks alpha per site from calibration "
        "samples and smooths only where that halves the error, ALPHA (e.g. 0.5) smooths every such site",
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="GPU targets: compute the float layers (all of them with --bits 32) in float16",
    )
    p.add_argument(
        "--npu-only",
        action="store_true",
        help="npu targets: fail (exit 2) when Vela would leave any operator to the device's CPU instead of "
        "running it on the NPU",
    )


def config_from_args(args: argparse.Namespace):
    import qcompile as api
    from qcompile.model import parse_fixed_inputs, parse_input_shapes
    from qcompile.precision import PrecisionSpec

    precision = PrecisionSpec.load(args.precision_file) if args.precision_file else PrecisionSpec()
    if args.precision:
        precision = precision.merged(PrecisionSpec.parse(args.precision))

    return api.BuildConfig(
        target=args.target,
        bits=args.bits,
        method=args.method,
        percentile=args.percentile,
        skip=tuple(args.skip),
        skip_first=args.skip_first,
        skip_last=args.skip_last,
        input_shapes=parse_input_shapes(args.input_shape),
        fixed_inputs=parse_fixed_inputs(args.fix_input),
        preprocess=args.preprocess,
        max_calib_batches=args.max_calib_batches,
        bias_correction=args.bias_correction,
        weight_rounding=args.weight_rounding,
        smooth=args.smooth,
        activations=args.activations,
        weights=args.weights,
        group_size=args.group_size,
        codebook_size=args.codebook_size,
        float_dtype="float16" if args.fp16 else "float32",
        precision=precision,
        npu_only=args.npu_only,
        calib_shifts=args.calib_shifts,
    )


def add_thread_pool_option(p) -> None:
    p.add_argument(
        "--thread-pool",
        choices=sorted(POOLS),
        help="how the library's parallel kernels are run: shared (default; qcompile's own launcher, linked "
        "into the library: workers spin 100 us after a kernel ($QCOMPILE_POOL_SPIN_US), then sleep, and the "
        "calling thread takes every task no worker "
        "has started, so neither a waking worker nor other busy processes hold a kernel up), tvm (TVM's "
        "pool with sleeping, unpinned workers: a wake-up per kernel) or dedicated (TVM's pool, spinning "
        "and pinned: many times slower when other processes compete for the cores); also "
        f"${THREAD_POOL_ENV}",
    )
