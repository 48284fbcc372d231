"""Train a small Fashion-MNIST CNN and export it as qcompile's fast, real-data CI model.

The graph deliberately exercises conv, batchnorm, relu, maxpool, a residual add, global average pool and gemm,
so the quantizer's main rules are all hit by one ~94k-parameter model that trains in minutes on 2 cores.
Run: python examples/fashion_cnn/train.py  (writes model.onnx, calib.npz, eval.npz next to this file).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qcompile.zoo.fashion_mnist import load_fashion_mnist, normalize_fashion

HERE = Path(__file__).resolve().parent
SEED = 0
N_CALIB, N_EVAL = 128, 500


def build_model() -> Any:
    """Conv-BN-ReLU stacks, two max pools, a residual block, GAP, flatten, linear: 93,418 parameters."""
    import torch
    from torch import nn

    def cbr(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class FashionCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(cbr(1, 32), cbr(32, 32), nn.MaxPool2d(2))  # 28 -> 14
            self.conv3 = cbr(32, 64)
            self.res_conv = nn.Conv2d(64, 64, 3, padding=1, bias=False)
            self.res_bn = nn.BatchNorm2d(64)
            self.pool = nn.MaxPool2d(2)  # 14 -> 7
            self.conv5 = cbr(64, 48)
            self.gap = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(48, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv3(self.stem(x))
            x = torch.relu(x + self.res_bn(self.res_conv(x)))  # residual Add
            x = self.conv5(self.pool(x))
            return self.fc(torch.flatten(self.gap(x), 1))

    return FashionCNN()


def train(epochs: int = 3, limit: int | None = None, batch: int = 128) -> Any:
    """Adam + one-cycle LR, random horizontal flips; seeds and 2 threads fixed so runs are reproducible."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    rng = np.random.default_rng(SEED)
    images, labels = load_fashion_mnist("train")
    if limit:
        images, labels = images[:limit], labels[:limit]
    x_all = torch.from_numpy(normalize_fashion(images))
    y_all = torch.from_numpy(labels)
    model = build_model()
    steps = epochs * ((len(x_all) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    loss_fn = torch.nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        t0, total, correct, loss_sum = time.time(), 0, 0, 0.0
        for idx in np.array_split(rng.permutation(len(x_all)), steps // epochs):
            xb, yb = x_all[idx], y_all[idx]
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            opt.zero_grad()
            out = model(xb)
            loss = loss_fn(out, yb)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == yb).sum())
            total += len(idx)
        print(
            f"epoch {epoch + 1}/{epochs}: loss {loss_sum / total:.4f} train acc {correct / total:.4f} "
            f"({time.time() - t0:.0f}s)",
            flush=True,
        )
    return model.eval()


def torch_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        preds = np.concatenate(
            [model(torch.from_numpy(x[i : i + 500])).argmax(1).numpy() for i in range(0, len(x), 500)]
        )
    return float((preds == y).mean())


def export_onnx(model: Any, path: Path) -> None:
    """Legacy export + onnxsim, keeping BatchNormalization and GlobalAveragePool as real nodes.

    The dynamo exporter's optimizer fuses BN into Conv and lowers the pool to ReduceMean; the legacy exporter
    folds BN unless constant folding is off. onnxsim then removes the leftover Identity/shape nodes (which
    Relax would reject) with its own BN fusion skipped, so the compiler's canonicalization sees BN.
    Opset 17, IR version 10 for onnxruntime, weights embedded in one file.
    """
    import tempfile

    import onnx
    import onnxsim
    import torch

    from qcompile.zoo.cache import atomic_write_bytes

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        torch.onnx.export(
            model,
            (torch.zeros(1, 1, 28, 28),),
            raw,
            dynamo=False,
            opset_version=17,
            do_constant_folding=False,
            input_names=["input"],
            output_names=["logits"],
        )
        proto, ok = onnxsim.simplify(onnx.load(str(raw)), skip_fuse_bn=True)
    if not ok:
        raise RuntimeError("onnxsim could not validate the simplified Fashion-MNIST model")
    proto.ir_version = 10
    onnx.checker.check_model(proto, full_check=True)
    atomic_write_bytes(path, proto.SerializeToString())


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Top-1 of the exported file, one sample at a time (the graph has a static batch of 1)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(len(x))])
    return float((logits.argmax(1) == y).mean()), logits


def tvm_logits(path: Path, x: np.ndarray) -> np.ndarray:
    """Run the file through TVM Relax (from_onnx, llvm build, VM) to prove the compiler can import it."""
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(path)), keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    outs = []
    for i in range(len(x)):
        out = vm["main"](tvm.runtime.tensor(x[i : i + 1]))
        outs.append((out[0] if isinstance(out, (list, tuple)) else out).numpy())
    return np.concatenate(outs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None, help="train on the first N images (smoke test)")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model = train(args.epochs, args.limit)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}")

    test_x_u8, test_y = load_fashion_mnist("test")
    test_x = normalize_fashion(test_x_u8)
    print(f"torch test top-1 (10k): {torch_accuracy(model, test_x, test_y):.4f}")

    onnx_path = args.out / "model.onnx"
    export_onnx(model, onnx_path)
    acc, ort_out = ort_accuracy(onnx_path, test_x, test_y)
    print(f"onnxruntime test top-1 (10k): {acc:.4f}")
    import torch

    with torch.no_grad():
        torch_out = model(torch.from_numpy(test_x[:500])).numpy()
    print(f"max |torch - ort| (500 test images): {np.abs(torch_out - ort_out[:500]).max():.3e}")
    tvm_out = tvm_logits(onnx_path, test_x[:50])
    print(f"max |tvm - ort| (50 test images): {np.abs(tvm_out - ort_out[:50]).max():.3e}")

    # Calibration from TRAIN, evaluation from TEST: disjoint by construction. Fixed draws for reproducibility.
    rng = np.random.default_rng(SEED + 1)
    train_x_u8, _ = load_fashion_mnist("train")
    calib_idx = np.sort(rng.choice(len(train_x_u8), N_CALIB, replace=False))
    eval_idx = np.sort(rng.choice(len(test_x_u8), N_EVAL, replace=False))
    np.savez_compressed(args.out / "calib.npz", input=normalize_fashion(train_x_u8[calib_idx]))
    np.savez_compressed(args.out / "eval.npz", input=test_x[eval_idx], labels=test_y[eval_idx])
    print(f"onnxruntime top-1 on eval.npz ({N_EVAL}): {(ort_out[eval_idx].argmax(1) == test_y[eval_idx]).mean():.4f}")
    for name in ("model.onnx", "calib.npz", "eval.npz"):
        print(f"{name}: {os.path.getsize(args.out / name)} bytes")


if __name__ == "__main__":
    main()
