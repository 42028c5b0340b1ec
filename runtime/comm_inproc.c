/* comm_inproc.c: N in-process devices, one pthread each (comm.h).
 *
 * A shared context holds one posting slot per rank and a generation-counted barrier
 * (mutex + condition variable, timed waits on CLOCK_MONOTONIC). Every collective is
 *
 *   post (this rank's op, sizes and buffer pointers into its slot)
 *   barrier A; check that every rank posted the same op with the same sizes
 *   work (each rank reads the peers' posted buffers and writes only what it owns)
 *   barrier B (so no slot or buffer is reused while a peer still reads it)
 *
 * all_to_allv: rank r copies, from every peer p, the bytes p posted for r into its
 * own receive buffer. all_reduce_sum: rank r owns the segment [r*n/N, (r+1)*n/N) of
 * the vector; it sums that segment over the ranks' buffers in rank order, chunk by
 * chunk, and writes the sums into every rank's buffer. Only rank r touches segment r
 * of any buffer, so the result is the rank-order sum, bit-identical everywhere.
 *
 * Failures: a shared abort flag (the first failure's rank and message) wakes every
 * waiter; a waiter that sees a finished rank, or waits longer than the timeout,
 * fails naming the ranks that did not arrive. A failing rank records its status,
 * prints its error (unless quiet) and leaves with pthread_exit; rt_inproc_run
 * joins every thread and returns the first failure.
 *
 * Subsets (comm_subset, device sets from on(...)): each has its own Ctx (barrier
 * generation, slots, members' global ranks) linked in the launch's; the mutex, the
 * condition variables and the failure state are the launch's (Ctx.root), so a failure
 * anywhere wakes and stops the waiters of every subset. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "../common/common.h"
#include "comm.h"

#define PT_CHECK(call)                                                                             \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    if (rc_) mc_die("%s failed at %s:%d: %s", #call, __FILE__, __LINE__, strerror(rc_));           \
  } while (0)

typedef enum IpOp { IP_BARRIER, IP_AR_F32, IP_AR_F64, IP_A2AV, IP_GATHER, IP_BCAST } IpOp;
static const char *const ip_op_name[] = {"barrier",     "all_reduce_sum_f32", "all_reduce_sum_f64",
                                         "all_to_allv", "all_gather",         "broadcast"};

typedef struct Slot {
  IpOp op;
  uint64_t seq; /* collectives this rank entered, this one included */
  int64_t n;    /* elements (all_reduce) or bytes (all_gather, broadcast) */
  int root;     /* broadcast */
  const void *send;
  const int64_t *scount, *sdispl;
  void *buf;
} Slot;

typedef struct Ctx Ctx;
struct Ctx {
  /* The launch (root) holds the mutex, the condition variables and the failure state
   * (indexed by global rank); every Ctx, the root's and each subset's, its own barrier
   * and posting slots over its n members (glob: their global ranks, ascending). */
  Ctx *root;
  Ctx *next_sub; /* root: the subsets made so far */
  uint64_t mask; /* global ranks of the members */
  int glob[RT_INPROC_MAX];
  int n;
  double timeout;
  bool quiet;
  pthread_mutex_t mu;
  pthread_cond_t cv;      /* barrier waiters */
  pthread_cond_t done_cv; /* the launcher */
  uint64_t gen;           /* barrier generation */
  int count;              /* arrived in this generation */
  bool arrived[RT_INPROC_MAX];
  int ndone;
  bool done[RT_INPROC_MAX];
  bool aborted;
  int first_rank;
  char first[256];
  double t_fail;
  InprocStatus status[RT_INPROC_MAX];
  char msg[RT_INPROC_MAX][256];
  Slot slot[RT_INPROC_MAX];
};

typedef struct Rank Rank;
struct Rank {
  Comm comm;
  Ctx *x;
  int rank;       /* in x */
  int grank;      /* in the launch */
  Rank *top;      /* this thread's launch rank */
  Rank *next_sub; /* top: this thread's subset communicators */
  uint64_t seq;
  void (*fn)(Comm *, void *);
  void *arg;
  pthread_t th;
};

static atomic_bool ip_quiet;
void rt_inproc_set_quiet(bool quiet) {
  atomic_store(&ip_quiet, quiet);
}

/* ------------------------------------------------------------------ failure */

/* With x->mu held: records this rank's end, wakes everyone, releases the lock,
 * prints and leaves the thread. */
