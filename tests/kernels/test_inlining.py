"""The default schedules inline elementwise chains into one expression, but not past
templates.INLINE_LIMIT where a block reads its producer several times: each read would get a copy, and
a chain of such blocks grows exponentially (TFLite's sign-dependent rounding, three deep, once made one
kernel take LLVM over ten minutes)."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from qcompile.kernels import templates
from qcompile.targets import TARGETS

DEPTH = 10  # 3**10 copies of the input expression if every stage were inlined


def _round_half_away(x):
    """A stage that reads its input three times, as TFLite's rounding divide does."""
    return te.compute(
        x.shape,
        lambda i, j: tirx.Select(x[i, j] < 0, -((-x[i, j] + 1) >> 1), (x[i, j] + 1) >> 1) + x[i, j] % 7,
        name="stage",
    )


def _reference(x: np.ndarray) -> np.ndarray:
    for _ in range(DEPTH):
        x = np.where(x < 0, -((-x + 1) >> 1), (x + 1) >> 1) + x % 7
    return x


def test_a_chain_of_blocks_read_several_times_is_not_inlined_exponentially():
    spec = TARGETS.get("x86")
    data = te.placeholder((4, 64), "int64", name="data")
    out = data
    for _ in range(DEPTH):
        out = _round_half_away(out)
    func = templates.schedule_func(te.create_prim_func([data, out]), spec.kernels)
    assert func is not None
    assert templates._nodes(func.body)[0] < 4 * templates.INLINE_LIMIT, "the chain was copied into one expression"
    lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}), target=spec.tvm())
    x = np.random.default_rng(0).integers(-(2**40), 2**40, (4, 64))
    got = tvm.runtime.tensor(np.zeros((4, 64), np.int64))
    lib["main"](tvm.runtime.tensor(x), got)
    np.testing.assert_array_equal(got.numpy(), _reference(x))
