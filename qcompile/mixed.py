"""Mixed precision: per-layer sensitivity and the search for the fewest, cheapest float layers that
bring the integer model within an accuracy budget.

Everything is measured on one compiled switchable module (passes/switch.py): every quantized layer runs
integer or float as a run-time flag vector says, so a configuration costs one pass over the data, not a
compile. The reference is the float model compiled by TVM for this host."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import tvm

from qcompile.calibration.collect import compile_host, run_vm
from qcompile.data import Dataset
from qcompile.errors import InputError
from qcompile.metrics import classification_metrics, ratio_db, topk
from qcompile.passes.plan import QuantPlan
from qcompile.passes.realize import Calibration
from qcompile.passes.rewrite import main_bindings, op_name
from qcompile.passes.switch import PrecisionSwitch
from qcompile.progress import progress


@dataclass(frozen=True)
class LayerCost:
    """Multiply-accumulates and weight count of one conv/matmul layer (batch 1)."""

    macs: int
    weights: int


def layer_costs(mod, layer_of: dict[str, str]) -> dict[str, LayerCost]:
    costs = {}
    for b in main_bindings(mod["main"]):
        name = layer_of.get(b.var.name)
        if name is None or op_name(b.value) not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        weight = b.value.args[1]
        shape = [int(d) for d in weight.ty.shape]
        out = [int(d) for d in b.var.ty.shape]
        if op_name(b.value) == "relax.nn.conv2d":  # OIHW: each output element reads I*H*W weights
            macs = int(np.prod(out)) * int(np.prod(shape[1:]))
        else:  # x @ W (K x N)
            macs = int(np.prod(out)) * shape[0]
        costs[name] = LayerCost(macs, int(np.prod(shape)))
    return costs


@dataclass(frozen=True)
class Budget:
    """The accuracy the mixed model must keep: a top-1 drop (agreement with fp32, or accuracy with
    labels) or a minimum output SQNR."""

    max_top1_drop: float | None = None
    min_sqnr: float | None = None
    labels: bool = False

    def __post_init__(self) -> None:
        if (self.max_top1_drop is None) == (self.min_sqnr is None):
            raise InputError("give exactly one accuracy budget: --max-top1-drop POINTS or --min-sqnr DB")
        if self.max_top1_drop is not None and not 0 <= self.max_top1_drop <= 100:
            raise InputError(f"--max-top1-drop {self.max_top1_drop}: must be between 0 and 100 points")
        if self.labels and self.max_top1_drop is None:
            raise InputError("--labels goes with --max-top1-drop (accuracy on the labels instead of agreement)")

    def value(self, m: dict) -> float:
        """The budgeted quantity of a metrics dict: top-1 drop in points, or SQNR in dB."""
        if self.min_sqnr is not None:
            return float(m["sqnr_db"])
        return float(m["top1_drop"] if self.labels else 100.0 - m["top1_agreement"])

    def met(self, m: dict) -> bool:
        v = self.value(m)
        return v >= self.min_sqnr if self.min_sqnr is not None else v <= float(self.max_top1_drop)  # type: ignore

    def misses(self, ref: np.ndarray, out: np.ndarray, labels: np.ndarray | None) -> int:
        """What a top-1 budget counts against on these samples: disagreements with fp32, or with labels
        the fp32-correct minus the integer-correct."""
        r, o = topk(ref, 1)[:, 0], topk(out, 1)[:, 0]
        if self.labels:
            return int(np.sum(r == labels) - np.sum(o == labels))
        return int(np.sum(r != o))

    def hopeless(self, misses: int, seen: int, total: int) -> bool:
        """Whether `misses` in the first `seen` of `total` samples already break a top-1 budget, however
        the other samples turn out (with labels each could win one back)."""
        if self.max_top1_drop is None:
            return False
        best_case = misses - (total - seen if self.labels else 0)
        return 100.0 * best_case / total > self.max_top1_drop + 1e-9

    def describe(self) -> str:
        if self.min_sqnr is not None:
            return f"output SQNR >= {self.min_sqnr} dB"
        what = "top-1 accuracy drop (labels)" if self.labels else "top-1 disagreement with fp32"
        return f"{what} <= {self.max_top1_drop} points"


MAX_SQNR_DB = 200.0  # what an exact match reports (float32 rounding noise is far below)


class Switchable:
    """The compiled switchable module, the evaluation data and the float model's outputs on it.

    `plan_for(float_layers)` is annotate's plan for a configuration: an op is integer in the module
    exactly when it is integer in that plan (a residual add between two float layers turns float too)."""

    def __init__(
        self,
        mod,
        plan: QuantPlan,
        calibration: Calibration,
        layers: tuple[str, ...],
        data: Dataset,
        input_names: list[str],
        plan_for: Callable[[frozenset[str]], QuantPlan],
    ) -> None:
        self.layers = layers
        self.data = data
        self.input_names = input_names
        self.ops = [op.var for op in plan.ops]
        self.plan_for = plan_for
        self.vm = compile_host(PrecisionSwitch(plan, calibration)(mod))
        self.float_vm = compile_host(mod)
        self.reference = self._run(self.float_vm, [])

    def flags(self, float_layers: set[str]) -> np.ndarray:
        """PrecisionSwitch's flags: 0 float, 1 integer, 2 integer read by float ops only (no output rounding)."""
        integer = {op.var: 2 if op.float_output else 1 for op in self.plan_for(frozenset(float_layers)).ops}
        return np.array([integer.get(var, 0) for var in self.ops], dtype=np.int32)

    def run(self, float_layers: set[str], limit: int | None = None) -> np.ndarray:
        """The first model output over the data (samples stacked) with `float_layers` float."""
        return self._run(self.vm, [tvm.runtime.tensor(self.flags(float_layers))], limit)

    def _run(self, vm, extra: list, limit: int | None = None) -> np.ndarray:
        return np.concatenate(list(self._outputs(vm, extra, limit)))

    def _outputs(self, vm, extra: list, limit: int | None = None) -> Iterator[np.ndarray]:
        """The first model output of each batch, in order."""
        for batch in self.data.batches(limit):
            yield run_vm(vm, batch, self.input_names, extra)[0]

    def metrics(self, float_layers: set[str], limit: int | None = None, budget: Budget | None = None) -> dict:
        """Output metrics of a configuration against fp32. With a top-1 `budget`, the run stops as soon as
        the budget is certainly missed ("stopped_after": samples seen; the metrics are of those)."""
        flags = self.flags(float_layers)
        total = len(self.reference) if limit is None else min(limit, len(self.reference))
        if not flags.any():  # every op float: the float model itself (tested bit for bit)
            return self._metrics(self.reference[:total], {})
        outs: list[np.ndarray] = []
        seen = misses = 0
        for out in self._outputs(self.vm, [tvm.runtime.tensor(flags)], limit):
            outs.append(out)
            if budget is not None and out.ndim == 2:
                labels = None if self.data.labels is None else self.data.labels[seen : seen + len(out)]
                misses += budget.misses(self.reference[seen : seen + len(out)], out, labels)
                seen += len(out)
                if seen < total and budget.hopeless(misses, seen, total):
                    return self._metrics(np.concatenate(outs), {"stopped_after": seen})
        return self._metrics(np.concatenate(outs), {})

    def _metrics(self, out: np.ndarray, extra: dict) -> dict:
        ref = self.reference[: len(out)]
        ref64, out64 = ref.astype(np.float64), out.astype(np.float64)
        noise = float(np.sum((ref64 - out64) ** 2))
        sqnr = ratio_db(float(np.sum(ref64**2)), noise)
        m: dict = {"sqnr_db": round(min(sqnr, MAX_SQNR_DB), 3), "noise": noise, **extra}  # capped: no inf in JSON
        if out.ndim == 2 and out.shape[1] > 1:
            labels = None if self.data.labels is None else self.data.labels[: len(out)]
            m.update(classification_metrics(ref, out, labels))
        return m


