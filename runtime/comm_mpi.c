/* comm_mpi.c: the MPI communicator (comm.h), one device per rank:
 * `mpirun -np N moec run ...`. Without MOEC_HAVE_MPI only stubs are built.
 *
 * - A duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN; every MPI call goes
 *   through MPI_CHECK, which names the call, file and line and stops the job.
 * - all_reduce_sum is deterministic and matches the in-process backend bit for bit
 *   (MPI_Allreduce is not: its order of operations may depend on the algorithm, the
 *   message sizes and the rank). Rank r owns the segment [r*n/N, (r+1)*n/N): an
 *   MPI_Alltoallv sends every rank's copy of segment r to rank r, rank r sums them
 *   in rank order (((x0 + x1) + x2) + ...), and an MPI_Allgatherv gives everyone
 *   every segment. Vectors longer than 2^28 elements go in blocks (the same bits:
 *   each element's sum is the same whatever block or rank computes it).
 * - all_to_allv: MPI_Alltoallv on bytes; when a count or displacement does not fit
 *   an int (or exceeds MOEC_COMM_MPI_CHUNK bytes, a test knob), pairwise
 *   MPI_Isend/MPI_Irecv in pieces.
 * - A watchdog thread: a collective that has not finished after the timeout
 *   (MOEC_COMM_TIMEOUT, default 60 s) prints "moec: error: rank R: collective X
 *   timed out after S s (a peer rank probably died)" and ends the job with MPI_Abort
 *   (wd_end_job: a rank's exit alone may leave mpirun waiting), with a guard thread
 *   that _exit(1)s the process if the abort blocks. It starts before MPI_Init, which
 *   waits for every rank too (a rank stopped by SIGSTOP): start-up times out after
 *   max(timeout, 30 s) and MPI_Abort ends the job there too.
 * - MOEC_COMM_CHECK=1: before every collective the ranks compare (op, sequence
 *   number, size) and, for all_to_allv, the counts, and fail with a clear message
 *   instead of a truncation error or a hang (an extra small collective each time).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "comm.h"

bool rt_comm_mpi_launched(void) {
  return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#ifndef MOEC_HAVE_MPI

Comm *rt_comm_mpi_init(int *argc, char ***argv, const CommOpts *o, const char **why) {
  (void)argc;
  (void)argv;
  (void)o;
  if (why)
    *why = "moec was built without MPI (no MPI found at configure time, or -DMOEC_MPI=OFF); "
           "install libopenmpi-dev and rebuild";
  return NULL;
}
void rt_comm_mpi_finalize(Comm *c) {
  (void)c;
}

#else

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

static int mpi_rank = -1; /* for messages before and after the communicator */

_Noreturn static void mpi_fail_call(int rc, const char *call, const char *file, int line) {
  char es[MPI_MAX_ERROR_STRING] = "";
  int len = 0;
  if (MPI_Error_string(rc, es, &len) != MPI_SUCCESS) snprintf(es, sizeof es, "error %d", rc);
  char m[768];
  snprintf(m, sizeof m, "MPI call %s failed at %s:%d: %s (a peer rank probably died)", call, file,
           line, es);
  comm_print_error(mpi_rank, m);
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

#define MPI_CHECK(call)                                                                            \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    if (rc_ != MPI_SUCCESS) mpi_fail_call(rc_, #call, __FILE__, __LINE__);                         \
  } while (0)

#define PT_CHECK(call)                                                                             \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    if (rc_) mc_die("%s failed at %s:%d: %s", #call, __FILE__, __LINE__, strerror(rc_));           \
  } while (0)

typedef struct MpiComm MpiComm;
struct MpiComm {
  Comm comm;
  MPI_Comm mc;
  MpiComm *root;     /* the world's: owns the watchdog; subsets point to it */
  MpiComm *next_sub; /* root: the subset communicators made so far */
  uint64_t mask;     /* subsets: the root ranks in it */
  bool we_init;
  bool check;    /* MOEC_COMM_CHECK */
  int64_t chunk; /* largest message of MPI_Alltoallv / pieces */
  double timeout;
  uint64_t seq; /* collectives entered */
  /* watchdog */
  pthread_t wd;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool quit, active;
  bool starting; /* in MPI_Init or MPI_Comm_dup: ranks arrive as they start */
  const char *op;
  double start;
  /* scratch */
  void *scratch;
  size_t scratch_bytes;
  int *ib; /* 4 * size ints: counts and displacements */
};

