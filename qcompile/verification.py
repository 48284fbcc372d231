"""verify: run the compiled artifact and the float model (onnxruntime) on held-out data, side by side."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qcompile.data import load_data
from qcompile.errors import CalibrationDataError, InputError, VerificationFailed
from qcompile.metrics import classification_metrics, output_metrics
from qcompile.model import load_onnx
from qcompile.progress import progress
from qcompile.runtime import Runner, open_artifact


def onnxruntime_session(model: Path | bytes, threads: int | None = None, as_written: bool = False):
    """An onnxruntime CPU session on a model file, or on serialized ModelProto bytes. `as_written`: no
    graph optimizations, so each QuantizeLinear/DequantizeLinear runs as ONNX defines it. A pre-quantized
    model's reference must be that: onnxruntime's fused QDQ kernels on an AVX2 CPU without VNNI put the
    Fashion CNN's quantize_static model at 13.5 dB from its own unfused run (87.0% vs 93.0% top-1 on
    500 test images: the u8 x s8 pairs' int16 saturation), where a VNNI CPU matched it exactly."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if as_written:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def _as_defined(path: str | Path) -> bytes:
    """A pre-quantized model as ONNX defines it: QLinearConv & co. as DequantizeLinear -> float op ->
    QuantizeLinear (their definition), so onnxruntime runs no fused integer kernel of its own (on AVX2
    without VNNI its u8 x s8 kernels saturate in int16: the Fashion CNN's QOperator model at 13 dB from
    the same model run op by op). Dynamic-quantization chains stay as written."""
    import onnx

    from qcompile.frontend.qoperator import qoperator_to_qdq

    proto = onnx.load(str(path))
    original = proto.SerializeToString()
    count, dynamic = qoperator_to_qdq(proto)
    return proto.SerializeToString() if count and not dynamic else original


def artifact_preprocess(artifact):
    """How the build turned photos into its input (--preprocess): an image folder given to verify is read
    the same way as the calibration folder was."""
    from qcompile.data import ImagePreprocess

    return ImagePreprocess.parse(artifact.manifest["quantization"]["config"].get("preprocess"))


def reference_model(artifact, model_path: str | Path):
    """The float model as this artifact was built from it: the same file (sha256), specialised and folded
    into the same graph (prepared sha256), which verify runs as the reference."""
    built = artifact.manifest["model"]
    fixed = {k: tuple(np.ravel(v).tolist()) for k, v in built.get("fixed_inputs", {}).items()}
    model = load_onnx(model_path, {s.name: s.shape for s in artifact.inputs}, fixed)
    if model.sha256 != built["sha256"]:
        raise InputError(f"{model_path} is not the model this artifact was built from (sha256 differs)")
    if built.get("prepared_sha256") and model.prepared_sha256 != built["prepared_sha256"]:
        raise InputError(
            f"{model_path} folds into a different graph than at build time (prepared sha256 differs; built with "
            f"qcompile {artifact.manifest['versions']['qcompile']}): rebuild the artifact"
        )
    return model


def _is_embedding(output: np.ndarray) -> bool:
    from qcompile.tasks import is_embedding

    return is_embedding(output)


def check_labels(labels: np.ndarray | None, output_shape: list[int], source: str | Path) -> None:
    """Labels are class indices of the first output: 0 <= label < classes."""
    if labels is None:
        return
    if len(output_shape) != 2 or output_shape[1] < 2:
        raise CalibrationDataError(
            f"evaluation data {source} has 'labels', but the model's first output {output_shape} is not class scores"
        )
    classes = output_shape[1]
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        raise CalibrationDataError(
            f"evaluation 'labels' in {source} must be class indices 0..{classes - 1}; "
            f"{bad.size} are not (e.g. {bad[0]})"
        )