def sensitivity(sw: Switchable, costs: dict[str, LayerCost], probe: int | None, both: bool = False) -> list[dict]:
    """Per layer: the model output when only that layer is left float (all others integer) and, with
    `both`, when only it is integer; on the first `probe` samples. Ranked by noise removed per MAC."""
    base = sw.metrics(set(), probe)
    total_macs = sum(costs[name].macs for name in sw.layers) or 1
    rows = []
    for name in progress(sw.layers, desc="sensitivity"):
        only_float = sw.metrics({name}, probe)
        row = {
            "layer": name,
            "macs": costs[name].macs,
            "macs_share": round(costs[name].macs / total_macs, 5),
            "weights": costs[name].weights,
            "float_sqnr_db": only_float["sqnr_db"],
            "float_noise_removed": max(base["noise"] - only_float["noise"], 0.0) / max(base["noise"], 1e-30),
        }
        if "top1_agreement" in base:
            row["float_top1_change"] = round(only_float["top1_agreement"] - base["top1_agreement"], 3)
        if both:
            only_int = sw.metrics(set(sw.layers) - {name}, probe)
            row["int8_sqnr_db"] = only_int["sqnr_db"]
            if "top1_agreement" in only_int:
                row["int8_top1_change"] = round(only_int["top1_agreement"] - 100.0, 3)
        row["score"] = row["float_noise_removed"] / max(row["macs_share"], 1e-6)
        rows.append(row)
    rows.sort(key=lambda r: -r["score"])
    for rank, row in enumerate(rows):
        row["rank"] = rank + 1
        row["float_noise_removed"] = round(row["float_noise_removed"], 5)
        row["score"] = round(row["score"], 4)
    return rows


