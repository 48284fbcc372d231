"""Quantization-aware training (QAT) end to end: fine-tune the Fashion CNN with fake quantization, starting
from its float weights; export QDQ ONNX; compile with qcompile with no calibration data (the trained
scales are the model's own); verify on the 2000 held-out Fashion-MNIST test images. Then the same at
4-bit weights, beside post-training quantization (PTQ) of the same weights.

Fake quantization is PyTorch's own `torch.fake_quantize_per_channel_affine` (weights: symmetric, per
output channel) and `torch.fake_quantize_per_tensor_affine` (activations: uint8, ranges tracked while
training), with straight-through gradients; `torch.onnx.export` writes each as a QuantizeLinear ->
DequantizeLinear pair, the QDQ format onnxruntime's quantizer also writes. Batch norms are folded into
their convs before training (the usual QAT practice), so every layer's trained integers reach the
library unchanged.

Run it from the repository root:  python tutorials/04_quantization_aware_training.py
(about two minutes on 2 cores; --train N and --epochs E trade time for accuracy)."""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
from pathlib import Path

import numpy as np

import qcompile

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fashion_cnn"


def float_model():
    """The example's network with the float weights of examples/fashion_cnn/model.onnx."""
    import onnx
    import torch
    from onnx import numpy_helper

    spec = importlib.util.spec_from_file_location("fashion_train", EXAMPLE / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    model = train.build_model()
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(EXAMPLE / "model.onnx")).graph.initializer}
    state = {k: torch.from_numpy(weights[k].copy()) for k in model.state_dict() if k in weights}
    missing = [k for k in model.state_dict() if k not in state and not k.endswith("num_batches_tracked")]
    assert not missing, f"model.onnx lacks {missing[:3]}"
    model.load_state_dict(state, strict=False)
    return model.eval()


def make_qat_model(model, weight_bits: int, scheme: str | None = None):
    """The network with batch norms folded into the convs and fake quantization at every layer's
    weights and at every activation the integer library stores. `scheme` (int4, int2, pow2, ternary,
    binary, codebookK): the weights are fake-quantized by qcompile's own quantizer for that scheme
    (per output channel; straight-through gradients), so training sees exactly the integers the
    library will hold."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class ActQuant(nn.Module):
        """uint8, per tensor; the range is a running min/max while training, frozen for export."""

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("lo", torch.tensor(0.0))
            self.register_buffer("hi", torch.tensor(0.0))
            self.seen = False

        def forward(self, x):
            if self.training:
                lo, hi = x.detach().min().clamp(max=0.0), x.detach().max().clamp(min=0.0)
                if not self.seen:
                    self.lo.copy_(lo), self.hi.copy_(hi)
                    self.seen = True
                else:
                    self.lo.mul_(0.9).add_(0.1 * lo), self.hi.mul_(0.9).add_(0.1 * hi)
            scale = max(float(self.hi - self.lo) / 255.0, 1e-8)
            zero = int(min(max(round(-float(self.lo) / scale), 0), 255))
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)

    class QLayer(nn.Module):
        """A conv (batch norm folded in) or linear layer with symmetric per-channel fake-quantized weights."""

        def __init__(self, layer, bn=None) -> None:
            super().__init__()
            w = layer.weight.detach().clone()
            b = layer.bias.detach().clone() if layer.bias is not None else torch.zeros(w.shape[0])
            if bn is not None:
                k = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
                w = w * k.reshape(-1, *([1] * (w.dim() - 1)))
                b = bn.bias.detach() + (b - bn.running_mean) * k
            self.weight, self.bias = nn.Parameter(w), nn.Parameter(b)
            self.conv = isinstance(layer, nn.Conv2d)
            self.padding = layer.padding if self.conv else None
            self.qmax = 2 ** (weight_bits - 1) - 1

        def quantized_weight(self):
            w = self.weight
            zero = torch.zeros(w.shape[0], dtype=torch.int32)
            if scheme is not None:
                q, scale = scheme_integers(w.detach().numpy(), scheme)
                wq = torch.from_numpy(q.astype(np.float32)) * torch.from_numpy(scale.astype(np.float32)).reshape(
                    -1, *([1] * (w.dim() - 1))
                )
                return w + (wq - w).detach(), torch.from_numpy(scale.astype(np.float32)), zero
            scale = (w.detach().abs().reshape(w.shape[0], -1).amax(1) / self.qmax).clamp(min=1e-8)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -self.qmax, self.qmax), scale, zero

        def freeze(self) -> None:
            """Before export: the trained integers times their scales, as constants. ONNX's pair is
            int8, and the integers lie inside it (|q| <= qmax), so the exported pair returns them exactly."""
            with torch.no_grad():
                w, scale, zero = self.quantized_weight()
            self.frozen = (w, scale, zero)

        def forward(self, x):
            if torch.onnx.is_in_onnx_export():
                w, scale, zero = self.frozen
                w = torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -128, 127)
            else:
                w = self.quantized_weight()[0]
            if self.conv:
                return F.conv2d(x, w, self.bias, padding=self.padding)
            return F.linear(x, w, self.bias)

    class QATFashion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            m = model
            self.q_in = ActQuant()
            self.c1, self.c2 = QLayer(m.stem[0][0], m.stem[0][1]), QLayer(m.stem[1][0], m.stem[1][1])
            self.c3, self.res = QLayer(m.conv3[0], m.conv3[1]), QLayer(m.res_conv, m.res_bn)
            self.c5, self.fc = QLayer(m.conv5[0], m.conv5[1]), QLayer(m.fc)
            self.q = nn.ModuleList(ActQuant() for _ in range(7))

        def forward(self, x):
            q = self.q
            x = self.q_in(x)
            x = q[0](torch.relu(self.c1(x)))
            x = F.max_pool2d(q[1](torch.relu(self.c2(x))), 2)
            x = q[2](torch.relu(self.c3(x)))
            x = q[4](torch.relu(x + q[3](self.res(x))))  # the residual add, as the integer library adds
            x = q[5](torch.relu(self.c5(F.max_pool2d(x, 2))))
            x = q[6](torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
            return self.fc(x)

    return QATFashion()


def scheme_integers(weight: np.ndarray, scheme: str) -> tuple[np.ndarray, np.ndarray]:
    """qcompile's integers and per-channel scales for `weight` (output channels first) under `scheme`."""
    from qcompile.passes.rules.weight_levels import quantize_levels
    from qcompile.passes.scheme import weight_scheme

    return quantize_levels(weight.astype(np.float64), 0, weight_scheme(scheme))