/* ------------------------------------------------------------------ watchdog */

/* Start-up (MPI_Init, MPI_Comm_dup) waits for every rank to start, which on a loaded
 * machine takes seconds: it times out after max(MOEC_COMM_TIMEOUT, this). */
#define WD_START_MIN 30.0

/* The watchdog's last resort, from a thread that is not the one calling MPI: after
 * WD_GRACE seconds, whatever state MPI is in, the process exits 1. */
#define WD_GRACE 10
static void *wd_guard(void *arg) {
  (void)arg;
  sleep(WD_GRACE);
  comm_print_error(mpi_rank, "MPI_Abort did not end the job: exiting");
  _exit(1);
}

/* Ends the whole job after a timeout. Exiting alone is not enough: OpenMPI 4.1's mpirun
 * with --mca orte_abort_on_non_zero_status 0 never ends a job in which a rank was killed
 * by a signal (even once every other rank has exited), so the survivors' _exit(1) left
 * mpirun waiting forever. MPI_Abort makes mpirun kill the job under either setting. It is
 * called from the watchdog thread, outside MPI_THREAD_FUNNELED's promise (the main thread
 * is blocked inside MPI); OpenMPI's abort only messages the launcher, and the guard thread
 * bounds the wait should it block. */
_Noreturn static void wd_end_job(void) {
  pthread_t t;
  if (pthread_create(&t, NULL, wd_guard, NULL) == 0) pthread_detach(t);
  MPI_Abort(MPI_COMM_WORLD, 1);
  _exit(1);
}

