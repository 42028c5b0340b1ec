/* threads.c: moec's worker threads on the CPU, and OpenBLAS's setup. Kernels and the
 * optimizer split their work into tasks fixed by the shapes alone, each writing its own
 * part of the outputs, so a run gives the same bits with any thread count; OpenBLAS
 * runs single-threaded inside each task, so no BLAS thread ever spins idle beside ours.
 *
 * One pool per process, used by one thread at a time (the first that asks; any other
 * thread, and a task that asks again, runs its tasks inline). Workers take tasks from a
 * shared counter; idle, they spin for RT_SPIN_SECS, then sleep on a condition variable.
 * The job fields are guarded like a seqlock: `gen` is odd while they are rewritten,
 * and a worker counts itself in `active` before it trusts them. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

void openblas_set_num_threads(int n);
char *openblas_get_corename(void);

#define RT_SPIN_SECS 100e-6 /* an idle worker's spin before it sleeps */

static struct {
  pthread_once_t once;
  int n;       /* threads, the caller included */
  int started; /* workers running */
  pthread_t owner;
  atomic_int busy; /* a region is in flight */
  pthread_mutex_t mu;
  pthread_cond_t work, done_cv;
  atomic_uint_fast64_t gen; /* even: a job is published; odd: being rewritten */
  atomic_int active;        /* workers reading the current job */
  atomic_int sleepers, waiting;
  RtTaskFn fn;
  void *arg;
  int64_t ntasks;
  atomic_int_fast64_t next, done;
} P = {.once = PTHREAD_ONCE_INIT,
       .mu = PTHREAD_MUTEX_INITIALIZER,
       .work = PTHREAD_COND_INITIALIZER,
       .done_cv = PTHREAD_COND_INITIALIZER};

static _Thread_local bool in_task;
static _Thread_local int thread_index; /* rt_thread_index */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/* The CPUs this process may run on (the command line may set another count once, at
 * startup: rt_threads_set from MOEC_THREADS, driver/options.c). */
static int threads_default(void) {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0)
    return MC_MAX(1, MC_MIN(CPU_COUNT(&set), RT_MAX_THREADS));
  return 1;
}

static void init_once(void) {
  P.n = threads_default();
  P.owner = pthread_self();
  openblas_set_num_threads(1); /* BLAS runs inside our tasks, one thread each */
}

const char *rt_blas_core(void) {
  rt_threads();
  return openblas_get_corename();
}

int rt_thread_index(void) {
  return thread_index;
}

int rt_threads(void) {
  pthread_once(&P.once, init_once);
  return P.n;
}

void rt_threads_set(int n) {
  pthread_once(&P.once, init_once);
  MOEC_ASSERT(n >= 1 && !atomic_load(&P.busy));
  P.n = MC_MIN(n, RT_MAX_THREADS); /* workers numbered n and above take no tasks */
  P.owner = pthread_self();
  openblas_set_num_threads(1);
}

/* Takes tasks of the current job until none is left. */
static void run_tasks(void) {
  int64_t n = P.ntasks, i;
  while ((i = atomic_fetch_add(&P.next, 1)) < n) {
    P.fn(P.arg, i);
    if (atomic_fetch_add(&P.done, 1) + 1 == n && atomic_load(&P.waiting)) {
      pthread_mutex_lock(&P.mu);
      pthread_cond_broadcast(&P.done_cv);
      pthread_mutex_unlock(&P.mu);
    }
  }
}

static void *worker(void *self) {
  const int id = (int)(intptr_t)self;
  uint64_t seen = atomic_load(&P.gen);
  in_task = true; /* a task that asks for threads runs inline */
  thread_index = id;
  for (;;) {
    uint64_t g;
    double t0 = mc_now();
    int spins = 0;
    while ((g = atomic_load(&P.gen)) == seen || (g & 1)) {
      cpu_relax();
      if (++spins % 256 == 0 && mc_now() - t0 > RT_SPIN_SECS) {
        pthread_mutex_lock(&P.mu);
        atomic_fetch_add(&P.sleepers, 1);
        while ((g = atomic_load(&P.gen)) == seen || (g & 1))
          pthread_cond_wait(&P.work, &P.mu);
        atomic_fetch_sub(&P.sleepers, 1);
        pthread_mutex_unlock(&P.mu);
        break;
      }
    }
    seen = g;
    atomic_fetch_add(&P.active, 1);
    if (atomic_load(&P.gen) == g && id < P.n) run_tasks(); /* else: rewritten meanwhile */
    atomic_fetch_sub(&P.active, 1);
  }
  return NULL;
}

void rt_parallel(int64_t ntasks, RtTaskFn fn, void *arg) {
  if (ntasks <= 0) return;
  int n = rt_threads();
  if (ntasks == 1 || n == 1 || in_task || !pthread_equal(pthread_self(), P.owner) ||
      atomic_exchange(&P.busy, 1)) {
    for (int64_t i = 0; i < ntasks; i++)
      fn(arg, i);
    return;
  }
  while (P.started < n - 1) { /* workers start on first use */
    pthread_t t;
    if (pthread_create(&t, NULL, worker, (void *)(intptr_t)(P.started + 1)))
      mc_die("cannot start a worker thread (MOEC_THREADS=1 runs without them)");
    pthread_detach(t);
    P.started++;
  }
  /* rewrite the job: no worker may be reading it (see the header) */
  uint64_t g = atomic_load(&P.gen);
  atomic_store(&P.gen, g + 1);
  while (atomic_load(&P.active))
    cpu_relax();
  P.fn = fn;
  P.arg = arg;
  P.ntasks = ntasks;
  atomic_store(&P.next, 0);
  atomic_store(&P.done, 0);
  atomic_store(&P.gen, g + 2);
  if (atomic_load(&P.sleepers)) {
    pthread_mutex_lock(&P.mu);
    pthread_cond_broadcast(&P.work);
    pthread_mutex_unlock(&P.mu);
  }
  in_task = true;
  run_tasks();
  in_task = false;
  /* the last tasks run elsewhere: spin briefly, then sleep until the last one ends */
  double t0 = mc_now();
  int spins = 0;
  while (atomic_load(&P.done) < ntasks) {
    cpu_relax();
    if (++spins % 256 == 0 && mc_now() - t0 > RT_SPIN_SECS) {
      pthread_mutex_lock(&P.mu);
      atomic_store(&P.waiting, 1);
      while (atomic_load(&P.done) < ntasks)
        pthread_cond_wait(&P.done_cv, &P.mu);
      atomic_store(&P.waiting, 0);
      pthread_mutex_unlock(&P.mu);
    }
  }
  atomic_store(&P.busy, 0);
}

void rt_rows_task(void *arg, int64_t i) {
  const RtRowsJob *j = arg;
  j->fn(j->arg, rt_chunk_lo(j->R, j->n, i), rt_chunk_lo(j->R, j->n, i + 1));
}

void rt_parallel_rows(int64_t R, int64_t cost, RtRangeFn fn, void *arg) {
  if (R <= 0) return;
  RtRowsJob j = {R, rt_chunks(R, cost), fn, arg};
  if (j.n == 1) {
    fn(arg, 0, R);
    return;
  }
  rt_parallel(j.n, rt_rows_task, &j);
}
