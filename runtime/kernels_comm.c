/* kernels_comm.c: CPU kernels of the collective ops (ir/ops.def, "collectives"),
 * float32 and float64, executed through ctx->comm (runtime/comm.h).
 *
 *   all_reduce      in place rank-order sum (deterministic, the same bits everywhere);
 *                   i32 tensors (an hmoe's group offsets) through an all_gather
 *   all_to_all      MoE dispatch: each device sends the rows of every expert to the
 *                   expert's device (ctx->expert_dev); the receiver regroups them into
 *                   one contiguous batch per local expert, sources in rank order (so an
 *                   expert sees its rows in the order one device would give them)
 *   all_to_all_back the reverse: expert rows back to their batch device, in the
 *                   sender's original expert-sorted order
 *   all_gather_topm batchwise gating: every expert's cut of the global batch's top m
 *                   rows, from each device's own top candidates (all_gather)
 *   reshard         not supported yet (on(...) rules over device subsets): dies
 * The per-expert row counts are exchanged first (an all_gather of every device's
 * offsets, E+1 int32 each). docs/multidev.md has the layout. Prefix: rt_. */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "runtime.h"

double rt_md_comm_seconds[RT_INPROC_MAX][2];

/* time spent in collectives per rank (ranks >= RT_INPROC_MAX are not counted) */
static void add_time(const Comm *c, int which, double t0) {
  if (c->rank < RT_INPROC_MAX) rt_md_comm_seconds[c->rank][which] += mc_now() - t0;
}

static Comm *need_comm(const KernelCtx *ctx, const Node *n) {
  if (!ctx->comm)
    mc_die("op '%s' (layer '%s') is a collective but this program runs without a communicator",
           ir_ops[n->op].name, n->layer ? n->layer : "?");
  return ctx->comm;
}

static const int *expert_map(const KernelCtx *ctx, const Node *n, int64_t E) {
  int moe = (int)n->ia[0];
  if (!ctx->graph || !ctx->graph->moe_expert_dev || moe < 0 || moe >= ctx->graph->nmoe ||
      ctx->graph->moe_nexperts[moe] != E)
    mc_die("op '%s' (layer '%s'): no expert -> device map for MoE #%d", ir_ops[n->op].name,
           n->layer ? n->layer : "?", moe);
  const int *map = ctx->graph->moe_expert_dev[moe];
  for (int64_t e = 0; e < E; e++)
    if (map[e] < 0 || map[e] >= ctx->ndevices)
      mc_die("MoE '%s': expert %lld is on device %d: replicated experts (place ... : replicate "
             "of an expert layer) are not supported by the multi-device runtime yet",
             ctx->graph->moe_names[moe], (long long)e, map[e]);
  return map;
}

/* cnt[s*E + e]: rows of expert e on device s (every device's offsets, all_gather'ed). */
static int64_t *gather_counts(Comm *c, const int32_t *off, int64_t E) {
  int P = c->size;
  int32_t *all = mc_malloc((size_t)P * (size_t)(E + 1) * sizeof(int32_t));
  c->all_gather(c, off, all, (size_t)(E + 1) * sizeof(int32_t));
  int64_t *cnt = mc_malloc((size_t)P * (size_t)E * sizeof(int64_t));
  for (int s = 0; s < P; s++)
    for (int64_t e = 0; e < E; e++)
      cnt[s * E + e] = all[s * (E + 1) + e + 1] - all[s * (E + 1) + e];
  mc_free(all);
  return cnt;
}

static int64_t row_width(const Tensor *t) {
  return t->shape[0] > 0 ? t->numel / t->shape[0] : 0;
}

/* (x[R,M] rows grouped by expert, offsets i32[E+1]) -> (y[Rcap,M] this device's experts'
 * rows from every device, grouped by expert then source; recv offsets i32[E+1]) */
