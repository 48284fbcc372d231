/* qcompile's parallel launcher, linked into every CPU artifact library.

TVM's kernels run their parallel loops through TVMBackendParallelLaunch, reached through the library's
`__TVMBackendParallelLaunch` pointer, which TVM's loader fills with its own thread pool. That pool makes
a bad choice either way on a small device: its workers either sleep between kernels (a futex wake-up,
~15 us, paid by every parallel kernel: a fifth of EfficientNet-Lite0's time on 2 cores) or spin with
sched_yield, which collapses when other processes hold the cores (each yield can hand a core to a busy
process for a whole time slice: x60-x80 measured with two busy processes).

This launcher is what qcompile's loaders put in that pointer instead (qcompile.runtime, the packaged
runners). Tasks are claimed from one atomic ticket, so the launching thread runs every task no worker
has started: a worker that is descheduled costs the kernel its share, not a time slice. After a
kernel a worker spins with a CPU pause (never a yield) for QCOMPILE_POOL_SPIN_US (default 100), then
sleeps on a futex. The kernels of one inference follow each other within microseconds, so a worker is
still spinning when the next one starts and the launching thread makes no futex call for it. Measured
on a 2-core AMD EPYC VM, default schedules: the Fashion CNN's VM call went from 250-310 to ~200 us (the
same library, spin 0 vs 100, six processes each), YOLOv8n from 14.1 to 13.3 ms; with two busy
processes YOLOv8n slowed x1.61 (spin 0: x1.24) while onnxruntime slowed x2.06-2.37. Spin 0 restores
the sleep-at-once launcher. The thread count is TVM_NUM_THREADS, else the CPUs this process may run on.

It compiles as C and as C++ (the library link step may be a C++ driver), and uses only GCC atomics,
pthreads and the Linux futex. */

#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#endif
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  void* sync_handle;
  int32_t num_task;
} QcParallelEnv; /* TVMParallelGroupEnv */

typedef int (*QcParallelLambda)(int task_id, QcParallelEnv* penv, void* cdata);

#define QC_MAX_THREADS 256

static struct {
  QcParallelLambda fn;
  void* cdata;
  int num_task;
  uint64_t ticket; /* generation << 32 | next task index */
  int done;        /* tasks finished in this generation */
  int failed;
  uint32_t gen;    /* futex word: the current generation */
  int sleepers;
} qc_job;

static int qc_threads = 1;
static long qc_spin_ns = 100000L; /* QCOMPILE_POOL_SPIN_US, in ns */
static pthread_once_t qc_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t qc_launch_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int qc_in_task;

static inline void qc_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#endif
}

static long qc_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000000000L + ts.tv_nsec;
}

static void qc_futex_wait(uint32_t* word, uint32_t seen) {
  syscall(SYS_futex, word, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
}

static void qc_futex_wake(uint32_t* word) { syscall(SYS_futex, word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0); }

/* Claim and run tasks of generation `gen` until none is left. */
static void qc_run_tasks(uint32_t gen) {
  uint64_t t = __atomic_load_n(&qc_job.ticket, __ATOMIC_ACQUIRE);
  for (;;) {
    if ((uint32_t)(t >> 32) != gen || (int)(uint32_t)t >= qc_job.num_task) return;
    if (!__atomic_compare_exchange_n(&qc_job.ticket, &t, t + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) continue;
    QcParallelEnv env = {NULL, qc_job.num_task};
    qc_in_task = 1;
    if (qc_job.fn((int)(uint32_t)t, &env, qc_job.cdata) != 0) __atomic_store_n(&qc_job.failed, 1, __ATOMIC_RELAXED);
    qc_in_task = 0;
    __atomic_fetch_add(&qc_job.done, 1, __ATOMIC_RELEASE);
    t = __atomic_load_n(&qc_job.ticket, __ATOMIC_ACQUIRE);
  }
}

static void* qc_worker(void* arg) {
  (void)arg;
  uint32_t seen = __atomic_load_n(&qc_job.gen, __ATOMIC_ACQUIRE);
  for (;;) {
    long start = qc_now_ns();
    uint32_t gen;
    int spins = 0;
    while ((gen = __atomic_load_n(&qc_job.gen, __ATOMIC_ACQUIRE)) == seen) {
      qc_pause();
      if (++spins % 64 == 0 && qc_now_ns() - start > qc_spin_ns) {
        __atomic_fetch_add(&qc_job.sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&qc_job.gen, __ATOMIC_SEQ_CST) == seen) qc_futex_wait(&qc_job.gen, seen);
        __atomic_fetch_sub(&qc_job.sleepers, 1, __ATOMIC_SEQ_CST);
        start = qc_now_ns();
      }
    }
    seen = gen;
    qc_run_tasks(gen);
  }
  return NULL;
}

static int qc_count_threads(void) {
  const char* env = getenv("TVM_NUM_THREADS");
  int n = env ? atoi(env) : 0;
  if (n <= 0) {
    cpu_set_t set;
    n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : (int)sysconf(_SC_NPROCESSORS_ONLN);
  }
  return n < 1 ? 1 : (n > QC_MAX_THREADS ? QC_MAX_THREADS : n);
}

static void qc_start(void) {
  const char* spin = getenv("QCOMPILE_POOL_SPIN_US");
  if (spin) qc_spin_ns = atol(spin) * 1000L;
  qc_threads = qc_count_threads();
  for (int i = 1; i < qc_threads; ++i) {
    pthread_t thread;
    if (pthread_create(&thread, NULL, qc_worker, NULL) != 0) {
      qc_threads = i; /* run with the workers there are */
      break;
    }
    pthread_detach(thread);
  }
}

int qcompile_parallel_launch(QcParallelLambda fn, void* cdata, int num_task) {
  pthread_once(&qc_once, qc_start);
  if (num_task <= 0) num_task = qc_threads;
  if (qc_threads == 1 || num_task == 1 || qc_in_task) { /* serially, here (also a launch inside a task) */
    QcParallelEnv env = {NULL, num_task};
    for (int i = 0; i < num_task; ++i)
      if (fn(i, &env, cdata) != 0) return -1;
    return 0;
  }
  pthread_mutex_lock(&qc_launch_lock); /* one parallel kernel at a time (several VMs in one process) */
  uint32_t gen = qc_job.gen + 1;
  qc_job.fn = fn;
  qc_job.cdata = cdata;
  qc_job.num_task = num_task;
  qc_job.failed = 0;
  __atomic_store_n(&qc_job.done, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&qc_job.ticket, (uint64_t)gen << 32, __ATOMIC_RELEASE);
  __atomic_store_n(&qc_job.gen, gen, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&qc_job.sleepers, __ATOMIC_SEQ_CST) > 0) qc_futex_wake(&qc_job.gen);
  qc_run_tasks(gen);
  long start = qc_now_ns();
  int spins = 0;
  while (__atomic_load_n(&qc_job.done, __ATOMIC_ACQUIRE) < num_task) { /* a worker is still on its task */
    if (++spins % 64 == 0 && qc_now_ns() - start > qc_spin_ns)
      sched_yield(); /* it was descheduled: let it run */
    else
      qc_pause();
  }
  int failed = qc_job.failed;
  pthread_mutex_unlock(&qc_launch_lock);
  return failed ? -1 : 0;
}

#ifdef __cplusplus
}
#endif