REFINE = 4  # after the binary search, try this many of the last-promoted layers back in integer


@dataclass
class SearchResult:
    float_layers: tuple[str, ...]
    metrics: dict
    met: bool
    feasible: bool
    seconds: float
    ranking: list[dict]
    evaluated: list[dict] = field(default_factory=list)

    def to_json(self, budget: Budget) -> dict:
        return {
            "budget": budget.describe(),
            "met_on_switchable_model": self.met,
            "feasible": self.feasible,
            "float_layers": list(self.float_layers),
            "metrics": {k: v for k, v in self.metrics.items() if k != "noise"},
            "seconds": round(self.seconds, 1),
            "evaluated": self.evaluated,
            "sensitivity": self.ranking,
        }


def search(
    sw: Switchable,
    costs: dict[str, LayerCost],
    budget: Budget,
    *,
    time_budget_s: float | None = None,
    probe: int | None = 64,
    log=None,
) -> SearchResult:
    """Promote the best-ranked layers (noise removed per MAC of lost integer speed) to float: the smallest
    prefix of the ranking that meets the budget on the whole evaluation set (binary search, then each
    promoted layer is tried back in integer while time remains)."""
    log = log or (lambda line: print(line, flush=True))
    started = time.perf_counter()
    deadline = started + time_budget_s if time_budget_s else None
    evaluated: list[dict] = []

    def evaluate(float_layers: set[str], note: str) -> dict:
        m = sw.metrics(float_layers, budget=budget)
        stopped = m.get("stopped_after")
        value, met = budget.value(m), budget.met(m) and stopped is None
        row = {"float_layers": len(float_layers), "note": note, "value": round(value, 4), "met": met}
        if stopped is not None:
            row["stopped_after"] = stopped  # the value is of those samples
        evaluated.append({**row, "seconds": round(time.perf_counter() - started, 1)})
        how = "met" if met else f"not met after {stopped} samples" if stopped else "not met"
        log(f"  {note}: {len(float_layers)} float layers -> {value:.3f} ({how})")
        return m

    def out_of_time() -> bool:
        return deadline is not None and time.perf_counter() > deadline

    base = evaluate(set(), "all integer")
    if budget.met(base):
        return SearchResult((), base, True, True, time.perf_counter() - started, [], evaluated)
    ranking = sensitivity(sw, costs, probe)
    order = [row["layer"] for row in ranking]
    everything = evaluate(set(order), "every searchable layer float")
    if not budget.met(everything):
        return SearchResult(tuple(order), everything, False, False, time.perf_counter() - started, ranking, evaluated)
    lo, hi, best = 0, len(order), everything  # lo fails, hi meets the budget
    while hi - lo > 1 and not out_of_time():
        mid = (lo + hi) // 2
        m = evaluate(set(order[:mid]), f"top {mid} of the ranking float")
        if budget.met(m):
            hi, best = mid, m
        else:
            lo = mid
    chosen = list(order[:hi])
    for name in reversed(order[:hi][-REFINE:]):  # a promoted layer the budget does not need goes back
        if out_of_time() or len(chosen) <= 1:
            break
        trial = [n for n in chosen if n != name]
        m = evaluate(set(trial), f"without {name}")
        if budget.met(m):
            chosen, best = trial, m
    return SearchResult(tuple(chosen), best, True, True, time.perf_counter() - started, ranking, evaluated)