static void *mpi_watchdog(void *arg) {
  MpiComm *m = arg;
  double tick = MC_MAX(0.01, MC_MIN(1.0, m->timeout / 10));
  PT_CHECK(pthread_mutex_lock(&m->mu));
  while (!m->quit) {
    double limit = m->starting ? MC_MAX(m->timeout, WD_START_MIN) : m->timeout;
    if (m->active && mc_now() - m->start >= limit) {
      char msg[256];
      if (m->starting)
        snprintf(msg, sizeof msg,
                 "MPI start-up: %s timed out after %g s (a peer rank probably died or is "
                 "stopped)",
                 m->op, limit);
      else
        snprintf(msg, sizeof msg, "collective %s timed out after %g s (a peer rank probably died)",
                 m->op, limit);
      comm_print_error(mpi_rank, msg);
      wd_end_job(); /* in MPI_Init too: OpenMPI 4.1 reports a NULL communicator, then aborts */
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long ns = (long)(tick * 1e9);
    ts.tv_sec += ns / 1000000000L;
    ts.tv_nsec += ns % 1000000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    int rc = pthread_cond_timedwait(&m->cv, &m->mu, &ts);
    if (rc && rc != ETIMEDOUT)
      mc_die("pthread_cond_timedwait failed at %s:%d: %s", __FILE__, __LINE__, strerror(rc));
  }
  PT_CHECK(pthread_mutex_unlock(&m->mu));
  return NULL;
}

static void wd_arm(MpiComm *m, const char *op) {
  m = m->root;
  PT_CHECK(pthread_mutex_lock(&m->mu));
  m->active = true;
  m->op = op;
  m->start = mc_now();
  PT_CHECK(pthread_mutex_unlock(&m->mu));
}

static void wd_disarm(MpiComm *m) {
  m = m->root;
  PT_CHECK(pthread_mutex_lock(&m->mu));
  m->active = false;
  PT_CHECK(pthread_mutex_unlock(&m->mu));
}

/* ------------------------------------------------------------------ helpers */

_Noreturn static void mpi_abort(Comm *c, const char *reason) {
  MpiComm *m = c->impl;
  comm_print_error(c->rank, reason);
  MPI_Abort(m->mc, 1);
  _exit(1);
}

static void *mpi_scratch(MpiComm *m, size_t bytes) {
  if (bytes > m->scratch_bytes) {
    mc_free(m->scratch);
    m->scratch = mc_malloc(bytes);
    m->scratch_bytes = bytes;
  }
  return m->scratch;
}

enum { OP_BARRIER, OP_AR_F32, OP_AR_F64, OP_A2AV, OP_GATHER, OP_BCAST };
static const char *const mpi_op_name[] = {"barrier",     "all_reduce_sum_f32", "all_reduce_sum_f64",
                                          "all_to_allv", "all_gather",         "broadcast"};

/* Enter a collective: sequence number, watchdog, and with MOEC_COMM_CHECK the
 * cross-rank comparison of (op, seq, size, root). */
static void mpi_enter(MpiComm *m, int op, int64_t n, int root) {
  m->seq++;
  wd_arm(m, mpi_op_name[op]);
  if (!m->check) return;
  int64_t mine[4] = {op, (int64_t)m->seq, n, root};
  int np = m->comm.size;
  int64_t *all = mc_malloc(sizeof(int64_t) * 4 * (size_t)np);
  MPI_CHECK(MPI_Allgather(mine, 4, MPI_INT64_T, all, 4, MPI_INT64_T, m->mc));
  for (int p = 1; p < np; p++) {
    const int64_t *a = all, *b = all + 4 * p;
    if (memcmp(a, b, sizeof(int64_t) * 4) == 0) continue;
    char msg[320];
    snprintf(msg, sizeof msg,
             "the ranks disagree on a collective: rank 0 calls %s #%lld (size %lld, root %lld), "
             "rank %d calls %s #%lld (size %lld, root %lld)",
             mpi_op_name[a[0]], (long long)a[1], (long long)a[2], (long long)a[3], p,
             b[0] >= 0 && b[0] <= OP_BCAST ? mpi_op_name[b[0]] : "?", (long long)b[1],
             (long long)b[2], (long long)b[3]);
    mc_free(all);
    mpi_abort(&m->comm, msg);
  }
  mc_free(all);
}

/* ------------------------------------------------------------------ collectives */

static void mpi_barrier(Comm *c) {
  MpiComm *m = c->impl;
  mpi_enter(m, OP_BARRIER, 0, 0);
  MPI_CHECK(MPI_Barrier(m->mc));
  wd_disarm(m);
}

#define MPI_BLOCK ((int64_t)1 << 28)
#define MPI_ALL_REDUCE(NAME, T, MT, OP)                                                            \
  static void NAME(Comm *c, T *buf, int64_t len) {                                                 \
    MpiComm *m = c->impl;                                                                          \
    int np = c->size, me = c->rank;                                                                \
    if (len < 0) mpi_abort(c, "all_reduce_sum: negative length");                                  \
    mpi_enter(m, OP, len, 0);                                                                      \
    if (np == 1) {                                                                                 \
      wd_disarm(m);                                                                                \
      return;                                                                                      \
    }                                                                                              \
    int *sc = m->ib, *sd = sc + np, *rc = sd + np, *rd = rc + np;                                  \
    for (int64_t b0 = 0; b0 < len; b0 += MPI_BLOCK) {                                              \
      int64_t bl = MC_MIN(MPI_BLOCK, len - b0);                                                    \
      T *x = buf + b0;                                                                             \
      int64_t lo = bl * me / np, hi = bl * (me + 1) / np, seg = hi - lo;                           \
      T *s = mpi_scratch(m, sizeof(T) * (size_t)(seg * np + 1));                                   \
      for (int p = 0; p < np; p++) {                                                               \
        int64_t plo = bl * p / np, phi = bl * (p + 1) / np;                                        \
        sc[p] = (int)(phi - plo); /* my copy of segment p goes to rank p */                        \
        sd[p] = (int)plo;                                                                          \
        rc[p] = (int)seg; /* rank p's copy of my segment */                                        \
        rd[p] = (int)(seg * p);                                                                    \
      }                                                                                            \
      MPI_CHECK(MPI_Alltoallv(x, sc, sd, MT, s, rc, rd, MT, m->mc));                               \
      T *out = x + lo;                                                                             \
      memcpy(out, s, sizeof(T) * (size_t)seg);                                                     \
      for (int p = 1; p < np; p++) {                                                               \
        const T *y = s + seg * p;                                                                  \
        for (int64_t j = 0; j < seg; j++)                                                          \
          out[j] += y[j];                                                                          \
      }                                                                                            \
      MPI_CHECK(MPI_Allgatherv(MPI_IN_PLACE, 0, MT, x, sc, sd, MT, m->mc));                        \
    }                                                                                              \
    wd_disarm(m);                                                                                  \
  }
MPI_ALL_REDUCE(mpi_all_reduce_f32, float, MPI_FLOAT, OP_AR_F32)
MPI_ALL_REDUCE(mpi_all_reduce_f64, double, MPI_DOUBLE, OP_AR_F64)

static void mpi_all_to_allv(Comm *c, const void *send, const int64_t *scount, const int64_t *sdispl,
                            void *recv, const int64_t *rcount, const int64_t *rdispl) {
  MpiComm *m = c->impl;
  int np = c->size, me = c->rank;
  bool small = true;
  for (int p = 0; p < np; p++) {
    if (scount[p] < 0 || sdispl[p] < 0 || rcount[p] < 0 || rdispl[p] < 0) {
      char msg[128];
      snprintf(msg, sizeof msg, "all_to_allv: negative count or displacement for peer %d", p);
      mpi_abort(c, msg);
    }
    small = small && scount[p] <= m->chunk && rcount[p] <= m->chunk && sdispl[p] <= INT_MAX &&
            rdispl[p] <= INT_MAX;
  }
  mpi_enter(m, OP_A2AV, 0, 0);
  if (m->check) {
    int64_t *got = mc_malloc(sizeof(int64_t) * (size_t)np);
    MPI_CHECK(MPI_Alltoall(scount, 1, MPI_INT64_T, got, 1, MPI_INT64_T, m->mc));
    for (int p = 0; p < np; p++)
      if (got[p] != rcount[p]) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "all_to_allv (#%llu): rank %d sends %lld bytes to rank %d, which expects %lld "
                 "(exchange the counts with comm_all_to_all_counts)",
                 (unsigned long long)m->seq, p, (long long)got[p], me, (long long)rcount[p]);
        mpi_abort(c, msg);
      }
    mc_free(got);
  }
  /* every rank must take the same path: agree on it */
  int small_all = small;
  MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &small_all, 1, MPI_INT, MPI_LAND, m->mc));
  if (small_all) {
    int *sc = m->ib, *sd = sc + np, *rc = sd + np, *rd = rc + np;
    for (int p = 0; p < np; p++) {
      sc[p] = (int)scount[p];
      sd[p] = (int)sdispl[p];
      rc[p] = (int)rcount[p];
      rd[p] = (int)rdispl[p];
    }
    MPI_CHECK(MPI_Alltoallv(send, sc, sd, MPI_BYTE, recv, rc, rd, MPI_BYTE, m->mc));
    wd_disarm(m);
    return;
  }
  /* pairwise, in pieces of at most m->chunk bytes; tag = piece number */
  int64_t nreq = 0;
  for (int p = 0; p < np; p++)
    if (p != me)
      nreq += (scount[p] + m->chunk - 1) / m->chunk + (rcount[p] + m->chunk - 1) / m->chunk;
  MPI_Request *req = mc_malloc(sizeof(MPI_Request) * (size_t)(nreq + 1));
  int64_t k = 0;
  for (int p = 0; p < np; p++) {
    if (p == me) continue;
    for (int64_t o = 0, t = 0; o < rcount[p]; o += m->chunk, t++)
      MPI_CHECK(MPI_Irecv((char *)recv + rdispl[p] + o, (int)MC_MIN(m->chunk, rcount[p] - o),
                          MPI_BYTE, p, (int)(t % 32767), m->mc, &req[k++]));
  }
  for (int p = 0; p < np; p++) {
    if (p == me) continue;
    for (int64_t o = 0, t = 0; o < scount[p]; o += m->chunk, t++)
      MPI_CHECK(MPI_Isend((const char *)send + sdispl[p] + o, (int)MC_MIN(m->chunk, scount[p] - o),
                          MPI_BYTE, p, (int)(t % 32767), m->mc, &req[k++]));
  }
  if (scount[me] != rcount[me]) {
    char msg[160];
    snprintf(msg, sizeof msg, "all_to_allv: rank %d sends itself %lld bytes but expects %lld", me,
             (long long)scount[me], (long long)rcount[me]);
    mpi_abort(c, msg);
  }
  if (scount[me])
    memcpy((char *)recv + rdispl[me], (const char *)send + sdispl[me], (size_t)scount[me]);
  MPI_CHECK(MPI_Waitall((int)k, req, MPI_STATUSES_IGNORE));
  mc_free(req);
  wd_disarm(m);
}

