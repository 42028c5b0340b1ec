/* test_comm.c: the in-process communicator (runtime/comm_inproc.c) on 1..4 threads:
 * all_reduce_sum equals the rank-order sum bit for bit on every rank, all_to_allv
 * with random uneven counts (zeros included) delivers exactly, all_gather and
 * broadcast, comm_check_same; and the failures: a rank that aborts, hangs, returns
 * early, calls another collective or sends the wrong count makes every rank stop
 * with a clear error within bounded time. The checks shared with the MPI test are
 * in comm_checks.h. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/common.h"
#include "../runtime/comm.h"
#include "comm_checks.h"
#include "test.h"

static void run_basic(Comm *c, void *arg) {
  CommErrors *e = arg;
  comm_basic_checks(c, &e[c->rank]);
}

static int count_status(const InprocReport *r, InprocStatus s) {
  int k = 0;
  for (int i = 0; i < r->n; i++)
    k += r->status[i] == s;
  return k;
}

/* ---------------------------------------------------------------- failure cases */

static void fn_abort(Comm *c, void *arg) {
  (void)arg;
  c->barrier(c);
  if (c->rank == 1) c->abort(c, "rank one gives up: test reason");
  float v[16] = {0};
  for (int i = 0; i < 100; i++)
    c->all_reduce_sum_f32(c, v, 16);
}

static void fn_hang(Comm *c, void *arg) {
  double *sleep_s = arg;
  float v[4] = {1, 2, 3, 4};
  c->all_reduce_sum_f32(c, v, 4);
  if (c->rank == c->size - 1) usleep((useconds_t)(*sleep_s * 1e6));
  c->all_reduce_sum_f32(c, v, 4);
}

static void fn_return_early(Comm *c, void *arg) {
  (void)arg;
  if (c->rank == 0) return;
  c->barrier(c);
}

static void fn_mismatch_op(Comm *c, void *arg) {
  (void)arg;
  double v[3] = {0};
  uint64_t g[8];
  if (c->rank == 1)
    c->all_gather(c, v, g, 8);
  else
    c->all_reduce_sum_f64(c, v, 3);
}

static void fn_bad_counts(Comm *c, void *arg) {
  (void)arg;
  int n = c->size;
  int64_t sc[4], sd[4], rc[4], rd[4];
  char sbuf[64] = {0}, rbuf[64];
  for (int p = 0; p < n; p++)
    sc[p] = rc[p] = 4;
  if (c->rank == 0) sc[1] = 6; /* rank 1 expects 4 */
  comm_displs(sc, n, sd);
  comm_displs(rc, n, rd);
  c->all_to_allv(c, sbuf, sc, sd, rbuf, rc, rd);
}

static void fn_check_same(Comm *c, void *arg) {
  (void)arg;
  comm_check_same(c, "parameter count", 1000); /* agree: returns */
  comm_check_same(c, "model file hash", c->rank == 2 ? 0xbad : 0x600d);
}

static void failure_tests(void) {
  InprocReport r;
  rt_inproc_set_quiet(true);

  /* abort: the others stop at once, long before their 10 s timeout */
  CommOpts o = comm_opts_default();
  o.timeout = 10;
  CHECK(rt_inproc_run_opts(4, fn_abort, NULL, &o, &r) == 1);
  CHECK(r.first_rank == 1);
  CHECK(r.status[1] == INPROC_ABORTED);
  CHECK(count_status(&r, INPROC_FAILED) == 3);
  CHECK(strstr(r.first, "test reason") != NULL);
  CHECK(strstr(r.message[0], "stopped: rank 1 failed: rank one gives up") != NULL);
  CHECK(r.seconds < 2.0);
  printf("abort: %.3f s; rank 0: %s\n", r.seconds, r.message[0]);

  /* a hung rank: the others time out after 1 s naming it; it stops when it wakes */
  o.timeout = 1;
  double hang = 1.4;
  CHECK(rt_inproc_run_opts(3, fn_hang, &hang, &o, &r) == 1);
  CHECK(r.first_rank == 0 || r.first_rank == 1);
  CHECK(strstr(r.first, "timed out after 1 s waiting for rank 2") != NULL);
  CHECK(count_status(&r, INPROC_FAILED) == 3);
  CHECK(r.seconds > 0.9 && r.seconds < 3.0);
  printf("hang: %.3f s; first: %s\n", r.seconds, r.first);

  /* a rank that never comes back: reported stuck after one more timeout */
  hang = 4.0;
  CHECK(rt_inproc_run_opts(2, fn_hang, &hang, &o, &r) == 1);
  CHECK(r.status[1] == INPROC_STUCK && r.status[0] == INPROC_FAILED);
  CHECK(strstr(r.message[1], "did not stop") != NULL);
  CHECK(r.seconds > 1.9 && r.seconds < 3.5);
  printf("stuck: %.3f s; rank 1: %s\n", r.seconds, r.message[1]);

  o.timeout = 10;
  /* a rank returns while the others wait: immediate error, no timeout */
  CHECK(rt_inproc_run_opts(3, fn_return_early, NULL, &o, &r) == 1);
  CHECK(r.status[0] == INPROC_OK);
  CHECK(strstr(r.first, "rank 0 returned") != NULL);
  CHECK(r.seconds < 2.0);

  /* different collectives on different ranks */
  CHECK(rt_inproc_run_opts(3, fn_mismatch_op, NULL, &o, &r) == 1);
  CHECK(strstr(r.first, "disagree") != NULL && strstr(r.first, "rank 1 calls all_gather") != NULL);
  CHECK(count_status(&r, INPROC_FAILED) == 3);

  /* counts that do not match */
  CHECK(rt_inproc_run_opts(2, fn_bad_counts, NULL, &o, &r) == 1);
  CHECK(r.first_rank == 1);
  CHECK(strstr(r.first, "rank 0 sends 6 bytes to rank 1, which expects 4") != NULL);
  CHECK(r.status[0] == INPROC_FAILED);

  /* inconsistent inputs: every rank stops naming the odd one */
  CHECK(rt_inproc_run_opts(4, fn_check_same, NULL, &o, &r) == 1);
  CHECK(count_status(&r, INPROC_ABORTED) >= 1);
  CHECK(strstr(r.first, "inconsistent model file hash across ranks") != NULL);
  CHECK(strstr(r.first, "rank 2 has 0xbad") != NULL);
  CHECK(strstr(r.first, "rank 1 has") == NULL);
  printf("check_same: %s\n", r.first);

  rt_inproc_set_quiet(false);
}

int main(void) {
  for (int n = 1; n <= 4; n++) {
    CommErrors e[4];
    memset(e, 0, sizeof e);
    InprocReport r;
    double t0 = mc_now();
    int rc = rt_inproc_run_report(n, run_basic, e, &r);
    CHECK(rc == 0);
    for (int i = 0; i < n; i++) {
      CHECK(r.status[i] == INPROC_OK);
      CHECK(e[i].checks > 60);
      CHECK(e[i].failures == 0);
      if (e[i].failures) fprintf(stderr, "n=%d rank %d: %s\n", n, i, e[i].first);
    }
    printf("n=%d: %d checks per rank, %.3f s\n", n, e[0].checks, mc_now() - t0);
  }
  CommErrors se = {0}; /* the single-device communicator: the same checks */
  comm_basic_checks(rt_comm_self(), &se);
  CHECK(se.checks > 60 && se.failures == 0);
  if (se.failures) fprintf(stderr, "self: %s\n", se.first);
  failure_tests();
  TEST_DONE();
}
