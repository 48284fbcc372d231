"""The tuner process: `python -m qcompile.tuning.worker JOB.json`, started by `qcompile tune`.

Runs MetaSchedule over the job's tasks: the design space is qcompile's own schedule template with
its tile sizes sampled (`kernels.decide.Sampler`), the search is evolutionary, guided by the XGBoost
cost model, and every measured candidate is committed to the JSON database as it comes (so a crash
or a time budget loses nothing measured). Progress goes to stdout as one JSON object per line."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from qcompile.deploy.toolchain import cross_cxx
from qcompile.kernels.decide import Sampler
from qcompile.kernels.templates import schedule_module
from qcompile.targets import TARGETS
from qcompile.tuning.database import TuningDB, mean_seconds
from qcompile.tuning.tasks import register_intrinsics


def emit(**event) -> None:
    print(json.dumps(event), flush=True)


@derived_object
class Progress(ms.measure_callback.PyMeasureCallback):
    """Reports each batch of measurements, and ends every task once the time budget is spent (the
    scheduler then returns normally, with everything measured so far in the database)."""

    def __init__(self, names: list[str], deadline: float | None) -> None:
        self.names = names
        self.deadline = deadline
        self.best: dict[int, float] = {}
        self.stopped = False
        self.measured = 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        secs = [mean_seconds(r.run_secs) for r in runner_results if r.error_msg is None]
        ok = [s for s in secs if s is not None]
        self.measured += len(runner_results)
        if ok:
            best = min(ok)
            self.best[task_id] = min(self.best.get(task_id, best), best)
        emit(
            event="measured",
            task=self.names[task_id],
            count=len(runner_results),
            failed=len(runner_results) - len(ok),
            best_us=1e6 * self.best[task_id] if task_id in self.best else None,
        )
        if self.deadline is not None and time.monotonic() > self.deadline and not self.stopped:
            self.stopped = True
            emit(event="budget")
            for i, task in enumerate(task_scheduler.tasks_):
                if not task.is_terminated:
                    task_scheduler.terminate_task(i)


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params):
    """MetaSchedule's default builder function minus its import of tvm.s_tir.tensor_intrin (every TVM
    intrinsic parsed from TVMScript, ~30 s per worker): a candidate arrives already tensorized. It is
    built as a build builds it, the requantize's sums narrowed (qcompile.kernels.products)."""
    from tvm.driver import build

    from qcompile.kernels.products import keep_int32_sums

    return build(keep_int32_sums(mod), target=target)


def export_shared(mod) -> str:
    """A candidate as a shared library linked by the target's compiler (QCOMPILE_CROSS_CXX for a cross
    target), which an RPC server loads as is: no compiler needed on the device."""
    path = os.path.join(tempfile.mkdtemp(prefix="qcompile-candidate-"), "candidate.so")
    cxx = os.environ.get("QCOMPILE_CROSS_CXX")
    mod.export_library(path, **({"cc": cxx} if cxx else {}))
    return path


def measure_on(job: dict, target_spec) -> tuple:
    """Builder and runner: candidates measured on this machine, or on a device through an RPC tracker.
    The cache is flushed before each repeat: in the model a kernel's weights come cold from memory, and
    measured warm the search prefers tiles that lose in the real library."""
    evaluator = ms.runner.EvaluatorConfig(number=1, repeat=10, min_repeat_ms=0, enable_cpu_cache_flush=True)
    rpc = job.get("rpc")
    if rpc is None:
        builder = ms.builder.LocalBuilder(f_build=build_candidate, max_workers=1, timeout_sec=60)
        return builder, ms.runner.LocalRunner(evaluator_config=evaluator, timeout_sec=60)
    cxx = cross_cxx(target_spec)
    if cxx:
        os.environ["QCOMPILE_CROSS_CXX"] = cxx  # inherited by the builder's worker processes
    builder = ms.builder.LocalBuilder(f_build=build_candidate, f_export=export_shared, max_workers=1, timeout_sec=120)
    config = ms.runner.RPCConfig(
        tracker_host=rpc["host"], tracker_port=rpc["port"], tracker_key=rpc["key"], session_timeout_sec=120
    )
    return builder, ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=1)


SECONDS_PER_CANDIDATE = 0.5  # build + measure, when this run measured none of its own (2-core x86, measured)
ROUNDS_PER_TASK = 3  # a task's first round only warms the cost model; fewer than this is not tuning it
FOCUS_SHARE = 0.95  # tune the heaviest kernels that make up this much of the time, no more


def estimated_seconds(contexts, weights: list[float], database) -> list[float]:
    """Each task's share of the model's kernel time, estimated: calls x the best run time the database
    holds (the default schedule's, where nothing better was measured yet)."""
    est = []
    for ctx, weight in zip(contexts, weights):
        top = database.get_top_k(database.commit_workload(ctx.mod), 1) if database.has_workload(ctx.mod) else []
        secs = mean_seconds(top[0].run_secs) if top else None
        est.append(weight * secs if secs is not None else None)
    known = [e for e in est if e is not None]
    fill = max(known) if known else 1.0  # a task never measured: assume it matters
    return [fill if e is None else e for e in est]