def verify(
    artifact_path: str | Path,
    model_path: str | Path,
    data_path: str | Path,
    *,
    max_top1_drop: float | None = None,
    per_layer: bool = False,
    max_samples: int | None = None,
    task: str | None = None,
) -> dict:
    """Metrics of the artifact against the float model; raises VerificationFailed past the bar
    (after computing everything, so the caller can still write the report)."""
    if task is not None:
        from qcompile.tasks import TASKS

        task_metric = TASKS.get(task)  # an unknown task fails before any work
    artifact = open_artifact(artifact_path)
    model = reference_model(artifact, model_path)
    data = load_data(data_path, artifact.inputs, "evaluation", artifact_preprocess(artifact), model.fixed_inputs)
    check_labels(data.labels, artifact.manifest["outputs"][0]["shape"], data_path)
    runner = Runner(artifact)
    npu = _npu_reference(artifact)
    npu_check = {"values": 0, "differing": 0, "max_lsb": 0, "max_abs": 0.0}
    session = onnxruntime_session(model.proto.SerializeToString())
    # a pre-quantized model: its float graph is the reference, the QDQ model as given a second one
    qdq = onnxruntime_session(_as_defined(model.path), as_written=True) if model.graph_quant is not None else None
    qdq_out: list[list[np.ndarray]] = [[] for _ in artifact.output_names]
    limit = None if max_samples is None else max(1, max_samples // data.batch)
    count = data.num_batches if limit is None else min(limit, data.num_batches)
    ref: list[list[np.ndarray]] = [[] for _ in artifact.output_names]
    test: list[list[np.ndarray]] = [[] for _ in artifact.output_names]
    t_ref, t_test = [], []
    for batch in progress(data.batches(limit), total=count, desc="verify"):
        t0 = time.perf_counter()
        r = session.run(list(artifact.output_names), batch)
        t1 = time.perf_counter()
        if npu is not None:  # the NPU's integers (reference kernels), and the library on the same integers
            q, fed = npu(batch)
            t2 = time.perf_counter()
            _add_counts(npu_check, npu.compare(runner(fed), q))
        else:
            q = runner(batch)
            t2 = time.perf_counter()
        t_ref.append(t1 - t0)
        t_test.append(t2 - t1)
        for i in range(len(ref)):
            ref[i].append(np.asarray(r[i]))
            test[i].append(q[i])
        if qdq is not None:
            feeds = {**model.fixed_inputs, **batch}
            for i, value in enumerate(qdq.run(list(artifact.output_names), feeds)):
                qdq_out[i].append(np.asarray(value))
    labels = data.labels[: count * data.batch] if data.labels is not None else None
    report = artifact.read_json("report.json")
    metrics: dict = {
        "samples": count * data.batch,
        "outputs": _scores(artifact.output_names, ref, test, labels),
        "weights_fp32_bytes": report["weights_fp32_bytes"],
        "library_bytes": report["library_bytes"],
        "library_to_fp32_weights": report["library_to_fp32_weights"],
        "artifact_bytes": artifact.total_bytes,
        "artifact_to_fp32_weights": round(artifact.total_bytes / max(report["weights_fp32_bytes"], 1), 4),
        "latency_ms_fp32_onnxruntime": round(1e3 * float(np.median(t_ref)) / data.batch, 3),
        "latency_ms_int8_qcompile": round(1e3 * float(np.median(t_test)) / data.batch, 3),
    }
    if npu is not None:
        metrics["npu"] = {
            "kernels": "TFLite reference integer kernels (LiteRT BUILTIN_REF) on this machine",
            "library_vs_reference": npu_check,
            "identical": npu_check["max_abs"] == 0.0,
            "estimates": artifact.manifest["npu"]["estimates"],
        }
        metrics.pop("latency_ms_int8_qcompile")  # the reference kernels' time says nothing about the NPU's
    if qdq is not None:
        metrics["vs_qdq_model"] = _scores(artifact.output_names, qdq_out, test, None)
    ref_all = [np.concatenate(r) for r in ref]
    test_all = [np.concatenate(q) for q in test]
    if task is None:
        from qcompile.tasks import TASKS, is_embedding

        if data.pair_of is not None or is_embedding(ref_all[0]):  # not logits: score the embeddings
            task, task_metric = "embed", TASKS.get("embed")
    if task is not None:
        pairs = data.take(count).pair_of  # pairs whose match lies beyond --max-samples are dropped
        opts = {"labels": labels, "pair_of": pairs}
        metrics["task"] = {"name": task, **task_metric(ref_all, test_all, opts)}
    first = metrics["outputs"][artifact.output_names[0]]
    for key in ("top1_agreement", "top5_agreement", "top1_fp32", "top1_int8", "top1_drop", "sqnr_db", "cosine"):
        if key in first:
            metrics[key] = first[key]
    if per_layer:
        from qcompile.layerwise import per_layer_sqnr

        metrics["per_layer"] = per_layer_sqnr(artifact, model, data, limit=min(count, 16))
    if max_top1_drop is not None:
        drop = first.get("top1_drop", 100.0 - first.get("top1_agreement", 0.0))
        metrics["top1_drop_checked"] = round(drop, 4)
        metrics["max_top1_drop"] = max_top1_drop
        metrics["passed"] = bool(drop <= max_top1_drop)
        if not metrics["passed"]:
            raise VerificationFailed(f"top-1 drop {drop:.2f} points exceeds --max-top1-drop {max_top1_drop}", metrics)
    return metrics


def _npu_reference(artifact):
    """An npu artifact's reference-kernel runner (None for the other targets)."""
    if "npu" not in artifact.manifest:
        return None
    from qcompile.npu.reference import NpuReference

    return NpuReference(artifact)


def _add_counts(total: dict, part: dict) -> None:
    total["values"] += part["values"]
    total["differing"] += part["differing"]
    total["max_lsb"] = max(total["max_lsb"], part["max_lsb"])
    total["max_abs"] = max(total["max_abs"], part["max_abs"])


def _scores(names, refs: list[list[np.ndarray]], tests: list[list[np.ndarray]], labels) -> dict:
    """Per output: MSE / SQNR / cosine of the library against a reference, and for logits the top-1/5
    agreement (and accuracies, with labels)."""
    out = {}
    for name, r_list, q_list in zip(names, refs, tests):
        r_all, q_all = np.concatenate(r_list), np.concatenate(q_list)
        out[name] = output_metrics(r_all, q_all)
        if r_all.ndim == 2 and r_all.shape[1] > 1 and not _is_embedding(r_all):
            out[name].update(classification_metrics(r_all, q_all, labels))
    return out
