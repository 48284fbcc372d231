import numpy as np
import onnxruntime as ort
import tvm
from tvm import relax

from qcompile.calibration.collect import compile_host, run_vm
from qcompile.config import BuildConfig
from qcompile.passes.rewrite import main_bindings, op_name
from qcompile.pipeline import canonicalize_stage, load_stage
from tests.support.synthetic import random_inputs


def _ops(mod: tvm.IRModule) -> list[str]:
    return [op_name(b.value) or type(b.value).__name__ for b in main_bindings(mod["main"])]


def test_batchnorm_and_bias_fold_into_conv_and_clip_is_one_op(block):
    canon = canonicalize_stage(load_stage(block["model"], BuildConfig()))
    relax.analysis.well_formed(canon.mod)  # raises on the first violation
    ops = _ops(canon.mod)
    assert "relax.nn.batch_norm" not in ops and "relax.subtract" not in ops and "relax.divide" not in ops
    assert "relax.call_tir" not in ops  # the frontend's topi maximum/minimum became R.clip
    assert ops.count("relax.clip") == 1
    assert ops.count("relax.nn.conv2d") == 2 and ops.count("relax.matmul") == 1
    # conv -> one bias add -> relu: BN's four affine steps and the conv bias are one add now
    first = ops.index("relax.nn.conv2d")
    assert ops[first + 1 : first + 3] == ["relax.add", "relax.nn.relu"]


def test_every_clip_becomes_one_op_whatever_its_primfunc_is_called(tmp_path):
    from tests.support.synthetic import relu6_stack_model

    model = relu6_stack_model(tmp_path / "relu6.onnx")
    imported = load_stage(model, BuildConfig())
    canon = canonicalize_stage(imported)
    ops = _ops(canon.mod)
    assert "relax.call_tir" not in ops and ops.count("relax.clip") == 2, ops
    vm = compile_host(canon.mod)
    x = random_inputs(1, seed=5)
    ref = ort.InferenceSession(str(model)).run(None, {"input": x})[0]
    np.testing.assert_allclose(run_vm(vm, {"input": x}, ["input"])[0], ref, rtol=1e-4, atol=1e-4)


def test_layers_are_named_after_onnx_nodes(block):
    canon = canonicalize_stage(load_stage(block["model"], BuildConfig()))
    assert canon.layer_names == ["conv1", "dw", "fc"]
    names = [b.var.name for b in main_bindings(canon.mod["main"])]
    assert len(names) == len(set(names)), "binding names must be unique: the plan refers to tensors by name"


def test_canonical_module_computes_what_onnxruntime_computes(block):
    canon = canonicalize_stage(load_stage(block["model"], BuildConfig()))
    vm = compile_host(canon.mod)
    session = ort.InferenceSession(str(block["model"]))
    for x in random_inputs(4, seed=7):
        batch = {"input": x[None]}
        ref = session.run(None, batch)[0]
        got = run_vm(vm, batch, ["input"])[0]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_erf_gelu_becomes_one_gelu():
    from tvm.script import relax as R

    from qcompile.passes.canonicalize import FuseErfGelu

    @tvm.script.ir_module
    class Before:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                a = R.divide(x, R.const(1.4142135381698608, "float32"))
                b = R.erf(a)
                c = R.add(b, R.const(1.0, "float32"))
                d = R.multiply(R.const(0.5, "float32"), c)
                y = R.multiply(x, d)
                R.output(y)
            return y

    @tvm.script.ir_module
    class Expected:
        @R.function
        def main(x: R.Tensor((2, 8), "float32")) -> R.Tensor((2, 8), "float32"):
            with R.dataflow():
                y = R.nn.gelu(x)
                R.output(y)
            return y

    after = relax.transform.CanonicalizeBindings()(FuseErfGelu()(Before))  # the replay's output alias folds away
    relax.analysis.well_formed(after)
    tvm.ir.assert_structural_equal(after, Expected)


def test_half_x_times_one_plus_erf_is_gelu_too_and_other_constants_are_not():
    from tvm.script import relax as R

    from qcompile.passes.canonicalize import FuseErfGelu

    @tvm.script.ir_module
    class HalfFirst:
        @R.function
        def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
            with R.dataflow():
                h = R.multiply(x, R.const(0.5, "float32"))
                a = R.multiply(x, R.const(0.7071067690849304, "float32"))
                b = R.erf(a)
                c = R.add(R.const(1.0, "float32"), b)
                y = R.multiply(h, c)
                R.output(y)
            return y

    @tvm.script.ir_module
    class NotGelu:  # x / 2 inside the erf: not GELU, left alone
        @R.function
        def main(x: R.Tensor((4,), "float32")) -> R.Tensor((4,), "float32"):
            with R.dataflow():
                a = R.divide(x, R.const(2.0, "float32"))
                b = R.erf(a)
                c = R.add(b, R.const(1.0, "float32"))
                d = R.multiply(R.const(0.5, "float32"), c)
                y = R.multiply(x, d)
                R.output(y)
            return y

    assert [op for op in _ops(FuseErfGelu()(HalfFirst)) if "Var" not in op] == ["relax.nn.gelu"]
    tvm.ir.assert_structural_equal(FuseErfGelu()(NotGelu), NotGelu)