static void all_to_all(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                       size_t elem) {
  Comm *c = need_comm(ctx, n);
  int P = c->size, me = c->rank;
  const int32_t *off = in[1];
  int32_t *roff = out[1];
  int64_t E = n->in[1]->numel - 1, M = row_width(n->in[0]), cap = n->out[0]->shape[0];
  const int *map = expert_map(ctx, n, E);
  size_t rb = (size_t)M * elem;
  int64_t *cnt = gather_counts(c, off, E);
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  /* send: for each device d, its experts in order, my rows of each */
  char *send = mc_malloc(MC_MAX((size_t)off[E] * rb, 1));
  const char *x = in[0];
  size_t pos = 0;
  for (int d = 0; d < P; d++) {
    sd[d] = (int64_t)pos;
    for (int64_t e = 0; e < E; e++)
      if (map[e] == d) {
        size_t nb = (size_t)(off[e + 1] - off[e]) * rb;
        memcpy(send + pos, x + (size_t)off[e] * rb, nb);
        pos += nb;
      }
    sc[d] = (int64_t)pos - sd[d];
  }
  int64_t total = 0;
  for (int s = 0; s < P; s++) {
    for (int64_t e = 0; e < E; e++)
      if (map[e] == me) rc[s] += cnt[s * E + e];
    total += rc[s];
    rc[s] *= (int64_t)rb;
  }
  if (total > cap)
    mc_die("all_to_all of MoE layer '%s': %lld rows arrive, more than the %lld the buffer holds",
           n->layer ? n->layer : "?", (long long)total, (long long)cap);
  comm_displs(rc, P, rd);
  char *recv = mc_malloc(MC_MAX((size_t)total * rb, 1));
  c->all_to_allv(c, send, sc, sd, recv, rc, rd);
  /* regroup: expert-major, sources in rank order */
  char *y = out[0];
  int64_t *cur = mc_calloc((size_t)P, sizeof(int64_t)); /* bytes consumed per source */
  int64_t r = 0;
  for (int64_t e = 0; e < E; e++) {
    roff[e] = (int32_t)r;
    if (map[e] != me) continue;
    for (int s = 0; s < P; s++) {
      size_t nb = (size_t)cnt[s * E + e] * rb;
      memcpy(y + (size_t)r * rb, recv + rd[s] + cur[s], nb);
      cur[s] += (int64_t)nb;
      r += cnt[s * E + e];
    }
  }
  roff[E] = (int32_t)r;
  if (r < cap) memset(y + (size_t)r * rb, 0, (size_t)(cap - r) * rb);
  mc_free(cur);
  mc_free(recv);
  mc_free(send);
  mc_free(sc);
  mc_free(cnt);
}

/* (y[Rcap,M] in all_to_all's received layout, the senders' offsets i32[E+1]) ->
 * y[R,M] rows back on their batch device at the sender's offsets */
static void all_to_all_back(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                            size_t elem) {
  Comm *c = need_comm(ctx, n);
  int P = c->size, me = c->rank;
  const int32_t *off = in[1];
  int64_t E = n->in[1]->numel - 1, M = row_width(n->in[0]), R = n->out[0]->shape[0];
  const int *map = expert_map(ctx, n, E);
  size_t rb = (size_t)M * elem;
  int64_t *cnt = gather_counts(c, off, E);
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  /* where (e, s) starts in the received layout */
  int64_t *start = mc_calloc((size_t)(P * E), sizeof(int64_t));
  int64_t r = 0;
  for (int64_t e = 0; e < E; e++)
    if (map[e] == me)
      for (int s = 0; s < P; s++) {
        start[s * E + e] = r;
        r += cnt[s * E + e];
      }
  if (r > n->in[0]->shape[0])
    mc_die("all_to_all_back of MoE layer '%s': inconsistent row counts", n->layer ? n->layer : "?");
  const char *ys = in[0];
  char *send = mc_malloc(MC_MAX((size_t)r * rb, 1));
  size_t pos = 0;
  for (int s = 0; s < P; s++) {
    sd[s] = (int64_t)pos;
    for (int64_t e = 0; e < E; e++)
      if (map[e] == me) {
        size_t nb = (size_t)cnt[s * E + e] * rb;
        memcpy(send + pos, ys + (size_t)start[s * E + e] * rb, nb);
        pos += nb;
      }
    sc[s] = (int64_t)pos - sd[s];
  }
  for (int64_t e = 0; e < E; e++)
    rc[map[e]] += cnt[me * E + e] * (int64_t)rb;
  int64_t tot = comm_displs(rc, P, rd);
  char *recv = mc_malloc(MC_MAX((size_t)tot, 1));
  c->all_to_allv(c, send, sc, sd, recv, rc, rd);
  char *y = out[0];
  int64_t *cur = mc_calloc((size_t)P, sizeof(int64_t));
  for (int64_t e = 0; e < E; e++) {
    int d = map[e];
    size_t nb = (size_t)(off[e + 1] - off[e]) * rb;
    memcpy(y + (size_t)off[e] * rb, recv + rd[d] + cur[d], nb);
    cur[d] += (int64_t)nb;
  }
  if (off[E] < R) memset(y + (size_t)off[E] * rb, 0, (size_t)(R - off[E]) * rb);
  mc_free(cur);
  mc_free(recv);
  mc_free(send);
  mc_free(start);
  mc_free(sc);
  mc_free(cnt);
}

