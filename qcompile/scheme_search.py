"""Weight schemes per layer, chosen under an accuracy budget and a size limit (build --eval with
--max-size-mb or --schemes), and the per-scheme sensitivity table (analyze --schemes).

What a scheme does to a layer is measured on one compiled probe: the float model with every conv/matmul
weight lifted into an input, so any mix of per-layer schemes runs by feeding each layer its weights
dequantized (integers x scales, exactly the integers realize makes without GPTQ). The search then:
  1. measures each (layer, scheme) alone, all other layers int8 weights, on --probe-samples samples:
     the output noise it adds and the bytes it saves;
  2. orders the moves from int8 towards fewer bits by noise added per byte saved (per layer along the
     lower convex hull of its schemes, so a layer's moves come in order);
  3. takes the longest prefix of that order whose configuration meets the budget on all of --eval
     (binary search), which is the smallest model the probe finds within the budget;
  4. builds the real library with that map (--precision rules, saved as precision.json) and verifies it;
     while it misses the budget (the probe keeps activations float), a quarter of the moves goes back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from qcompile.metrics import classification_metrics, ratio_db
from qcompile.mixed import MAX_SQNR_DB, Budget
from qcompile.passes.scheme import WEIGHT_INT8, QuantSpec, stored_bytes, weight_scheme
from qcompile.precision import SEARCH_SCHEMES
from qcompile.progress import progress

__all__ = ["SEARCH_SCHEMES", "WeightProbe", "parse_schemes", "scheme_sensitivity", "search_schemes"]


def parse_schemes(text: str) -> tuple[str, ...]:
    """`int8,int4,pow2,...` (the --schemes flag): int8 always first, each name checked."""
    from qcompile.errors import InputError

    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        try:
            weight_scheme(name)
        except ValueError:
            raise InputError(
                f"--schemes: {name!r} is not a weight scheme (int8, int4, int2, pow2, ternary, binary, codebookK)"
            ) from None
    return ("int8", *dict.fromkeys(n for n in names if n != "int8"))


class WeightProbe:
    """The float model with its conv/matmul weights as inputs, compiled once for this machine."""

    def __init__(self, canon, layers, data, input_names: list[str], rounding=None) -> None:
        from qcompile.calibration.collect import compile_host_module
        from qcompile.passes.rewrite import const_value, is_const, main_bindings, op_name
        from qcompile.passes.rules import OP_RULES
        from qcompile.passes.rules.linear import LinearRule

        self.data = data
        self.input_names = input_names
        self.rounding = rounding  # the build's WeightRounding: GPTQ where calibration gathered its statistics
        self.calls: dict[str, tuple[object, relax.VarBinding]] = {}
        self.weights: dict[str, tuple[np.ndarray, int]] = {}
        wanted = set(layers)
        for b in main_bindings(canon.mod["main"]):
            layer = canon.layer_of.get(b.var.name)
            rule = OP_RULES.find(op_name(b.value) or "")
            if layer not in wanted or layer in self.weights or not isinstance(rule, LinearRule):
                continue
            if not is_const(b.value.args[1]) or not rule.supported(b):
                continue
            self.weights[layer] = (const_value(b.value.args[1]), rule.weight_axis)
            self.calls[layer] = (rule, b)
        # The weights become inputs after lowering, where the kernels hold them in their own layout (so the
        # probe runs qcompile's float kernels, not TVM's unscheduled generic conv): each layer's constant
        # is found there by its value in one of the layouts lowering gives float weights.
        table: dict[tuple[tuple[int, ...], bytes], tuple[str, int]] = {}
        for layer, (w, _) in self.weights.items():
            for i, form in enumerate(_layouts(w)):
                table.setdefault((form.shape, form.tobytes()), (layer, i))
        self.lifted: list[tuple[str, int]] = []
        self.vm = compile_host_module(canon.mod, lambda lowered: _lift_weights(lowered, table, self.lifted))
        self.layers = tuple(layer for layer, _ in self.lifted)
        self.form = dict(self.lifted)  # layer -> index of the layout its kernel reads
        self._tensors: dict[tuple[str, str | None], tvm.runtime.Tensor] = {}
        self.reference = self.outputs({})

    def weight(self, layer: str, scheme: str | None) -> tvm.runtime.Tensor:
        """`layer`'s weights under `scheme` (None: float), dequantized, as the probe's input."""
        key = (layer, scheme)
        if key not in self._tensors:
            from qcompile.passes.rules.linear import quantize_weight

            w, axis = self.weights[layer]
            value = w
            if scheme is not None:
                spec = weight_scheme(scheme)
                q, scale = quantize_weight(w, axis, 0.0, spec, layer)
                q = self._rounded(layer, spec, q, scale)
                shape = [1] * w.ndim
                shape[axis] = -1
                value = (q.astype(np.float64) * scale.reshape(shape)).astype(w.dtype)
            form = self.form[layer]
            self._tensors[key] = tvm.runtime.tensor(np.ascontiguousarray(_layouts(value)[form]))
        return self._tensors[key]

    def _rounded(self, layer: str, spec: QuantSpec, q: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """GPTQ's integers for the layer where the build has its input statistics (as realize rounds)."""
        from qcompile.passes.rules.weight_levels import levels_of

        rule, binding = self.calls[layer]
        if self.rounding is None or binding.var.name not in self.rounding.hessians:
            return q
        w = self.weights[layer][0]
        groups = rule.row_groups(binding.value, w.shape[rule.weight_axis])
        levels = None if spec.levels == "uniform" else levels_of(spec, q)
        rows = self.rounding.round(binding.var.name, rule.rows(w), scale, groups, spec.qmax, None, spec.qmin, levels)
        self.rounding.used.pop(binding.var.name, None)
        return rule.from_rows(rows, w.shape).astype(np.int8)

    def outputs(self, config: dict[str, str], limit: int | None = None) -> np.ndarray:
        """The first output over the data with each layer's weights under `config` (missing: float)."""
        from qcompile.calibration.collect import run_vm

        extra = [self.weight(layer, config.get(layer)) for layer in self.layers]
        return np.concatenate([run_vm(self.vm, b, self.input_names, extra)[0] for b in self.data.batches(limit)])

    def metrics(self, config: dict[str, str], limit: int | None = None) -> dict:
        out = self.outputs(config, limit)
        ref = self.reference[: len(out)].astype(np.float64)
        noise = float(np.sum((ref - out.astype(np.float64)) ** 2))
        m = {"sqnr_db": round(min(ratio_db(float(np.sum(ref**2)), noise), MAX_SQNR_DB), 3), "noise": noise}
        if out.ndim == 2 and out.shape[1] > 1:
            labels = None if self.data.labels is None else self.data.labels[: len(out)]
            m.update(classification_metrics(self.reference[: len(out)], out, labels))
        return m

    def stored(self, layer: str, scheme: str) -> int:
        w, axis = self.weights[layer]
        return stored_bytes(WEIGHT_INT8 if scheme == "int8" else weight_scheme(scheme), w.shape, axis)

    def total_bytes(self, config: dict[str, str]) -> int:
        return sum(self.stored(layer, config.get(layer, "int8")) for layer in self.layers)