def focus(est: list[float], todo: list[int], seconds_left: float | None, per_candidate: float, per_iter: int):
    """The next tasks to search, of `todo`: the heaviest first, as many as the budget can give
    ROUNDS_PER_TASK rounds each (all of them without a budget), stopping once they and the tasks
    already searched cover FOCUS_SHARE of the time."""
    order = sorted(todo, key=lambda i: -est[i])
    if seconds_left is None:
        return order
    cap = max(1, int(seconds_left / (ROUNDS_PER_TASK * per_iter * per_candidate)))
    total, covered = sum(est) or 1.0, sum(est[i] for i in range(len(est)) if i not in todo)
    chosen = []
    for i in order[:cap]:
        if covered >= FOCUS_SHARE * total:
            break
        chosen.append(i)
        covered += est[i]
    return chosen


def seed_defaults(contexts, database, builder, runner, spec, target) -> int:
    """Measure the default schedule of every task the database has no record for and commit it: the
    evolutionary search then starts from it, a short tuning run never makes a kernel slower than the
    default, and `--require-tuned` is satisfied by any run that got through this step."""
    todo = []
    for ctx in contexts:
        if database.has_workload(ctx.mod) and database.get_top_k(database.commit_workload(ctx.mod), 1):
            continue
        sch = tvm.s_tir.Schedule(ctx.mod)
        schedule_module(sch, spec, Sampler(start_at_default=True))
        todo.append((ctx, sch))
    if not todo:
        return 0
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, sch in todo])
    inputs, kept = [], []
    for (ctx, sch), b in zip(todo, built):
        if b.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(ctx.mod["main"])
            inputs.append(ms.runner.RunnerInput(b.artifact_path, "cpu", args))
            kept.append((ctx, sch, args))
    for (ctx, sch, args), future in zip(kept, runner.run(inputs)):
        result = future.result()
        if result.error_msg is None:
            workload = database.commit_workload(ctx.mod)
            database.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, result.run_secs, target, args))
            emit(event="default", task=ctx.task_name, us=1e6 * sum(map(float, result.run_secs)) / len(result.run_secs))
    return len(todo)


def main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    target_spec = TARGETS.get(job["target"])
    spec = target_spec.kernels
    target = target_spec.tvm()
    register_intrinsics(spec)
    database = TuningDB(Path(job["db"])).open(target_spec, create=True)
    deadline = time.monotonic() + job["time_budget_s"] if job.get("time_budget_s") else None

    def space(sch: tvm.s_tir.Schedule) -> None:
        if not schedule_module(sch, spec, Sampler()):
            raise ValueError("no template for this kernel")

    contexts = []
    for task in job["tasks"]:
        contexts.append(
            ms.TuneContext(
                mod=tvm.ir.load_json(Path(task["file"]).read_text()),
                target=target,
                space_generator=ms.space_generator.ScheduleFn(
                    space, sch_rules=[], postprocs=[], mutator_probs={ms.mutator.MutateTileSize(): 1.0}
                ),
                search_strategy=ms.search_strategy.EvolutionarySearch(
                    population_size=64, init_min_unmeasured=16, genetic_num_iters=2
                ),
                task_name=task["name"],
                num_threads=job["threads"],
            )
        )
    builder, runner = measure_on(job, target_spec)
    seeding = time.monotonic()
    seeded = seed_defaults(contexts, database, builder, runner, spec, target)
    per_candidate = (time.monotonic() - seeding) / seeded if seeded else SECONDS_PER_CANDIDATE
    weights = [float(t["weight"]) for t in job["tasks"]]
    est = estimated_seconds(contexts, weights, database)
    work_dir = str(Path(job_path).parent / "meta_schedule")  # its logs, for the error report
    todo, searched, trials_left, stopped = list(range(len(contexts))), [], job["trials"], False
    # With a budget, the heaviest tasks first, in batches the remaining time can tune: a task whose space
    # is exhausted early leaves its time to the next batch, and no warm-up round over every task (one
    # per kernel, minutes on a large model) runs past the budget.
    while todo and trials_left > 0 and not stopped:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:  # the build and the defaults took the budget: those are recorded
            stopped = True
            break
        chosen = focus(est, todo, left, per_candidate, job["per_iter"])
        if not chosen:
            break
        progress = Progress([job["tasks"][i]["name"] for i in chosen], deadline)
        ms.tune_tasks(
            tasks=[contexts[i] for i in chosen],
            task_weights=[weights[i] for i in chosen],
            work_dir=work_dir,
            max_trials_global=trials_left,
            max_trials_per_task=job.get("trials_per_task") or trials_left,
            num_trials_per_iter=job["per_iter"],
            builder=builder,
            runner=runner,
            database=database,
            cost_model=ms.cost_model.XGBModel(
                extractor=ms.feature_extractor.PerStoreFeature(),
                adaptive_training=True,
                num_tuning_cores=job["threads"],
            ),
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), progress],
            task_scheduler="gradient",
        )
        trials_left -= progress.measured
        stopped = progress.stopped
        searched += chosen
        todo = [i for i in todo if i not in chosen]
    share = sum(est[i] for i in searched) / (sum(est) or 1.0)
    emit(event="focus", tasks=[job["tasks"][i]["name"] for i in sorted(searched)], share=share)
    emit(event="done", stopped_by_budget=stopped)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