static void check_set(const KernelCtx *ctx, const Node *n, int64_t nd) {
  if (nd != ctx->ndevices)
    mc_die("op '%s' (layer '%s') runs over %lld of the %d devices: collectives over a device "
           "subset (place ... : on(...)) are not supported by the multi-device runtime yet",
           ir_ops[n->op].name, n->layer ? n->layer : "?", (long long)nd, ctx->ndevices);
}

/* i32 (an hmoe's group offsets: small): all_gather, then the rank-order sum */
static void all_reduce_i32(Comm *c, const Node *n, const int32_t *x, int32_t *y) {
  int64_t len = n->in[0]->numel;
  int32_t *all = mc_malloc((size_t)c->size * (size_t)MC_MAX(len, 1) * sizeof(int32_t));
  c->all_gather(c, x, all, (size_t)len * sizeof(int32_t));
  for (int64_t i = 0; i < len; i++) {
    int64_t s = 0;
    for (int r = 0; r < c->size; r++)
      s += all[(int64_t)r * len + i];
    if (s > INT32_MAX || s < INT32_MIN)
      mc_die("all_reduce of '%s': the sum overflows int32", n->in[0]->name);
    y[i] = (int32_t)s;
  }
  mc_free(all);
}

static void all_reduce_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  Comm *c = need_comm(ctx, n);
  check_set(ctx, n, n->ia[0]);
  double t0 = mc_now();
  if (n->in[0]->ty.dtype == DT_I32) {
    all_reduce_i32(c, n, in[0], out[0]);
    add_time(c, 1, t0);
    return;
  }
  if (out[0] != in[0]) memcpy(out[0], in[0], (size_t)n->in[0]->numel * sizeof(float));
  c->all_reduce_sum_f32(c, out[0], n->in[0]->numel);
  add_time(c, 1, t0);
}

static void all_reduce_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  Comm *c = need_comm(ctx, n);
  check_set(ctx, n, n->ia[0]);
  double t0 = mc_now();
  if (n->in[0]->ty.dtype == DT_I32) {
    all_reduce_i32(c, n, in[0], out[0]);
    add_time(c, 1, t0);
    return;
  }
  if (out[0] != in[0]) memcpy(out[0], in[0], (size_t)n->in[0]->numel * sizeof(double));
  c->all_reduce_sum_f64(c, out[0], n->in[0]->numel);
  add_time(c, 1, t0);
}

static void a2a_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  double t0 = mc_now();
  all_to_all(ctx, n, in, out, sizeof(float));
  add_time(ctx->comm, 0, t0);
}
static void a2a_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  double t0 = mc_now();
  all_to_all(ctx, n, in, out, sizeof(double));
  add_time(ctx->comm, 0, t0);
}
static void a2ab_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  double t0 = mc_now();
  all_to_all_back(ctx, n, in, out, sizeof(float));
  add_time(ctx->comm, 0, t0);
}
static void a2ab_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  double t0 = mc_now();
  all_to_all_back(ctx, n, in, out, sizeof(double));
  add_time(ctx->comm, 0, t0);
}

/* all_gather_topm (batchwise gating over the global batch; ops.def): each device sends
 * its own top min(m, N) candidates per expert (value, global row; row -1 pads), every
 * device merges the P lists the same way and takes each expert's m-th: the cut. The
 * global top m is inside the union of the devices' top m, so the cut is the one device
 * holding the whole batch would find. Without a communicator (a one-device graph built
 * by hand) the device is alone. */
typedef struct TopmCand {
  double v;
  int64_t row;
} TopmCand;

static int topm_cmp(const void *a, const void *b) { /* gs desc, then global row asc */
  const TopmCand *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return (x->row > y->row) - (x->row < y->row);
}