static void mpi_all_gather(Comm *c, const void *send, void *recv, size_t bytes) {
  MpiComm *m = c->impl;
  if (bytes > INT_MAX) mpi_abort(c, "all_gather: more than 2^31-1 bytes per rank");
  mpi_enter(m, OP_GATHER, (int64_t)bytes, 0);
  MPI_CHECK(MPI_Allgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->mc));
  wd_disarm(m);
}

static void mpi_broadcast(Comm *c, void *buf, size_t bytes, int root) {
  MpiComm *m = c->impl;
  if (root < 0 || root >= c->size) mpi_abort(c, "broadcast: root is not a rank");
  mpi_enter(m, OP_BCAST, (int64_t)bytes, root);
  for (size_t o = 0; o < bytes; o += (size_t)m->chunk)
    MPI_CHECK(MPI_Bcast((char *)buf + o, (int)MC_MIN((size_t)m->chunk, bytes - o), MPI_BYTE, root,
                        m->mc));
  wd_disarm(m);
}

/* ------------------------------------------------------------------ subsets */

/* MPI_Comm_create_group: collective over the members only (ranks outside a device set
 * never call it). Cached per mask on the root, so every member makes it once, in the
 * same program order. */
static Comm *mpi_subset(Comm *c, uint64_t mask) {
  MpiComm *m = c->impl, *root = m->root;
  uint64_t gm = 0; /* in root ranks */
  int ranks[64], n = 0, me = -1;
  int rr[64]; /* this comm's rank q -> root rank */
  if (c->size > 64) mpi_abort(c, "device subsets: at most 64 ranks");
  if (m == root)
    for (int q = 0; q < c->size; q++)
      rr[q] = q;
  else
    for (int q = 0, k = 0; q < 64; q++)
      if (m->mask >> q & 1) rr[k++] = q;
  for (int q = 0; q < c->size; q++)
    if (mask >> q & 1) {
      if (q == c->rank) me = n;
      ranks[n++] = q;
      gm |= (uint64_t)1 << rr[q];
    }
  if (me < 0) mpi_abort(c, "subset: this rank is not in the subset");
  if (n == c->size) return c;
  for (MpiComm *s = root->next_sub; s; s = s->next_sub)
    if (s->mask == gm) return &s->comm;
  MpiComm *s = mc_calloc(1, sizeof(MpiComm));
  *s = *root;
  s->root = root;
  s->mask = gm;
  s->seq = 0;
  s->scratch = NULL;
  s->scratch_bytes = 0;
  wd_arm(m, "subset (MPI_Comm_create_group)");
  MPI_Group wg, sg;
  MPI_CHECK(MPI_Comm_group(m->mc, &wg));
  MPI_CHECK(MPI_Group_incl(wg, n, ranks, &sg));
  MPI_CHECK(MPI_Comm_create_group(m->mc, sg, (int)(gm % 32749), &s->mc));
  MPI_CHECK(MPI_Group_free(&sg));
  MPI_CHECK(MPI_Group_free(&wg));
  MPI_CHECK(MPI_Comm_set_errhandler(s->mc, MPI_ERRORS_RETURN));
  wd_disarm(m);
  s->ib = mc_malloc(sizeof(int) * 4 * (size_t)n);
  s->comm.rank = me;
  s->comm.size = n;
  s->comm.impl = s;
  s->next_sub = root->next_sub;
  root->next_sub = s;
  return &s->comm;
}

