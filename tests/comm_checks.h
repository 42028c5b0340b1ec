/* comm_checks.h: the communicator checks shared by tests/test_comm.c (in-process
 * threads) and tests/test_comm_mpi.c (MPI ranks). Every rank runs
 * comm_basic_checks on its own Comm and counts into its own CommErrors (thread
 * safe: one per rank). Inputs are counter-based random numbers of (seed, rank, i),
 * so every rank can recompute every peer's data and the expected results. */
#ifndef MOEC_TEST_COMM_CHECKS_H
#define MOEC_TEST_COMM_CHECKS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "../common/common.h"
#include "../runtime/comm.h"

typedef struct CommErrors {
  int checks, failures;
  char first[256];
} CommErrors;

__attribute__((format(printf, 3, 4))) static void cc_check(CommErrors *e, bool ok, const char *fmt,
                                                           ...) {
  e->checks++;
  if (ok) return;
  if (!e->failures++) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->first, sizeof e->first, fmt, ap);
    va_end(ap);
  }
}

/* Mixed magnitudes, so that the order of a sum changes its rounding. */
static double cc_value(uint64_t seed, int rank, int64_t i) {
  uint64_t key = mc_rng_key(seed, (uint64_t)rank, 0);
  double u = mc_rng_uniform(key, (uint64_t)i) - 0.5;
  static const double scale[4] = {1e-3, 1.0, 3e4, 1e8};
  return u * scale[mc_hash64(key ^ (uint64_t)i) & 3];
}

