/* comm_util.c: backend-independent helpers of the communicator (comm.h): the counts
 * exchange before an all-to-allv, the variable-size gather, displacements, the cross-rank
 * consistency check, the timeout setting, error printing, and the single-device communicator. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "comm.h"

const char *const comm_kind_names[CK_COUNT] = {
    "all_to_all",      "all_to_all_back",   "all_reduce",   "reshard",      "all_gather_topm",
    "all_gather_rows", "sparse_all_reduce", "table_gather", "table_scatter"};

void comm_all_to_all_counts(Comm *c, const int64_t *send_counts, int64_t *recv_counts) {
  int n = c->size;
  int64_t *cnt = mc_malloc(sizeof(int64_t) * 2 * (size_t)n);
  int64_t *displ = cnt + n;
  for (int p = 0; p < n; p++) {
    cnt[p] = (int64_t)sizeof(int64_t);
    displ[p] = (int64_t)sizeof(int64_t) * p;
  }
  c->all_to_allv(c, send_counts, cnt, displ, recv_counts, cnt, displ);
  mc_free(cnt);
}

void comm_gatherv(Comm *c, const void *send, void *recv, const int64_t *counts, int root) {
  int n = c->size;
  int64_t *sc = mc_calloc((size_t)n * 4, sizeof(int64_t)), *sd = sc + n, *rc = sc + 2 * n,
          *rd = sc + 3 * n;
  for (int p = 0; p < n; p++) /* the same bytes to every receiver (sdispl 0) */
    sc[p] = root < 0 || p == root ? counts[c->rank] : 0;
  if (root < 0 || c->rank == root)
    for (int p = 0; p < n; p++)
      rc[p] = counts[p];
  comm_displs(rc, n, rd);
  char dummy[2] = {0, 0}; /* zero bytes, distinct addresses */
  c->all_to_allv(c, send ? send : &dummy[0], sc, sd, recv ? recv : &dummy[1], rc, rd);
  mc_free(sc);
}

int64_t comm_displs(const int64_t *counts, int n, int64_t *displs) {
  int64_t t = 0;
  for (int p = 0; p < n; p++) {
    displs[p] = t;
    t += counts[p];
  }
  return t;
}

int comm_find_mismatch(Comm *c, const char *what, uint64_t value, char *msg, size_t msglen) {
  int n = c->size;
  uint64_t *all = mc_malloc(sizeof(uint64_t) * (size_t)n);
  c->all_gather(c, &value, all, sizeof(uint64_t));
  int differ = 0;
  for (int p = 1; p < n; p++)
    differ += all[p] != all[0];
  if (differ && msg && msglen) {
    McBuf b = {0};
    mc_buf_printf(&b, "inconsistent %s across ranks: rank 0 has %#llx; %d rank%s differ%s:", what,
                  (unsigned long long)all[0], differ, differ == 1 ? "" : "s",
                  differ == 1 ? "s" : "");
    int shown = 0;
    for (int p = 1; p < n; p++) {
      if (all[p] == all[0]) continue;
      if (shown++ == 8) {
        mc_buf_printf(&b, " ...");
        break;
      }
      mc_buf_printf(&b, " rank %d has %#llx", p, (unsigned long long)all[p]);
    }
    snprintf(msg, msglen, "%s", b.data);
    mc_buf_free(&b);
  } else if (msg && msglen) {
    msg[0] = 0;
  }
  mc_free(all);
  return differ;
}

void comm_check_same(Comm *c, const char *what, uint64_t value) {
  char msg[512];
  if (!comm_find_mismatch(c, what, value, msg, sizeof msg)) return;
  /* every rank knows; rank 0 reports, the others wait to be stopped by it */
  if (c->rank != 0) c->barrier(c);
  c->abort(c, msg);
}

