"""How the TVM runtime's thread pool behaves: the one place run, verify, bench and the packaged runners
get their thread settings from.

TVM's pool (src/runtime/thread_pool.cc) has two knobs that matter on a device that runs other work:

- between kernels each worker spins (sched_yield in a loop, TVM_THREAD_POOL_SPIN_COUNT, default 300000)
  before it sleeps on a condition variable;
- workers are pinned one per core (TVM_BIND_THREADS, default on).

On an idle machine spinning saves a wake-up per kernel. With other busy processes it is a collapse:
a spinning worker never sleeps, so the scheduler gives it no wake-up priority, and the launching thread
waits for a worker whose core another process holds, a time slice per kernel. Measured on a 2-core
machine with 2 busy processes (benchmarks/results): the Fashion CNN went from 0.22 to 43 ms (x190),
MiniLM from 13.5 to 556 ms, while onnxruntime slowed x1.5. Sleeping, unpinned workers took x1.0-1.7
on the same runs, for 5-10% on the idle machine.

Sleeping costs a futex wake-up per parallel kernel instead (~15 us): a fifth of EfficientNet-Lite0's time
on 2 cores. So qcompile's default pool, "shared", is not TVM's: the artifact library carries qcompile's
own launcher (qcompile/deploy/pool.c), which the loaders put in place of TVM's. Its workers spin with a
CPU pause for 100 us after a kernel (never a yield; QCOMPILE_POOL_SPIN_US), then sleep, and the launching
thread claims every task no worker has started, so it never waits for a worker that is still waking up
or that another process holds. "tvm" is TVM's pool with sleeping,
unpinned workers (the previous default); "dedicated" keeps TVM's spinning, pinned pool for a device that
runs nothing else. A TVM_* variable the user set wins.
The settings are read once, when the pool starts (the first parallel kernel of the process), so they
are applied before anything runs: at the CLI's start, and when a Runner is made."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from qcompile.errors import InputError

POOLS = {
    "shared": {"TVM_THREAD_POOL_SPIN_COUNT": "0", "TVM_BIND_THREADS": "0"},  # + qcompile's launcher
    "tvm": {"TVM_THREAD_POOL_SPIN_COUNT": "0", "TVM_BIND_THREADS": "0"},
    "dedicated": {},  # TVM's own defaults: spin 300000 yields, pin one worker per core
}
LAUNCHER_POOLS = ("shared",)  # the pools that run kernels on qcompile's launcher, not TVM's pool
DEFAULT_POOL = "shared"
ENV = "QCOMPILE_THREAD_POOL"


def resolve(pool: str | None = None) -> str:
    """`pool`, else $QCOMPILE_THREAD_POOL, else "shared"."""
    pool = pool or os.environ.get(ENV) or DEFAULT_POOL
    if pool not in POOLS:
        raise InputError(f"thread pool {pool!r} (from ${ENV} or --thread-pool): choose {' or '.join(POOLS)}")
    return pool


def uses_launcher(pool: str | None = None) -> bool:
    """Whether `pool` (resolve) runs the library's parallel kernels on qcompile's own launcher."""
    return resolve(pool) in LAUNCHER_POOLS


def pool_env(pool: str | None = None, threads: int | None = None) -> dict[str, str]:
    """The TVM_* variables for `pool` (resolve) and `threads`."""
    pool = resolve(pool)
    if threads is not None and threads <= 0:
        raise InputError(f"--threads {threads}: give a positive number")
    env = dict(POOLS[pool])
    if threads is not None:
        env["TVM_NUM_THREADS"] = str(threads)
    return env


def apply(environ, pool: str | None = None, threads: int | None = None):
    """Put the pool's settings into `environ` (os.environ, or a child process's environment). With no
    `pool`, a TVM_* variable already there (the user's) is kept; a `pool` named explicitly
    (--thread-pool) sets its variables and removes the other pool's. Returns `environ`."""
    env = pool_env(pool, threads)
    if pool is None:
        for key, value in env.items():
            environ.setdefault(key, value)
    else:
        for key in {k for settings in POOLS.values() for k in settings}:
            if key in env:
                environ[key] = env[key]
            else:
                environ.pop(key, None)
        environ[ENV] = pool
    if threads is not None:
        environ["TVM_NUM_THREADS"] = str(threads)
    return environ


def configure(pool: str | None = None, threads: int | None = None) -> None:
    """This process's pool (and the child processes' that inherit its environment): call before TVM runs
    a parallel kernel."""
    apply(os.environ, pool, threads)


@contextmanager
def configured(pool: str | None = None, threads: int | None = None) -> Iterator[None]:
    """configure() for the length of one command, then the environment as it was (the CLI run in-process,
    as the tests do, leaves no pool choice behind for the next command)."""
    keys = {k for settings in POOLS.values() for k in settings} | {ENV, "TVM_NUM_THREADS"}
    saved = {k: os.environ.get(k) for k in keys}
    try:
        configure(pool, threads)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