_Noreturn static void ip_leave_locked(Rank *r, InprocStatus st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
_Noreturn static void ip_leave_locked(Rank *r, InprocStatus st, const char *fmt, ...) {
  Ctx *x = r->x->root;
  int g = r->grank;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(x->msg[g], sizeof x->msg[g], fmt, ap);
  va_end(ap);
  x->status[g] = st;
  if (!x->aborted) {
    x->aborted = true;
    x->first_rank = g;
    snprintf(x->first, sizeof x->first, "%s", x->msg[g]);
    x->t_fail = mc_now();
  }
  x->done[g] = true;
  x->ndone++;
  char line[256];
  snprintf(line, sizeof line, "%s", x->msg[g]);
  bool quiet = x->quiet;
  PT_CHECK(pthread_cond_broadcast(&x->cv));
  PT_CHECK(pthread_cond_broadcast(&x->done_cv));
  PT_CHECK(pthread_mutex_unlock(&x->mu));
  if (!quiet) comm_print_error(g, line);
  pthread_exit(NULL);
}

static _Noreturn void ip_abort(Comm *c, const char *reason) {
  Rank *r = c->impl;
  PT_CHECK(pthread_mutex_lock(&r->x->root->mu));
  ip_leave_locked(r, INPROC_ABORTED, "%s", reason);
}

/* ------------------------------------------------------------------ barrier */

static void ip_deadline(double seconds, struct timespec *ts) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  double whole = (double)(int64_t)seconds;
  ts->tv_sec += (time_t)whole;
  ts->tv_nsec += (long)((seconds - whole) * 1e9);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static void ip_barrier(Rank *r, IpOp op) {
  Ctx *x = r->x, *root = x->root;
  PT_CHECK(pthread_mutex_lock(&root->mu));
  if (root->aborted)
    ip_leave_locked(r, INPROC_FAILED, "%s (#%llu) stopped: rank %d failed: %s", ip_op_name[op],
                    (unsigned long long)r->seq, root->first_rank, root->first);
  uint64_t g = x->gen;
  x->arrived[r->rank] = true;
  if (++x->count == x->n) {
    x->count = 0;
    memset(x->arrived, 0, sizeof x->arrived);
    x->gen++;
    PT_CHECK(pthread_cond_broadcast(&root->cv));
    PT_CHECK(pthread_mutex_unlock(&root->mu));
    return;
  }
  struct timespec dl;
  ip_deadline(x->timeout, &dl);
  while (x->gen == g) {
    if (root->aborted)
      ip_leave_locked(r, INPROC_FAILED, "%s (#%llu) stopped: rank %d failed: %s", ip_op_name[op],
                      (unsigned long long)r->seq, root->first_rank, root->first);
    int q = 0; /* a member that returned */
    while (q < x->n && !root->done[x->glob[q]])
      q++;
    if (q < x->n)
      ip_leave_locked(r, INPROC_FAILED,
                      "%s (#%llu): rank %d returned while this rank waits for it (the ranks "
                      "called different collectives)",
                      ip_op_name[op], (unsigned long long)r->seq, x->glob[q]);
    int rc = pthread_cond_timedwait(&root->cv, &root->mu, &dl);
    if (rc == ETIMEDOUT && x->gen == g && !root->aborted) {
      char missing[128] = "";
      size_t k = 0;
      for (int q2 = 0; q2 < x->n && k + 8 < sizeof missing; q2++)
        if (!x->arrived[q2])
          k +=
              (size_t)snprintf(missing + k, sizeof missing - k, "%s%d", k ? ", " : "", x->glob[q2]);
      ip_leave_locked(r, INPROC_FAILED,
                      "collective %s (#%llu) timed out after %g s waiting for rank %s (a peer "
                      "rank probably died or hangs)",
                      ip_op_name[op], (unsigned long long)r->seq, x->timeout, missing);
    }
    if (rc && rc != ETIMEDOUT)
      mc_die("pthread_cond_timedwait failed at %s:%d: %s", __FILE__, __LINE__, strerror(rc));
  }
  PT_CHECK(pthread_mutex_unlock(&root->mu));
}

/* Post this rank's op, wait for all, check everyone posted the same op and sizes. */
static Slot *ip_enter(Rank *r, Slot s) {
  Ctx *x = r->x;
  s.seq = ++r->seq;
  x->slot[r->rank] = s;
  ip_barrier(r, s.op);
  const Slot *a = &x->slot[0];
  for (int p = 1; p < x->n; p++) {
    const Slot *b = &x->slot[p];
    if (b->op == a->op && b->seq == a->seq && b->n == a->n && b->root == a->root) continue;
    PT_CHECK(pthread_mutex_lock(&x->root->mu));
    ip_leave_locked(r, INPROC_FAILED,
                    "the ranks disagree on a collective: rank 0 calls %s #%llu (size %lld, root "
                    "%d), rank %d calls %s #%llu (size %lld, root %d)",
                    ip_op_name[a->op], (unsigned long long)a->seq, (long long)a->n, a->root, p,
                    ip_op_name[b->op], (unsigned long long)b->seq, (long long)b->n, b->root);
  }
  return x->slot;
}

static void ip_fail(Rank *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
_Noreturn static void ip_fail(Rank *r, const char *fmt, ...) {
  char m[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(m, sizeof m, fmt, ap);
  va_end(ap);
  PT_CHECK(pthread_mutex_lock(&r->x->root->mu));
  ip_leave_locked(r, INPROC_FAILED, "%s", m);
}

/* ------------------------------------------------------------------ collectives */

static void ip_barrier_op(Comm *c) {
  Rank *r = c->impl;
  ip_enter(r, (Slot){.op = IP_BARRIER});
  ip_barrier(r, IP_BARRIER);
}

#define IP_CHUNK 1024
#define IP_ALL_REDUCE(NAME, T, OP)                                                                 \
  static void NAME(Comm *c, T *buf, int64_t len) {                                                 \
    Rank *r = c->impl;                                                                             \
    if (len < 0) ip_fail(r, "%s: negative length %lld", ip_op_name[OP], (long long)len);           \
    Slot *s = ip_enter(r, (Slot){.op = OP, .n = len, .buf = buf});                                 \
    int n = r->x->n;                                                                               \
    int64_t lo = len * r->rank / n, hi = len * (r->rank + 1) / n;                                  \
    T tmp[IP_CHUNK];                                                                               \
    for (int64_t i0 = lo; i0 < hi; i0 += IP_CHUNK) {                                               \
      int64_t m = MC_MIN((int64_t)IP_CHUNK, hi - i0);                                              \
      memcpy(tmp, (const T *)s[0].buf + i0, sizeof(T) * (size_t)m);                                \
      for (int p = 1; p < n; p++) {                                                                \
        const T *b = (const T *)s[p].buf + i0;                                                     \
        for (int64_t j = 0; j < m; j++)                                                            \
          tmp[j] += b[j];                                                                          \
      }                                                                                            \
      for (int p = 0; p < n; p++)                                                                  \
        memcpy((T *)s[p].buf + i0, tmp, sizeof(T) * (size_t)m);                                    \
    }                                                                                              \
    ip_barrier(r, OP);                                                                             \
  }
IP_ALL_REDUCE(ip_all_reduce_f32, float, IP_AR_F32)
IP_ALL_REDUCE(ip_all_reduce_f64, double, IP_AR_F64)

static void ip_all_to_allv(Comm *c, const void *send, const int64_t *scount, const int64_t *sdispl,
                           void *recv, const int64_t *rcount, const int64_t *rdispl) {
  Rank *r = c->impl;
  int n = r->x->n, me = r->rank;
  for (int p = 0; p < n; p++)
    if (scount[p] < 0 || sdispl[p] < 0 || rcount[p] < 0 || rdispl[p] < 0)
      ip_fail(r, "all_to_allv: negative count or displacement for peer %d", p);
  Slot *s = ip_enter(r, (Slot){.op = IP_A2AV, .send = send, .scount = scount, .sdispl = sdispl});
  for (int p = 0; p < n; p++) {
    int64_t nb = s[p].scount[me];
    if (nb != rcount[p])
      ip_fail(r,
              "all_to_allv (#%llu): rank %d sends %lld bytes to rank %d, which expects %lld "
              "(exchange the counts with comm_all_to_all_counts)",
              (unsigned long long)r->seq, p, (long long)nb, me, (long long)rcount[p]);
    if (nb) memcpy((char *)recv + rdispl[p], (const char *)s[p].send + s[p].sdispl[me], (size_t)nb);
  }
  ip_barrier(r, IP_A2AV);
}

static void ip_all_gather(Comm *c, const void *send, void *recv, size_t bytes) {
  Rank *r = c->impl;
  Slot *s = ip_enter(r, (Slot){.op = IP_GATHER, .n = (int64_t)bytes, .send = send});
  for (int p = 0; p < r->x->n; p++)
    if (bytes) memcpy((char *)recv + bytes * (size_t)p, s[p].send, bytes);
  ip_barrier(r, IP_GATHER);
}

static void ip_broadcast(Comm *c, void *buf, size_t bytes, int root) {
  Rank *r = c->impl;
  if (root < 0 || root >= r->x->n) ip_fail(r, "broadcast: root %d is not a rank", root);
  Slot *s = ip_enter(r, (Slot){.op = IP_BCAST, .n = (int64_t)bytes, .root = root, .buf = buf});
  if (r->rank != root && bytes) memcpy(buf, s[root].buf, bytes);
  ip_barrier(r, IP_BCAST);
}

/* ------------------------------------------------------------------ subsets */

static Comm *ip_subset(Comm *c, uint64_t mask) {
  Rank *r = c->impl;
  Ctx *x = r->x, *root = x->root;
  uint64_t gm = 0;
  int n = 0, me = -1;
  for (int q = 0; q < x->n; q++)
    if (mask >> q & 1) {
      if (q == r->rank) me = n;
      gm |= (uint64_t)1 << x->glob[q];
      n++;
    }
  if (me < 0) ip_fail(r, "subset 0x%llx does not hold this rank", (unsigned long long)mask);
  if (n == x->n) return c;
  for (Rank *s = r->top->next_sub; s; s = s->next_sub)
    if (s->x->mask == gm) return &s->comm;
  /* the first member to get here makes the shared context; the others find it */
  PT_CHECK(pthread_mutex_lock(&root->mu));
  Ctx *sx = root->next_sub;
  while (sx && sx->mask != gm)
    sx = sx->next_sub;
  if (!sx) {
    sx = mc_calloc(1, sizeof(Ctx));
    sx->root = root;
    sx->mask = gm;
    sx->timeout = root->timeout;
    sx->quiet = root->quiet;
    sx->first_rank = -1;
    for (int q = 0; q < RT_INPROC_MAX && sx->n < n; q++)
      if (gm >> q & 1) sx->glob[sx->n++] = q;
    sx->next_sub = root->next_sub;
    root->next_sub = sx;
  }
  PT_CHECK(pthread_mutex_unlock(&root->mu));
  Rank *s = mc_calloc(1, sizeof(Rank));
  s->comm = r->comm;
  s->comm.rank = me;
  s->comm.size = n;
  s->comm.impl = s;
  s->x = sx;
  s->rank = me;
  s->grank = r->grank;
  s->top = r->top;
  s->next_sub = r->top->next_sub; /* only this thread touches its list */
  r->top->next_sub = s;
  return &s->comm;
}

/* ------------------------------------------------------------------ launcher */

static void *ip_thread(void *arg) {
  Rank *r = arg;
  r->fn(&r->comm, r->arg);
  Ctx *x = r->x;
  PT_CHECK(pthread_mutex_lock(&x->root->mu));
  x->status[r->rank] = INPROC_OK;
  x->done[r->rank] = true;
  x->ndone++;
  PT_CHECK(pthread_cond_broadcast(&x->root->cv));
  PT_CHECK(pthread_cond_broadcast(&x->done_cv));
  PT_CHECK(pthread_mutex_unlock(&x->root->mu));
  return NULL;
}

int rt_inproc_run_opts(int n, void (*fn)(Comm *c, void *arg), void *arg, const CommOpts *o,
                       InprocReport *rep) {
  if (n < 1 || n > RT_INPROC_MAX)
    mc_die("in-process devices: %d is not between 1 and %d", n, RT_INPROC_MAX);
  double t0 = mc_now();
  Ctx *x = mc_calloc(1, sizeof(Ctx));
  x->n = n;
  x->root = x;
  x->mask = n >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << n) - 1;
  for (int i = 0; i < n; i++)
    x->glob[i] = i;
  x->timeout = o ? o->timeout : comm_opts_default().timeout;
  x->quiet = atomic_load(&ip_quiet);
  x->first_rank = -1;
  pthread_condattr_t ca;
  PT_CHECK(pthread_condattr_init(&ca));
  PT_CHECK(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC));
  PT_CHECK(pthread_mutex_init(&x->root->mu, NULL));
  PT_CHECK(pthread_cond_init(&x->root->cv, &ca));
  PT_CHECK(pthread_cond_init(&x->done_cv, &ca));
  PT_CHECK(pthread_condattr_destroy(&ca));
  Rank *ranks = mc_calloc((size_t)n, sizeof(Rank));
  for (int i = 0; i < n; i++) {
    Rank *r = &ranks[i];
    r->x = x;
    r->rank = i;
    r->grank = i;
    r->top = r;
    r->fn = fn;
    r->arg = arg;
    r->comm = (Comm){.name = "inproc",
                     .rank = i,
                     .size = n,
                     .impl = r,
                     .all_reduce_sum_f32 = ip_all_reduce_f32,
                     .all_reduce_sum_f64 = ip_all_reduce_f64,
                     .all_to_allv = ip_all_to_allv,
                     .all_gather = ip_all_gather,
                     .broadcast = ip_broadcast,
                     .barrier = ip_barrier_op,
                     .abort = ip_abort,
                     .subset = ip_subset};
  }
  for (int i = 0; i < n; i++)
    PT_CHECK(pthread_create(&ranks[i].th, NULL, ip_thread, &ranks[i]));

  /* Wait for every rank; after a failure, at most the timeout for the rest. */
  PT_CHECK(pthread_mutex_lock(&x->root->mu));
  while (x->ndone < n) {
    if (!x->aborted) {
      PT_CHECK(pthread_cond_wait(&x->done_cv, &x->root->mu));
      continue;
    }
    struct timespec dl;
    double left = x->timeout - (mc_now() - x->t_fail);
    if (left <= 0) break;
    ip_deadline(left, &dl);
    int rc = pthread_cond_timedwait(&x->done_cv, &x->root->mu, &dl);
    if (rc && rc != ETIMEDOUT)
      mc_die("pthread_cond_timedwait failed at %s:%d: %s", __FILE__, __LINE__, strerror(rc));
  }
  int stuck = 0;
  for (int i = 0; i < n; i++)
    if (!x->done[i]) {
      stuck++;
      x->status[i] = INPROC_STUCK;
      snprintf(x->msg[i], sizeof x->msg[i],
               "did not stop within %g s after rank %d failed (left running)", x->timeout,
               x->first_rank);
      if (!x->quiet) comm_print_error(i, x->msg[i]);
    }
  PT_CHECK(pthread_mutex_unlock(&x->root->mu));
  for (int i = 0; i < n; i++) {
    if (x->status[i] == INPROC_STUCK)
      PT_CHECK(pthread_detach(ranks[i].th));
    else
      PT_CHECK(pthread_join(ranks[i].th, NULL));
  }
  int failed = x->first_rank >= 0;
  if (rep) {
    memset(rep, 0, sizeof *rep);
    rep->n = n;
    for (int i = 0; i < n; i++) {
      rep->status[i] = x->status[i];
      memcpy(rep->message[i], x->msg[i], sizeof rep->message[i]);
    }
    rep->first_rank = x->first_rank;
    memcpy(rep->first, x->first, sizeof rep->first);
    rep->seconds = mc_now() - t0;
  }
  if (!stuck) { /* a stuck thread may still touch the context: then it stays */
    PT_CHECK(pthread_cond_destroy(&x->root->cv));
    PT_CHECK(pthread_cond_destroy(&x->done_cv));
    PT_CHECK(pthread_mutex_destroy(&x->root->mu));
    for (int i = 0; i < n; i++)
      for (Rank *s = ranks[i].next_sub, *nx; s; s = nx) {
        nx = s->next_sub;
        mc_free(s);
      }
    for (Ctx *s = x->next_sub, *nx; s; s = nx) {
      nx = s->next_sub;
      mc_free(s);
    }
    mc_free(ranks);
    mc_free(x);
  }
  return failed;
}

int rt_inproc_run_report(int n, void (*fn)(Comm *c, void *arg), void *arg, InprocReport *rep) {
  return rt_inproc_run_opts(n, fn, arg, NULL, rep);
}

int rt_inproc_run(int n, void (*fn)(Comm *c, void *arg), void *arg) {
  return rt_inproc_run_opts(n, fn, arg, NULL, NULL);
}