#define CC_ALL_REDUCE_CHECK(NAME, T, FN)                                                           \
  static void NAME(Comm *c, CommErrors *e, int64_t len, uint64_t seed) {                           \
    int n = c->size;                                                                               \
    T *x = mc_malloc(sizeof(T) * (size_t)(len + 1)),                                               \
      *y = mc_malloc(sizeof(T) * (size_t)(len + 1));                                               \
    T *want = mc_malloc(sizeof(T) * (size_t)(len + 1)),                                            \
      *rev = mc_malloc(sizeof(T) * (size_t)(len + 1));                                             \
    for (int64_t i = 0; i < len; i++) {                                                            \
      x[i] = y[i] = (T)cc_value(seed, c->rank, i);                                                 \
      want[i] = (T)cc_value(seed, 0, i);                                                           \
      for (int p = 1; p < n; p++)                                                                  \
        want[i] += (T)cc_value(seed, p, i);                                                        \
      rev[i] = (T)cc_value(seed, n - 1, i);                                                        \
      for (int p = n - 2; p >= 0; p--)                                                             \
        rev[i] += (T)cc_value(seed, p, i);                                                         \
    }                                                                                              \
    c->FN(c, x, len);                                                                              \
    cc_check(e, len == 0 || memcmp(x, want, sizeof(T) * (size_t)len) == 0,                         \
             "%s: len %lld: not the rank-order sum", #FN, (long long)len);                         \
    c->FN(c, y, len); /* a rerun gives the same bits */                                            \
    cc_check(e, len == 0 || memcmp(x, y, sizeof(T) * (size_t)len) == 0, "%s: rerun differs", #FN); \
    int64_t order_matters = 0;                                                                     \
    for (int64_t i = 0; i < len; i++)                                                              \
      order_matters += memcmp(&want[i], &rev[i], sizeof(T)) != 0;                                  \
    if (n >= 3 && len >= 1000) /* the test can tell rank order from another order */               \
      cc_check(e, order_matters > 0, "%s: the inputs do not depend on order", #FN);                \
    char msg[256];                                                                                 \
    cc_check(e,                                                                                    \
             comm_find_mismatch(c, #FN " result", comm_hash_bytes(x, sizeof(T) * (size_t)len, 0),  \
                                msg, sizeof msg) == 0,                                             \
             "%s: ranks differ: %s", #FN, msg);                                                    \
    mc_free(x);                                                                                    \
    mc_free(y);                                                                                    \
    mc_free(want);                                                                                 \
    mc_free(rev);                                                                                  \
  }
CC_ALL_REDUCE_CHECK(cc_all_reduce_f32, float, all_reduce_sum_f32)
CC_ALL_REDUCE_CHECK(cc_all_reduce_f64, double, all_reduce_sum_f64)

/* Bytes rank s sends to rank d in trial t: uneven, a third of them zero. */
static int64_t cc_count(int t, int s, int d, int64_t maxc) {
  if (t == 0) return 0;
  uint64_t h = mc_hash64(((uint64_t)t << 40) ^ ((uint64_t)s << 20) ^ (uint64_t)d);
  if (h % 3 == 0) return 0;
  return (int64_t)((h >> 8) % (uint64_t)maxc) + 1;
}
static unsigned char cc_byte(int t, int s, int d, int64_t i) {
  return (unsigned char)(s * 31 + d * 7 + i * 13 + t);
}

static void cc_all_to_allv(Comm *c, CommErrors *e, int t, int64_t maxc) {
  int n = c->size, me = c->rank;
  int64_t *sc = mc_malloc(sizeof(int64_t) * 5 * (size_t)n);
  int64_t *sd = sc + n, *rc = sd + n, *rd = rc + n, *want = rd + n;
  /* send blocks in reverse peer order with 3-byte gaps; receive blocks with 5-byte gaps */
  int64_t stot = 0, rtot = 0;
  for (int p = n - 1; p >= 0; p--) {
    sc[p] = cc_count(t, me, p, maxc);
    sd[p] = stot;
    stot += sc[p] + 3;
  }
  unsigned char *send = mc_malloc((size_t)stot + 1);
  memset(send, 0xAB, (size_t)stot + 1);
  for (int p = 0; p < n; p++)
    for (int64_t i = 0; i < sc[p]; i++)
      send[sd[p] + i] = cc_byte(t, me, p, i);
  comm_all_to_all_counts(c, sc, rc);
  for (int p = 0; p < n; p++) {
    want[p] = cc_count(t, p, me, maxc);
    cc_check(e, rc[p] == want[p], "counts exchange: from rank %d got %lld, want %lld", p,
             (long long)rc[p], (long long)want[p]);
    rd[p] = rtot;
    rtot += want[p] + 5;
  }
  unsigned char *recv = mc_malloc((size_t)rtot + 1);
  memset(recv, 0xEE, (size_t)rtot + 1);
  c->all_to_allv(c, send, sc, sd, recv, want, rd);
  int64_t bad = 0, gap_bad = 0;
  for (int p = 0; p < n; p++) {
    for (int64_t i = 0; i < want[p]; i++)
      bad += recv[rd[p] + i] != cc_byte(t, p, me, i);
    for (int64_t i = 0; i < 5; i++)
      gap_bad += recv[rd[p] + want[p] + i] != 0xEE;
  }
  cc_check(e, bad == 0, "all_to_allv trial %d: %lld wrong bytes", t, (long long)bad);
  cc_check(e, gap_bad == 0, "all_to_allv trial %d: wrote %lld bytes outside the blocks", t,
           (long long)gap_bad);
  mc_free(send);
  mc_free(recv);
  mc_free(sc);
}

/* The collectives on a subset communicator (numbered 0..size-1 within it). */
static void cc_on_subset(Comm *s, CommErrors *e, uint64_t seed) {
  static const int64_t lens[] = {0, 1, 1000, 4099};
  for (size_t k = 0; k < MC_ARRAY_LEN(lens); k++) {
    cc_all_reduce_f32(s, e, lens[k], seed + k);
    cc_all_reduce_f64(s, e, lens[k], seed + 10 + k);
  }
  for (int t = 0; t < 3; t++)
    cc_all_to_allv(s, e, t, 40);
  int mine = 1000 + s->rank, all[64];
  s->all_gather(s, &mine, all, sizeof mine);
  for (int p = 0; p < s->size; p++)
    cc_check(e, all[p] == 1000 + p, "subset all_gather: wrong entry of rank %d", p);
  int b = s->rank == s->size - 1 ? 7 : 0;
  s->broadcast(s, &b, sizeof b, s->size - 1);
  cc_check(e, b == 7, "subset broadcast");
  s->barrier(s);
}

/* Device subsets (comm_subset): disjoint subsets at work at the same time (the odd and
 * the even ranks), a subset of a subset, the same Comm on a second call, ranks and sizes
 * in ascending order of the parent's ranks. */
static void comm_subset_checks(Comm *c, CommErrors *e) {
  int n = c->size, me = c->rank;
  cc_check(e, comm_subset(c, comm_all_mask(c)) == c, "subset of all ranks is not the comm");
  if (n < 2) return;
  uint64_t odd = 0, even = 0;
  for (int q = 0; q < n; q++)
    *(q % 2 ? &odd : &even) |= (uint64_t)1 << q;
  Comm *s = comm_subset(c, me % 2 ? odd : even);
  cc_check(e, comm_subset(c, me % 2 ? odd : even) == s, "subset: a second call made another");
  cc_check(e, s->size == (me % 2 ? n / 2 : (n + 1) / 2) && s->rank == me / 2,
           "subset: rank %d is %d of %d", me, s->rank, s->size);
  cc_on_subset(s, e, me % 2 ? 500 : 600);
  if (n >= 3 && me != 1) { /* {0, 2, 3, ...} then its subset without rank 0 of c */
    Comm *t = comm_subset(c, comm_all_mask(c) & ~(uint64_t)2);
    cc_on_subset(t, e, 700);
    if (me != 0) {
      Comm *u = comm_subset(t, comm_all_mask(t) & ~(uint64_t)1);
      cc_check(e, u->size == n - 2 && u->rank == me - 2, "subset of a subset: %d of %d", u->rank,
               u->size);
      cc_on_subset(u, e, 800);
    }
  }
  c->barrier(c);
}

static void comm_basic_checks(Comm *c, CommErrors *e) {
  int n = c->size, me = c->rank;
  static const int64_t lens[] = {0, 1, 3, 7, 1000, 4099, 100003};
  for (size_t k = 0; k < MC_ARRAY_LEN(lens); k++) {
    cc_all_reduce_f32(c, e, lens[k], 100 + k);
    cc_all_reduce_f64(c, e, lens[k], 200 + k);
  }
  cc_all_reduce_f32(c, e, n - 1, 77); /* fewer elements than ranks */

  for (int t = 0; t < 6; t++)
    cc_all_to_allv(c, e, t, t < 4 ? 40 : 300000);

  uint64_t mine[3] = {(uint64_t)me, (uint64_t)me * me, 42}, all[3 * 64];
  c->all_gather(c, mine, all, sizeof mine);
  for (int p = 0; p < n; p++)
    cc_check(e,
             all[3 * p] == (uint64_t)p && all[3 * p + 1] == (uint64_t)p * p && all[3 * p + 2] == 42,
             "all_gather: wrong entry of rank %d", p);

  /* comm_gatherv: uneven sizes (rank 1 sends nothing), to one root and to all */
  int64_t gc[64], gtot = 0;
  for (int p = 0; p < n; p++) {
    gc[p] = p == 1 ? 0 : 5 + 13 * p;
    gtot += gc[p];
  }
  unsigned char gs[64 * 13 + 5], gr[64 * 64 * 13 + 64 * 5 + 1];
  for (int i = 0; i < gc[me]; i++)
    gs[i] = (unsigned char)(me * 7 + i);
  for (int k = 0; k < 2; k++) {
    int r = k == 0 ? -1 : n - 1; /* to every rank, then to the last */
    memset(gr, 0xee, sizeof gr);
    comm_gatherv(c, gs, gr, gc, r);
    if (r >= 0 && me != r) continue;
    int64_t at = 0, bad = 0;
    for (int p = 0; p < n; p++)
      for (int i = 0; i < gc[p]; i++)
        bad += gr[at++] != (unsigned char)(p * 7 + i);
    cc_check(e, bad == 0 && gr[gtot] == 0xee, "gatherv to %d: %lld wrong bytes", r, (long long)bad);
  }

  unsigned char b[1000];
  for (int root = 0; root < n; root++) {
    for (int i = 0; i < 1000; i++)
      b[i] = me == root ? (unsigned char)(i * 3 + root) : 0x55;
    c->broadcast(c, b, sizeof b, root);
    int bad = 0;
    for (int i = 0; i < 1000; i++)
      bad += b[i] != (unsigned char)(i * 3 + root);
    cc_check(e, bad == 0, "broadcast from %d: %d wrong bytes", root, bad);
  }
  c->barrier(c);

  char msg[256];
  cc_check(e, comm_find_mismatch(c, "x", 1234, msg, sizeof msg) == 0, "find_mismatch: false alarm");
  int d = comm_find_mismatch(c, "model hash", me == n - 1 && n > 1 ? 1 : 0, msg, sizeof msg);
  cc_check(e, d == (n > 1), "find_mismatch: %d ranks differ", d);
  char want[64];
  snprintf(want, sizeof want, "rank %d has 0x1", n - 1);
  cc_check(e, n == 1 || strstr(msg, want) != NULL, "find_mismatch message: %s", msg);
  comm_check_same(c, "parameter count", 99); /* agree: returns */
  c->barrier(c);
  comm_subset_checks(c, e);
}

#endif