def _layouts(w: np.ndarray) -> list[np.ndarray]:
    """The forms a float conv/matmul weight takes in the lowered module: as it is ([K, N] for a dense),
    HWIO (channels-last conv) and HWO (depthwise: one input channel per group), and the dense and conv
    forms with their output channels padded to whole vectors (pack_kernels.float_padded: a 10-class
    head)."""
    from qcompile.passes.pack_kernels import float_padded

    if w.ndim != 4:
        return [w, float_padded(w, 1)]
    hwio = np.ascontiguousarray(w.transpose(2, 3, 1, 0))
    return [w, hwio, np.ascontiguousarray(hwio[:, :, 0, :]), float_padded(hwio, 3)]


def _lift_weights(lowered: tvm.IRModule, table: dict, lifted: list) -> tvm.IRModule:
    """`lowered` with every kernel argument that is one of `table`'s weights turned into a parameter of
    main (appended to `lifted` as (layer, layout index), in parameter order)."""
    from qcompile.passes.rewrite import const_value, copy_binding, is_const, replay, substitute

    params: list[relax.Var] = []
    seen: dict[str, relax.Var] = {}

    def lift(arg: relax.Expr) -> relax.Expr:
        if not is_const(arg) or str(arg.ty.dtype) != "float32":
            return arg
        value = const_value(arg)
        found = table.get((value.shape, value.tobytes()))
        if found is None:
            return arg
        if found[0] not in seen:
            seen[found[0]] = relax.Var(f"weight_{len(params)}", relax.TensorType(value.shape, "float32"))
            params.append(seen[found[0]])
            lifted.append(found)
        return seen[found[0]]

    def step(bb: relax.BlockBuilder, env, binding: relax.VarBinding) -> None:
        call = binding.value
        if not (isinstance(call, relax.Call) and len(call.args) == 2 and isinstance(call.args[1], relax.Tuple)):
            copy_binding(bb, env, binding)
            return
        fields = [lift(substitute(f, env)) for f in call.args[1].fields]
        new = relax.Call(call.op, [call.args[0], relax.Tuple(fields)], call.attrs, call.ty_args)
        env[binding.var] = bb.emit(new, binding.var.name)

    # the parameters are only known once every binding is seen: a first pass finds them
    for binding in lowered["main"].body.blocks[0].bindings:
        call = binding.value
        if isinstance(call, relax.Call) and len(call.args) == 2 and isinstance(call.args[1], relax.Tuple):
            for f in call.args[1].fields:
                lift(f)
    return replay(lowered, step, extra_params=params)