static void all_gather_topm(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                            bool f64) {
  Comm *c = ctx->comm ? ctx->comm : rt_comm_self();
  int P = c->size;
  if (n->ia[1] > 1 || P > 1) check_set(ctx, n, n->ia[1]);
  double t0 = mc_now();
  int64_t N = n->in[0]->shape[0], E = n->in[0]->shape[1], k = n->ia[0];
  int64_t m = k * N * P / E, mloc = MC_MIN(m, N), row0 = (int64_t)rt_rng_counter0(ctx, N);
  if (N * P >= INT32_MAX) mc_die("batchwise gating: %lld rows are too many", (long long)(N * P));
  size_t esz = f64 ? sizeof(double) : sizeof(float), nb = (size_t)(E * mloc) * (esz + 4);
  char *send = mc_malloc(MC_MAX(nb, 1)), *recv = mc_malloc(MC_MAX(nb * (size_t)P, 1));
  TopmCand *cand = mc_malloc((size_t)MC_MAX(MC_MAX(N, P * mloc), 1) * sizeof(TopmCand));
  const float *gs32 = in[0], *thr32 = in[1];
  const double *gs64 = in[0], *thr64 = in[1];
  for (int64_t e = 0; e < E; e++) {
    int64_t cnt = 0;
    for (int64_t r = 0; r < N; r++) {
      double v = f64 ? gs64[r * E + e] : gs32[r * E + e];
      double t = f64 ? thr64[e] : thr32[e];
      if (ctx->training || v > t) cand[cnt++] = (TopmCand){v, row0 + r};
    }
    qsort(cand, (size_t)cnt, sizeof(TopmCand), topm_cmp);
    for (int64_t j = 0; j < mloc; j++) {
      int64_t at = e * mloc + j;
      double v = j < cnt ? cand[j].v : 0;
      int32_t row = j < cnt ? (int32_t)cand[j].row : -1;
      if (f64)
        ((double *)send)[at] = v;
      else
        ((float *)send)[at] = (float)v;
      memcpy(send + (size_t)(E * mloc) * esz + (size_t)at * 4, &row, 4);
    }
  }
  c->all_gather(c, send, recv, nb);
  float *cv32 = out[0];
  double *cv64 = out[0];
  int32_t *cr = out[1];
  for (int64_t e = 0; e < E; e++) {
    int64_t cnt = 0;
    for (int s = 0; s < P; s++) {
      const char *blk = recv + (size_t)s * nb;
      for (int64_t j = 0; j < mloc; j++) {
        int64_t at = e * mloc + j;
        int32_t row;
        memcpy(&row, blk + (size_t)(E * mloc) * esz + (size_t)at * 4, 4);
        if (row < 0) break;
        cand[cnt++] = (TopmCand){f64 ? ((const double *)blk)[at] : ((const float *)blk)[at], row};
      }
    }
    qsort(cand, (size_t)cnt, sizeof(TopmCand), topm_cmp);
    int64_t take = MC_MIN(cnt, m);
    cr[e] = take > 0 ? (int32_t)cand[take - 1].row : -1;
    if (f64)
      cv64[e] = take > 0 ? cand[take - 1].v : 0;
    else
      cv32[e] = take > 0 ? (float)cand[take - 1].v : 0;
  }
  mc_free(cand);
  mc_free(recv);
  mc_free(send);
  if (ctx->comm) add_time(c, 1, t0);
}

static void topm_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  all_gather_topm(ctx, n, in, out, false);
}
static void topm_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  all_gather_topm(ctx, n, in, out, true);
}

static void reshard(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  (void)ctx, (void)in, (void)out;
  mc_die("layer '%s' moves rows between device sets (reshard, from place ... : on(...)): not "
         "supported by the multi-device runtime yet",
         n->layer ? n->layer : "?");
}

void rt_kern_comm_register(KernelFn *f32, KernelFn *f64) {
  f32[OP_ALL_REDUCE] = all_reduce_f32;
  f64[OP_ALL_REDUCE] = all_reduce_f64;
  f32[OP_ALL_TO_ALL] = a2a_f32;
  f64[OP_ALL_TO_ALL] = a2a_f64;
  f32[OP_ALL_TO_ALL_BACK] = a2ab_f32;
  f64[OP_ALL_TO_ALL_BACK] = a2ab_f64;
  f32[OP_RESHARD] = f64[OP_RESHARD] = reshard;
  f32[OP_ALL_GATHER_TOPM] = topm_f32;
  f64[OP_ALL_GATHER_TOPM] = topm_f64;
}