uint64_t comm_hash_bytes(const void *p, size_t n, uint64_t h0) {
  const unsigned char *s = p;
  uint64_t h = h0 ? h0 : 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

CommOpts comm_opts_default(void) {
  return (CommOpts){.timeout = 60.0, .check = false, .mpi_chunk = 0};
}

CommOpts comm_opts_from_env(void) {
  CommOpts o = comm_opts_default();
  const char *s = getenv("MOEC_COMM_TIMEOUT");
  if (s && *s) {
    char *end;
    errno = 0;
    o.timeout = strtod(s, &end);
    if (errno || *end || !(o.timeout > 0) || !isfinite(o.timeout))
      mc_die("MOEC_COMM_TIMEOUT='%s' is not a positive number of seconds", s);
  }
  const char *ck = getenv("MOEC_COMM_CHECK");
  o.check = ck && *ck && strcmp(ck, "0") != 0;
  const char *cs = getenv("MOEC_COMM_MPI_CHUNK");
  if (cs && *cs) {
    char *end;
    errno = 0;
    long long v = strtoll(cs, &end, 10);
    if (errno || *end || v < 1 || v > 2147483647LL)
      mc_die("MOEC_COMM_MPI_CHUNK='%s' is not 1..2^31-1 bytes", cs);
    o.mpi_chunk = v;
  }
  return o;
}

void comm_print_error(int rank, const char *reason) {
  char line[1024];
  int k = snprintf(line, sizeof line, "moec: error: rank %d: %s\n", rank, reason);
  if (k < 0) return;
  if ((size_t)k >= sizeof line) {
    k = (int)sizeof line - 1;
    line[k - 1] = '\n';
  }
  fflush(stdout);
  /* one write(2): lines of different ranks never interleave */
  ssize_t w = write(2, line, (size_t)k);
  (void)w;
}

/* ------------------------------------------------------------------ one device */

static void self_ar_f32(Comm *c, float *buf, int64_t n) {
  (void)c, (void)buf, (void)n;
}
static void self_ar_f64(Comm *c, double *buf, int64_t n) {
  (void)c, (void)buf, (void)n;
}

static void self_abort(Comm *c, const char *reason) {
  comm_print_error(c->rank, reason);
  exit(1);
}

static void self_all_to_allv(Comm *c, const void *send, const int64_t *scount,
                             const int64_t *sdispl, void *recv, const int64_t *rcount,
                             const int64_t *rdispl) {
  if (scount[0] != rcount[0] || scount[0] < 0 || sdispl[0] < 0 || rdispl[0] < 0) {
    char m[160];
    snprintf(m, sizeof m, "all_to_allv: rank 0 sends itself %lld bytes but expects %lld",
             (long long)scount[0], (long long)rcount[0]);
    self_abort(c, m);
  }
  if (scount[0])
    memmove((char *)recv + rdispl[0], (const char *)send + sdispl[0], (size_t)scount[0]);
}

static void self_all_gather(Comm *c, const void *send, void *recv, size_t bytes) {
  (void)c;
  if (bytes) memmove(recv, send, bytes);
}

static void self_broadcast(Comm *c, void *buf, size_t bytes, int root) {
  (void)buf, (void)bytes;
  if (root != 0) self_abort(c, "broadcast: root is not a rank");
}

static void self_barrier(Comm *c) {
  (void)c;
}

static Comm *self_subset(Comm *c, uint64_t mask) {
  if (mask != 1) self_abort(c, "subset: rank 0 of 1 is the only rank");
  return c;
}

uint64_t comm_all_mask(const Comm *c) {
  return c->size >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << c->size) - 1;
}

Comm *comm_subset(Comm *c, uint64_t mask) {
  mask &= comm_all_mask(c);
  if (mask == comm_all_mask(c)) return c;
  if (!(mask >> c->rank & 1)) {
    char m[128];
    snprintf(m, sizeof m, "subset 0x%llx of the ranks does not hold this rank",
             (unsigned long long)mask);
    c->abort(c, m);
  }
  if (!c->subset) c->abort(c, "this communicator has no subsets (device sets from on(...))");
  return c->subset(c, mask);
}

Comm *rt_comm_self(void) {
  static Comm self = {.name = "self",
                      .rank = 0,
                      .size = 1,
                      .impl = NULL,
                      .all_reduce_sum_f32 = self_ar_f32,
                      .all_reduce_sum_f64 = self_ar_f64,
                      .all_to_allv = self_all_to_allv,
                      .all_gather = self_all_gather,
                      .broadcast = self_broadcast,
                      .barrier = self_barrier,
                      .abort = self_abort,
                      .subset = self_subset};
  return &self;
}
