"""`qcompile inspect ARTIFACT`: what a built artifact holds and where it runs, from its own files (the
manifest, report and, for an npu target, Vela's per-layer estimates)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from qcompile.runtime import open_artifact


def inspect_artifact(path: str | Path) -> dict:
    art = open_artifact(path)  # verifies every file's sha256 first
    manifest, report = art.manifest, art.read_json("report.json")
    info = {
        "artifact": str(art.path),
        "target": manifest["target"]["name"],
        "inputs": manifest["inputs"],
        "outputs": manifest["outputs"],
        "integer_layers": report["quantized_layers"],
        "float_layers": report["float_layers"],
        "artifact_bytes": art.total_bytes,
        "versions": manifest["versions"],
    }
    npu = manifest.get("npu")
    if npu is not None:
        layers = []
        if "vela_per_layer.csv" in manifest["files"]:
            rows = csv.DictReader(io.StringIO(art.file("vela_per_layer.csv").read_text()))
            layers = [
                {
                    "operator": row["Original Operator"],
                    "runs_on": row["Target"],
                    "cycles": int(float(row["Op Cycles"] or 0)),
                    "cycles_percent": round(float(row["Network% (cycles)"] or 0), 1),
                    "macs": int(float(row["MAC Count"] or 0)),
                    "tensor": row["Name"],
                }
                for row in rows
            ]
        info["npu"] = {**npu, "layers": layers}
    return info


def format_artifact(info: dict) -> str:
    lines = [f"artifact: {info['artifact']} (target {info['target']}, qcompile {info['versions']['qcompile']})"]
    for i in info["inputs"]:
        lines.append(f"input  {i['name']}: {i['dtype']} {i['shape']}")
    for o in info["outputs"]:
        lines.append(f"output {o['name']}: {o.get('dtype', 'float32')} {o['shape']}")
    lines.append(f"{info['integer_layers']} integer layers, {len(info['float_layers'])} float")
    npu = info.get("npu")
    if npu is not None:
        from qcompile.npu.package import summary_line

        lines.append(summary_line(npu))
        for io_ in npu["inputs"] + npu["outputs"]:
            lines.append(
                f"  TFLite {io_['name']}: {io_['dtype']} {io_['shape']} ({io_['layout']}), "
                f"scale {io_['scale']:.6g}, zero point {io_['zero_point']}"
            )
        for reason in npu["on_cpu"]:
            lines.append(f"  on the CPU: {reason}")
        if npu["layers"]:
            lines.append("  Vela's per-operator estimate:  runs on    cycles    share  operator  (output tensor)")
            for row in npu["layers"]:
                lines.append(
                    f"    {row['runs_on']:>28}  {row['cycles']:>8}  {row['cycles_percent']:>6.1f}%  "
                    f"{row['operator']}  ({row['tensor']})"
                )
        lines.append(f"  {npu['provenance']}")
    return "\n".join(lines)