def fine_tune(qat, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-4):
    """A short fine-tune at a small learning rate, with the float training's random flips: the weights
    move only as far as the rounding needs."""
    import torch

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(qat.parameters(), lr=lr, weight_decay=1e-5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    qat.train()
    for _ in range(epochs):
        for idx in np.array_split(rng.permutation(len(x)), max(len(x) // 128, 1)):
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            xb = torch.where(flip[:, None, None, None], xt[idx].flip(-1), xt[idx])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(qat(xb), yt[idx]).backward()
            opt.step()
    return qat.eval()


def observe(qat, x: np.ndarray):
    """PTQ: no training, only the activation ranges from calibration images (the BN running stats stay)."""
    import torch

    qat.train()
    with torch.no_grad():
        for i in range(0, len(x), 32):
            qat(torch.from_numpy(x[i : i + 32]))
    return qat.eval()


def export_qdq(qat, path: Path) -> Path:
    import warnings

    for layer in qat.modules():
        if hasattr(layer, "freeze"):
            layer.freeze()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python scalars (the frozen ranges)
        _export(qat, path)
    return path


def _export(qat, path: Path) -> None:
    import torch

    torch.onnx.export(
        qat,
        (torch.zeros(1, 1, 28, 28),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
    )


def compile_and_verify(model: Path, out: Path, test: Path) -> dict:
    result = qcompile.build(model, out)  # no calib: the Q/DQ pairs carry every scale
    return qcompile.verify(result.artifact, model, test)


def main(argv: list[str] | None = None) -> None:
    import torch

    from qcompile.zoo.fashion_mnist import load_fashion_mnist, normalize_fashion

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=12000, help="training images for fine-tuning")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="qcompile-qat-"))
    images, labels = load_fashion_mnist("train")
    x_train, y_train = normalize_fashion(images[: args.train]), labels[: args.train].astype(np.int64)
    images, labels = load_fashion_mnist("test")
    test = work / "test2000.npz"
    np.savez(test, input=normalize_fashion(images[-2000:]), labels=labels[-2000:].astype(np.int64))

    # fp32 and PTQ int8: qcompile's own calibration of the float model
    ptq8 = qcompile.build(EXAMPLE / "model.onnx", work / "ptq8", calib=EXAMPLE / "calib.npz")
    m = qcompile.verify(ptq8.artifact, EXAMPLE / "model.onnx", test)
    fp32, rows = m["top1_fp32"], [("PTQ int8 (qcompile calibration)", m["top1_int8"])]
    calib = np.load(EXAMPLE / "calib.npz")["input"]
    for bits in (8, 4):
        if bits == 4:  # PTQ at 4-bit weights: the same fake-quantized graph, ranges observed, no training
            ptq = observe(make_qat_model(float_model(), bits), calib)
            m = compile_and_verify(export_qdq(ptq, work / "ptq4.onnx"), work / "ptq4", test)
            rows.append(("PTQ 4-bit weights (no training)", m["top1_int8"]))
        qat = fine_tune(make_qat_model(float_model(), bits), x_train, y_train, args.epochs)
        m = compile_and_verify(export_qdq(qat, work / f"qat{bits}.onnx"), work / f"qat{bits}", test)
        rows.append((f"QAT {'int8' if bits == 8 else '4-bit weights'} ({args.train} images)", m["top1_int8"]))
        assert m["vs_qdq_model"]["logits"]["top1_agreement"] >= 99.0, "the library disagrees with its QDQ model"

    print(f"Fashion-MNIST, 2000 held-out test images; fp32 top-1 {fp32:.2f}%")
    for name, top1 in rows:
        print(f"  {name:<40} top-1 {top1:6.2f}%  ({top1 - fp32:+.2f} points vs fp32)")


if __name__ == "__main__":
    main()