/* ------------------------------------------------------------------ init / finalize */

Comm *rt_comm_mpi_init(int *argc, char ***argv, const CommOpts *o, const char **why) {
  const CommOpts opts = o ? *o : comm_opts_default();
  MpiComm *m = mc_calloc(1, sizeof(MpiComm));
  m->root = m;
  m->timeout = opts.timeout;
  /* the watchdog runs from the start: MPI_Init and MPI_Comm_dup wait for every rank,
   * and a rank stopped (SIGSTOP) or hung before them would leave the others waiting;
   * the launcher's rank (for its messages) before MPI_Init can give it */
  const char *er = getenv("OMPI_COMM_WORLD_RANK");
  if (!er) er = getenv("PMIX_RANK");
  if (!er) er = getenv("PMI_RANK");
  if (er) mpi_rank = atoi(er);
  pthread_condattr_t ca;
  PT_CHECK(pthread_condattr_init(&ca));
  PT_CHECK(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC));
  PT_CHECK(pthread_mutex_init(&m->mu, NULL));
  PT_CHECK(pthread_cond_init(&m->cv, &ca));
  PT_CHECK(pthread_condattr_destroy(&ca));
  PT_CHECK(pthread_create(&m->wd, NULL, mpi_watchdog, m));
  m->starting = true;
  wd_arm(m, "MPI_Init");
  int inited = 0;
  MPI_CHECK(MPI_Initialized(&inited));
  if (!inited) {
    int provided = 0;
    MPI_CHECK(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided));
    m->we_init = true;
  }
  int rank = 0, size = 1;
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  mpi_rank = rank;
  MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
  wd_arm(m, "MPI_Comm_dup");
  MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &m->mc));
  wd_disarm(m);
  PT_CHECK(pthread_mutex_lock(&m->mu));
  m->starting = false;
  PT_CHECK(pthread_mutex_unlock(&m->mu));
  MPI_CHECK(MPI_Comm_set_errhandler(m->mc, MPI_ERRORS_RETURN));
  MPI_CHECK(MPI_Comm_size(m->mc, &size));
  m->check = opts.check;
  m->chunk = opts.mpi_chunk > 0 ? opts.mpi_chunk : INT_MAX;
  m->ib = mc_malloc(sizeof(int) * 4 * (size_t)size);
  m->comm = (Comm){.name = "mpi",
                   .rank = rank,
                   .size = size,
                   .impl = m,
                   .all_reduce_sum_f32 = mpi_all_reduce_f32,
                   .all_reduce_sum_f64 = mpi_all_reduce_f64,
                   .all_to_allv = mpi_all_to_allv,
                   .all_gather = mpi_all_gather,
                   .broadcast = mpi_broadcast,
                   .barrier = mpi_barrier,
                   .abort = mpi_abort,
                   .subset = mpi_subset};
  (void)why;
  return &m->comm;
}

void rt_comm_mpi_finalize(Comm *c) {
  if (!c) return;
  MpiComm *m = c->impl;
  wd_arm(m, "finalize"); /* MPI_Finalize waits for the peers too */
  for (MpiComm *s = m->next_sub, *nx; s; s = nx) {
    nx = s->next_sub;
    MPI_CHECK(MPI_Comm_free(&s->mc));
    mc_free(s->scratch);
    mc_free(s->ib);
    mc_free(s);
  }
  MPI_CHECK(MPI_Comm_free(&m->mc));
  if (m->we_init) MPI_CHECK(MPI_Finalize());
  PT_CHECK(pthread_mutex_lock(&m->mu));
  m->quit = true;
  PT_CHECK(pthread_cond_signal(&m->cv));
  PT_CHECK(pthread_mutex_unlock(&m->mu));
  PT_CHECK(pthread_join(m->wd, NULL));
  PT_CHECK(pthread_cond_destroy(&m->cv));
  PT_CHECK(pthread_mutex_destroy(&m->mu));
  mc_free(m->scratch);
  mc_free(m->ib);
  mc_free(m);
}

#endif