def scheme_sensitivity(probe: WeightProbe, schemes: tuple[str, ...], limit: int | None) -> list[dict]:
    """Each (layer, scheme) alone, every other layer int8: output SQNR and agreement vs fp32, bytes."""
    int8 = dict.fromkeys(probe.layers, "int8")
    base = probe.metrics(int8, limit)
    rows = []
    pairs = [(layer, s) for layer in probe.layers for s in schemes if s != "int8"]
    for layer, scheme in progress(pairs, desc="scheme sensitivity"):
        m = probe.metrics({**int8, layer: scheme}, limit)
        row = {
            "layer": layer,
            "scheme": scheme,
            "bits": weight_scheme(scheme).bits,
            "weight_bytes": probe.stored(layer, scheme),
            "int8_weight_bytes": probe.stored(layer, "int8"),
            "sqnr_db": m["sqnr_db"],
            "noise_added": max(m["noise"] - base["noise"], 0.0),
        }
        if "top1_agreement" in m:
            row["top1_agreement"] = m["top1_agreement"]
        rows.append(row)
    return rows


def _moves(probe: WeightProbe, rows: list[dict]) -> list[tuple[float, str, str]]:
    """(noise per byte saved, layer, scheme), in order: each layer walks the lower convex hull of its
    schemes' (bytes saved, noise added) from int8."""
    by_layer: dict[str, list[tuple[int, float, str]]] = {}
    for r in rows:
        saved = r["int8_weight_bytes"] - r["weight_bytes"]
        if saved > 0:
            by_layer.setdefault(r["layer"], []).append((saved, r["noise_added"], r["scheme"]))
    moves = []
    for layer, options in by_layer.items():
        at_saved, at_noise = 0, 0.0
        while True:
            ahead = [o for o in options if o[0] > at_saved]
            if not ahead:
                break
            slope, nxt = min(((max(o[1] - at_noise, 0.0) / (o[0] - at_saved), -o[0]), o) for o in ahead)
            moves.append((slope[0], layer, nxt[2]))
            at_saved, at_noise = nxt[0], max(nxt[1], at_noise)
    # stable: a layer's later moves never sort before its earlier ones (their slopes do not fall)
    return sorted(moves, key=lambda m: m[0])


def config_of(moves: list[tuple[float, str, str]], count: int, layers: tuple[str, ...]) -> dict[str, str]:
    config = dict.fromkeys(layers, "int8")
    for _, layer, scheme in moves[:count]:
        config[layer] = scheme
    return config


@dataclass
class SchemeSearchResult:
    config: dict[str, str]
    moves: int
    metrics: dict
    weight_bytes: int
    int8_weight_bytes: int
    met: bool
    size_met: bool
    seconds: float
    sensitivity: list[dict]
    evaluated: list[dict] = field(default_factory=list)
    order: list[tuple[float, str, str]] = field(default_factory=list)  # the moves, best first

    def to_json(self, budget: Budget, max_bytes: int | None) -> dict:
        return {
            "budget": budget.describe(),
            "max_weight_bytes": max_bytes,
            "met_on_probe": self.met,
            "size_met": self.size_met,
            "layers": {k: v for k, v in self.config.items() if v != "int8"},
            "weight_bytes": self.weight_bytes,
            "int8_weight_bytes": self.int8_weight_bytes,
            "metrics_on_probe": {k: v for k, v in self.metrics.items() if k != "noise"},
            "seconds": round(self.seconds, 1),
            "evaluated": self.evaluated,
            "sensitivity": self.sensitivity,
        }


def search_schemes(
    probe: WeightProbe,
    budget: Budget,
    schemes: tuple[str, ...],
    max_bytes: int | None,
    probe_samples: int,
    log=None,
) -> SchemeSearchResult:
    log = log or (lambda line: print(line, flush=True))
    started = time.perf_counter()
    limit = max(1, probe_samples // probe.data.batch)
    rows = scheme_sensitivity(probe, schemes, limit)
    moves = _moves(probe, rows)
    evaluated: list[dict] = []
    memo: dict[int, dict] = {}

    def evaluate(count: int) -> dict:
        if count not in memo:
            config = config_of(moves, count, probe.layers)
            m = probe.metrics(config)
            size = probe.total_bytes(config)
            met = budget.met(m)
            evaluated.append({"moves": count, "weight_bytes": size, "value": round(budget.value(m), 4), "met": met})
            log(f"  {count} of {len(moves)} scheme moves: {size / 1e6:.3f} MB of weights -> {budget.value(m):.3f}")
            memo[count] = m
        return memo[count]

    int8_bytes = probe.total_bytes(dict.fromkeys(probe.layers, "int8"))
    lo = 0
    if not budget.met(evaluate(0)):
        best = 0
    else:
        hi = len(moves) + 1  # lo meets the budget; hi (past the end) is taken not to
        if moves and budget.met(evaluate(len(moves))):
            lo = hi = len(moves)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if budget.met(evaluate(mid)):
                lo = mid
            else:
                hi = mid
        best = lo
    config = config_of(moves, best, probe.layers)
    size = probe.total_bytes(config)
    return SchemeSearchResult(
        config=config,
        moves=best,
        metrics=evaluate(best),
        weight_bytes=size,
        int8_weight_bytes=int8_bytes,
        met=budget.met(evaluate(best)),
        size_met=max_bytes is None or size <= max_bytes,
        seconds=time.perf_counter() - started,
        sensitivity=rows,
        evaluated=evaluated,
        order=moves,
    )
