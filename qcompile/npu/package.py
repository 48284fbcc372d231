"""The NPU's files in an artifact: the exported TFLite model before and after Vela, the Vela model as a C
array for firmware, Vela's CSVs, and the manifest's `npu` section that says what each number is."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from qcompile.errors import UnsupportedModelError
from qcompile.npu.export import export_tflite
from qcompile.npu.vela import VelaConfig, c_array, operator_counts, run_vela, vela_version
from qcompile.targets.backend import PackageInputs

TFLITE = "model.tflite"  # qcompile's integer graph as TFLite (what the reference kernels run)
VELA_TFLITE = "model_vela.tflite"  # the same with the Ethos-U command stream (what the firmware loads)
VELA_C_ARRAY = "model_vela.cc"
PROVENANCE = (
    "cycles, inference time, SRAM and flash are Vela's estimates for the configuration above, not "
    "measurements; accuracy was verified on TFLite's reference integer kernels (LiteRT BUILTIN_REF), "
    "which Vela's command stream is designed to match bit for bit, not on Ethos-U hardware"
)


def write_npu_files(folder: Path, inputs: PackageInputs, vela: VelaConfig) -> dict:
    exported = export_tflite(
        inputs.mod, inputs.plan, inputs.qparams, inputs.records, inputs.layer_of, inputs.model.outputs
    )
    (folder / TFLITE).write_bytes(exported.flatbuffer)
    result = run_vela(exported.flatbuffer, vela)
    counts = operator_counts(result.log)
    if counts.get("npu", 0) == 0:
        raise UnsupportedModelError(f"Vela places none of the model's {len(exported.operators)} operators on the NPU")
    if inputs.config.npu_only and counts.get("cpu", 0):
        reasons = "; ".join(on_cpu(result.log)[:2]) or "see Vela's log"
        raise UnsupportedModelError(f"--npu-only: Vela leaves {counts['cpu']} operators on the CPU ({reasons})")
    (folder / VELA_TFLITE).write_bytes(result.optimized)
    (folder / VELA_C_ARRAY).write_text(c_array(result.optimized, "qcompile_model_vela"))
    for name, data in result.files.items():
        (folder / name).write_bytes(data)
    return {
        "vela": {"version": vela_version(), **vela.__dict__},
        "litert": metadata.version("ai-edge-litert"),
        "tflite": TFLITE,
        "vela_tflite": VELA_TFLITE,
        "c_array": VELA_C_ARRAY,
        "inputs": exported.inputs,
        "outputs": exported.outputs,
        "tflite_operators": len(exported.operators),
        "operators": counts,
        "on_cpu": on_cpu(result.log),
        "estimates": estimates(result.summary),
        "provenance": PROVENANCE,
    }


def on_cpu(log: str) -> list[str]:
    """Vela's reason for each operator it leaves on the CPU ("operator (its output tensor): reason", from
    Vela 5's 'Warning (supported operators) operator: X, ofm: 'Y'' and 'Reason: ...' lines)."""
    pattern = r"Warning \(supported operators\) operator: (\S+), ofm: '([^']*)'\s*\nReason: ([^\n]*)"
    return [f"{op} ({ofm}): {reason.strip()}" for op, ofm, reason in re.findall(pattern, log)]


def estimates(summary: dict) -> dict:
    """Vela's summary row in units people read."""

    def number(key: str) -> float:
        try:
            return float(summary.get(key, "nan"))
        except ValueError:
            return float("nan")

    return {
        "inference_ms": round(number("inference_time") * 1e3, 4),
        "inferences_per_second": round(number("inferences_per_second"), 1),
        "cycles": int(number("cycles_total")),
        "npu_cycles": int(number("cycles_npu")),
        "sram_kib": round(number("sram_memory_used"), 2),
        "off_chip_flash_kib": round(number("off_chip_flash_memory_used"), 2),
        "dram_kib": round(number("dram_memory_used"), 2),
        "macs": int(number("nn_macs")),
        "clock_hz": number("core_clock"),
    }


def summary_line(npu: dict) -> str:
    """The build's one line about the NPU: where the operators run, and Vela's estimates."""
    ops, est = npu["operators"], npu["estimates"]
    cpu = f"{ops.get('cpu', 0)} on the CPU" + (f" ({'; '.join(npu['on_cpu'][:2])})" if npu["on_cpu"] else "")
    return (
        f"NPU {npu['vela']['accelerator']}: {npu['tflite_operators']} TFLite operators, Vela runs "
        f"{ops.get('npu', 0)} NPU operators and {cpu}; Vela's estimate {est['inference_ms']} ms per inference "
        f"({est['cycles']} cycles at {est['clock_hz'] / 1e6:g} MHz), {est['sram_kib']} KiB SRAM, "
        + (f"{est['dram_kib']} KiB DRAM" if est["dram_kib"] else f"{est['off_chip_flash_kib']} KiB flash")
    )
