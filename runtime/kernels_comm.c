/* kernels_comm.c: CPU kernels of the collective ops (ir/ops.def, "collectives"),
 * float32 and float64, executed through ctx->comm (runtime/comm.h).
 *
 *   all_reduce      in place rank-order sum (deterministic, the same bits everywhere);
 *                   i32 tensors (an hmoe's group offsets) through an all_gather
 *   all_to_all      MoE dispatch: each device sends the rows of every expert to the
 *                   expert's device (ctx->expert_dev); the receiver regroups them into
 *                   one contiguous batch per local expert, sources in rank order (so an
 *                   expert sees its rows in the order one device would give them), and
 *                   writes the offsets of its local experts (E_r + 1: passes/shard.c)
 *   all_to_all_back the reverse: expert rows back to their batch device, in the
 *                   sender's original expert-sorted order
 *                   (ia[3] = 1: an hmoe's group rows, by group, to and from the devices
 *                   of the group -> device map; the rows may be i32 expert ids; more row
 *                   tensors after the offsets travel in the same rows: the group rows
 *                   with their expert ids and gates, one exchange)
 *   reshard         rows between two device sets (on(...)), in batch order
 *   all_gather_topm batchwise gating: every expert's cut of the global batch's top m
 *                   rows, from each device's own top candidates (all_gather)
 * Nodes on(...) a device subset run on that set's sub-communicator (comm_subset).
 * Each call adds its time and bytes to ctx->stats (the run's --json reports them).
 * The per-expert row counts are exchanged first (an all_gather of every device's
 * offsets, E+1 int32 each). docs/multidev.md has the layout. Prefix: rt_. */
#include <stdlib.h>
#include <string.h>

#include "kernels_comm.h"

void rt_comm_count(const KernelCtx *ctx, CommKind k, double t0, double payload, double sent) {
  CommStats *s = ctx->stats;
  if (!s) return;
  s->seconds[k] += mc_now() - t0;
  s->payload[k] += payload;
  s->sent[k] += sent;
  s->calls[k]++;
}

Comm *rt_comm_need(const KernelCtx *ctx, const Node *n) {
  if (!ctx->comm)
    mc_die("op '%s' (layer '%s') is a collective but this program runs without a communicator",
           ir_ops[n->op].name, n->layer ? n->layer : "?");
  return ctx->comm;
}

const int *rt_comm_expert_map(const KernelCtx *ctx, const Node *n, int64_t E) {
  int moe = (int)n->ia[0];
  if (n->ia[3]) { /* an hmoe's group-level exchange: the group -> device map */
    const Graph *g = ctx->graph;
    if (!g || !g->moe_group_dev || moe < 0 || moe >= g->nmoe || !g->moe_group_dev[moe] ||
        g->moe_ngroups[moe] != E)
      mc_die("op '%s' (layer '%s'): no group -> device map for hmoe #%d", ir_ops[n->op].name,
             n->layer ? n->layer : "?", moe);
    return g->moe_group_dev[moe];
  }
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

int64_t *rt_comm_gather_counts(Comm *c, const int32_t *off, int64_t E) {
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

int64_t rt_comm_a2a_recv(const Node *n, const int *map, const int64_t *cnt, int P, int me,
                         int64_t E, int64_t rb, int64_t *rc) {
  int64_t total = 0, cap = n->out[0]->shape[0], El = n->out[1]->numel - 1, nloc = 0;
  for (int s = 0; s < P; s++) {
    for (int64_t e = 0; e < E; e++)
      if (map[e] == me) rc[s] += cnt[s * E + e];
    total += rc[s];
    rc[s] *= rb;
  }
  if (total > cap)
    mc_die("all_to_all of MoE layer '%s': %lld rows arrive, more than the %lld the buffer holds "
           "(plan.expert_headroom sizes it: raise it, or leave it unset for room for every route; "
           "or bound the rows with moe(..., capacity=))",
           n->layer ? n->layer : "?", (long long)total, (long long)cap);
  for (int64_t e = 0; e < E; e++)
    nloc += map[e] == me;
  if (El != E && El != nloc)
    mc_die("all_to_all of MoE layer '%s': %lld received offsets for %lld local experts",
           n->layer ? n->layer : "?", (long long)El + 1, (long long)nloc);
  return total;
}

void rt_comm_rows_need(const KernelCtx *ctx, const Node *n, const int *map, const int64_t *cnt,
                       int P, int me, int64_t E) {
  int64_t arrive = 0;
  for (int64_t i = 0; i < (int64_t)P * E; i++)
    arrive += map[i % E] == me ? cnt[i] : 0;
  rt_rows_need(ctx, n, arrive);
}

int64_t *rt_comm_back_starts(const Node *n, const int *map, const int64_t *cnt, int P, int me,
                             int64_t E) {
  int64_t *start = mc_calloc((size_t)(P * E) + 1, sizeof(int64_t)), r = 0;
  for (int64_t e = 0; e < E; e++)
    if (map[e] == me)
      for (int s = 0; s < P; s++) {
        start[s * E + e] = r;
        r += cnt[s * E + e];
      }
  if (r > n->in[0]->shape[0])
    mc_die("all_to_all_back of MoE layer '%s': inconsistent row counts", n->layer ? n->layer : "?");
  start[P * E] = r;
  return start;
}

/* The row tensors an all-to-all moves (input 0, and those after the offsets): each row is
 * sent as its pieces side by side, rb bytes. */
typedef struct Pieces {
  int n;
  const char *src[8];
  char *dst[8];
  size_t w[8]; /* bytes of a piece's row */
  bool ids[8]; /* i32 (an hmoe's expert ids): unfilled rows read -1 */
  size_t rb;
} Pieces;

/* Pieces of node n: inputs 0, 2, 3, ... to outputs 0, first_more, first_more + 1, ... */
static Pieces pieces(const Node *n, void *const *in, void *const *out, size_t elem,
                     int first_more) {
  Pieces p = {0};
  for (int i = 0; i < n->nin; i++) {
    if (i == 1) continue;
    MOEC_ASSERT(p.n < 8);
    const Tensor *t = n->in[i];
    p.ids[p.n] = t->ty.dtype == DT_I32;
    p.w[p.n] = (size_t)rt_comm_row_width(t) * (p.ids[p.n] ? sizeof(int32_t) : elem);
    p.src[p.n] = in[i];
    p.dst[p.n] = out[i == 0 ? 0 : first_more + i - 2];
    p.rb += p.w[p.n++];
  }
  return p;
}

/* Rows [r, r+nr) of the sources, packed into buf. */
static void rows_out(const Pieces *p, int64_t r, int64_t nr, char *buf) {
  if (p->n == 1) {
    memcpy(buf, p->src[0] + (size_t)r * p->rb, (size_t)nr * p->rb);
    return;
  }
  for (int64_t i = r; i < r + nr; i++)
    for (int q = 0; q < p->n; q++) {
      memcpy(buf, p->src[q] + (size_t)i * p->w[q], p->w[q]);
      buf += p->w[q];
    }
}

/* Packed rows from buf into rows [r, r+nr) of the destinations. */
static void rows_in(const Pieces *p, int64_t r, int64_t nr, const char *buf) {
  if (p->n == 1) {
    memcpy(p->dst[0] + (size_t)r * p->rb, buf, (size_t)nr * p->rb);
    return;
  }
  for (int64_t i = r; i < r + nr; i++)
    for (int q = 0; q < p->n; q++) {
      memcpy(p->dst[q] + (size_t)i * p->w[q], buf, p->w[q]);
      buf += p->w[q];
    }
}

/* Rows [r, cap) of the destinations that no device filled: zero, ids -1 (no route: the
 * group side's dispatch and combine skip them). */
static void rows_unused(const Pieces *p, int64_t r, int64_t cap) {
  for (int q = 0; q < p->n && r < cap; q++)
    memset(p->dst[q] + (size_t)r * p->w[q], p->ids[q] ? 0xff : 0, (size_t)(cap - r) * p->w[q]);
}

/* An hmoe's expert-level exchange with every expert on its group's device: the rows on a
 * device are all for its own experts, so nothing is exchanged (the same layout results). */
static bool local_exchange(const KernelCtx *ctx, const Node *n) {
  return !n->ia[3] && ctx->graph && ir_hmoe_experts_local(ctx->graph, (int)n->ia[0]);
}

/* rt_comm_gather_counts when only device me holds rows (local_exchange). */
static int64_t *local_counts(const int32_t *off, int64_t E, int P, int me) {
  int64_t *cnt = mc_calloc((size_t)P * (size_t)E, sizeof(int64_t));
  for (int64_t e = 0; e < E; e++)
    cnt[me * E + e] = off[e + 1] - off[e];
  return cnt;
}

/* (x[R,M] rows grouped by expert, offsets i32[E+1]) -> (y[Rcap,M] this device's experts'
 * rows from every device, grouped by expert then source; recv offsets i32[E_r+1] of the
 * local experts in global order, or i32[E+1] when the graph holds every expert) */
static void all_to_all(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                       size_t elem, double *payload, double *sent) {
  Comm *c = rt_comm_need(ctx, n);
  int P = c->size, me = c->rank;
  const int32_t *off = in[1];
  int32_t *roff = out[1];
  int64_t E = n->in[1]->numel - 1;
  const int *map = rt_comm_expert_map(ctx, n, E);
  bool local = local_exchange(ctx, n);
  int64_t *cnt = local ? local_counts(off, E, P, me) : rt_comm_gather_counts(c, off, E);
  rt_comm_rows_need(ctx, n, map, cnt, P, me, E); /* may move out[0] */
  Pieces pc = pieces(n, in, out, elem, 2);
  int64_t cap = n->out[0]->shape[0];
  size_t rb = pc.rb;
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  /* send: for each device d, its experts in order, my rows of each */
  char *send = mc_malloc(MC_MAX((size_t)off[E] * rb, 1));
  size_t pos = 0;
  for (int d = 0; d < P; d++) {
    sd[d] = (int64_t)pos;
    for (int64_t e = 0; e < E; e++)
      if (map[e] == d) {
        rows_out(&pc, off[e], off[e + 1] - off[e], send + pos);
        pos += (size_t)(off[e + 1] - off[e]) * rb;
      }
    sc[d] = (int64_t)pos - sd[d];
  }
  int64_t total = rt_comm_a2a_recv(n, map, cnt, P, me, E, (int64_t)rb, rc);
  *sent = (double)((int64_t)pos - sc[me]); /* rows to experts on other devices */
  *payload = (double)off[E] * (double)rb;
  comm_displs(rc, P, rd);
  char *recv = mc_malloc(MC_MAX((size_t)total * rb, 1));
  if (local) /* every row's expert is here: no exchange (nor its latency) */
    memcpy(recv + rd[me], send + sd[me], (size_t)sc[me]);
  else
    c->all_to_allv(c, send, sc, sd, recv, rc, rd);
  /* regroup: expert-major, sources in rank order. Offsets of the local experts (E_r + 1,
   * a graph with sharded experts: passes/shard.c) or of all E (+1; others empty) */
  int64_t El = n->out[1]->numel - 1;
  int64_t *cur = mc_calloc((size_t)P, sizeof(int64_t)); /* bytes consumed per source */
  int64_t r = 0, l = 0;
  for (int64_t e = 0; e < E; e++) {
    if (El == E) roff[e] = (int32_t)r;
    if (map[e] != me) continue;
    if (El != E) roff[l++] = (int32_t)r;
    for (int s = 0; s < P; s++) {
      rows_in(&pc, r, cnt[s * E + e], recv + rd[s] + cur[s]);
      cur[s] += cnt[s * E + e] * (int64_t)rb;
      r += cnt[s * E + e];
    }
  }
  roff[El] = (int32_t)r;
  rows_unused(&pc, r, cap);
  mc_free(cur);
  mc_free(recv);
  mc_free(send);
  mc_free(sc);
  mc_free(cnt);
}

/* (y[Rcap,M] in all_to_all's received layout, the senders' offsets i32[E+1]) ->
 * y[R,M] rows back on their batch device at the sender's offsets */
static void all_to_all_back(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                            size_t elem, double *payload, double *sent) {
  Comm *c = rt_comm_need(ctx, n);
  int P = c->size, me = c->rank;
  const int32_t *off = in[1];
  Pieces pc = pieces(n, in, out, elem, 1);
  int64_t E = n->in[1]->numel - 1, R = n->out[0]->shape[0];
  const int *map = rt_comm_expert_map(ctx, n, E);
  size_t rb = pc.rb;
  bool local = local_exchange(ctx, n);
  int64_t *cnt = local ? local_counts(off, E, P, me) : rt_comm_gather_counts(c, off, E);
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  int64_t *start = rt_comm_back_starts(n, map, cnt, P, me, E);
  int64_t r = start[P * E]; /* the rows of this device's experts */
  char *send = mc_malloc(MC_MAX((size_t)r * rb, 1));
  size_t pos = 0;
  for (int s = 0; s < P; s++) {
    sd[s] = (int64_t)pos;
    for (int64_t e = 0; e < E; e++)
      if (map[e] == me) {
        rows_out(&pc, start[s * E + e], cnt[s * E + e], send + pos);
        pos += (size_t)cnt[s * E + e] * rb;
      }
    sc[s] = (int64_t)pos - sd[s];
  }
  *sent = (double)((int64_t)pos - sc[me]);
  *payload = (double)r * (double)rb; /* the rows of this device's experts, sent back */
  for (int64_t e = 0; e < E; e++)
    rc[map[e]] += cnt[me * E + e] * (int64_t)rb;
  int64_t tot = comm_displs(rc, P, rd);
  char *recv = mc_malloc(MC_MAX((size_t)tot, 1));
  if (local)
    memcpy(recv + rd[me], send + sd[me], (size_t)sc[me]);
  else
    c->all_to_allv(c, send, sc, sd, recv, rc, rd);
  int64_t *cur = mc_calloc((size_t)P, sizeof(int64_t));
  for (int64_t e = 0; e < E; e++) {
    int d = map[e];
    rows_in(&pc, off[e], off[e + 1] - off[e], recv + rd[d] + cur[d]);
    cur[d] += (int64_t)(off[e + 1] - off[e]) * (int64_t)rb;
  }
  rows_unused(&pc, off[E], R);
  mc_free(cur);
  mc_free(recv);
  mc_free(send);
  mc_free(start);
  mc_free(sc);
  mc_free(cnt);
}

/* The communicator of node n's device set (on(...) subsets: a sub-communicator, ranks in
 * ascending device order, so sums stay in device order). */
static Comm *set_comm(const KernelCtx *ctx, const Node *n) {
  Comm *c = rt_comm_need(ctx, n);
  return comm_subset(c, ir_node_mask(n, c->size));
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

/* Bytes: the communicators sum a float vector segment-wise (each rank reduces its
 * segment, then every rank gathers them: 2 (n-1)/n of the vector sent per rank); the i32
 * vectors are all-gathered ((n-1) x the vector). */
static void all_reduce(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                       size_t elem) {
  Comm *c = set_comm(ctx, n);
  double t0 = mc_now(), nd = c->size;
  if (n->in[0]->ty.dtype == DT_I32) {
    all_reduce_i32(c, n, in[0], out[0]);
    double b = (double)n->in[0]->numel * sizeof(int32_t);
    rt_comm_count(ctx, CK_ALL_REDUCE, t0, b, (nd - 1) * b);
    return;
  }
  double b = (double)n->in[0]->numel * (double)elem;
  if (out[0] != in[0]) memcpy(out[0], in[0], (size_t)b);
  if (elem == sizeof(double))
    c->all_reduce_sum_f64(c, out[0], n->in[0]->numel);
  else
    c->all_reduce_sum_f32(c, out[0], n->in[0]->numel);
  rt_comm_count(ctx, CK_ALL_REDUCE, t0, b, 2 * (nd - 1) / nd * b);
}
static void all_reduce_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  all_reduce(ctx, n, in, out, sizeof(float));
}
static void all_reduce_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  all_reduce(ctx, n, in, out, sizeof(double));
}

/* A device outside the batch side of an all_to_all (ia[2]: the dense nodes of the moe
 * layer on(...) a subset, its experts elsewhere) sends and receives no rows: its offsets
 * (from nodes it skipped) read as zero. */
static void *const *batch_side(const KernelCtx *ctx, const Node *n, void *const *in, void **tmp,
                               int32_t **zero) {
  Comm *c = rt_comm_need(ctx, n);
  uint64_t m = (uint64_t)n->ia[2];
  if (!m || (m >> c->rank & 1)) return in;
  *zero = mc_calloc((size_t)n->in[1]->numel, sizeof(int32_t));
  MOEC_ASSERT(n->nin <= 8);
  for (int i = 0; i < n->nin; i++)
    tmp[i] = i == 1 ? (void *)*zero : in[i];
  return tmp;
}

#define A2A_KERNEL(NAME, FN, T, KIND)                                                              \
  static void NAME(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {       \
    double t0 = mc_now(), payload = 0, sent = 0;                                                   \
    void *tmp[8];                                                                                  \
    int32_t *zero = NULL;                                                                          \
    FN(ctx, n, batch_side(ctx, n, in, tmp, &zero), out, sizeof(T), &payload, &sent);               \
    mc_free(zero);                                                                                 \
    rt_comm_count(ctx, KIND, t0, payload, sent);                                                   \
  }
A2A_KERNEL(a2a_f32, all_to_all, float, CK_ALL_TO_ALL)
A2A_KERNEL(a2a_f64, all_to_all, double, CK_ALL_TO_ALL)
A2A_KERNEL(a2ab_f32, all_to_all_back, float, CK_ALL_TO_ALL_BACK)
A2A_KERNEL(a2ab_f64, all_to_all_back, double, CK_ALL_TO_ALL_BACK)

/* reshard: rows (dim 0, in batch order) from the devices of set a (ia[2], each holding
 * the next |a|-th of the rows, ascending) to those of set b (ia[3]); every device of
 * a | b takes part (one all_to_allv on their communicator). Bytes that change device
 * are counted as sent (a test compares them with the plan's closed form). */
static void reshard(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                    size_t fel) {
  double t0 = mc_now();
  Comm *world = rt_comm_need(ctx, n);
  uint64_t a = (uint64_t)n->ia[2], b = (uint64_t)n->ia[3], u = a | b;
  Comm *c = comm_subset(world, u);
  const Tensor *x = n->in[0], *y = n->out[0];
  size_t elem = x->ty.dtype == DT_I32 ? sizeof(int32_t) : fel;
  int na = __builtin_popcountll(a), nb = __builtin_popcountll(b);
  int64_t R0 = ctx->batch_local * ctx->ndevices; /* global rows (B), then B*T if flattened */
  for (int k = 0; k < x->ty.dim[0].t && ctx->graph; k++)
    R0 *= ctx->graph->T;
  if (x->ty.dim[0].b != 1 || x->shape[0] * __builtin_popcountll(a) != R0)
    mc_die("layer '%s': moving '%s' between device sets (on(...)) needs rows B or B*T in "
           "dim 0",
           n->layer ? n->layer : "?", x->name);
  int64_t ra = x->shape[0], rb = y->shape[0], R = ra * na; /* rows: per a device, per b, all */
  MOEC_ASSERT(rb * nb == R && x->numel / ra == y->numel / rb);
  size_t w = (size_t)(x->numel / ra) * elem; /* bytes per row */
  int P = c->size, ia = -1, ib = -1, q = 0;
  int *dev = mc_calloc((size_t)P, sizeof(int)); /* sub rank -> device */
  for (int d = 0; d < 64 && q < P; d++)
    if (u >> d & 1) dev[q++] = d;
  int me = dev[c->rank];
  if (a >> me & 1) ia = __builtin_popcountll(a & (((uint64_t)1 << me) - 1));
  if (b >> me & 1) ib = __builtin_popcountll(b & (((uint64_t)1 << me) - 1));
  int64_t *sc = mc_calloc((size_t)P * 4, sizeof(int64_t)), *sd = sc + P, *rc = sc + 2 * P,
          *rd = sc + 3 * P;
  for (int p = 0; p < P; p++) {
    int d = dev[p];
    if (ia >= 0 && (b >> d & 1)) { /* my rows [ia*ra, +ra) to d's [j*rb, +rb) */
      int64_t j = __builtin_popcountll(b & (((uint64_t)1 << d) - 1));
      int64_t lo = MC_MAX(ia * ra, j * rb), hi = MC_MIN((ia + 1) * ra, (j + 1) * rb);
      if (hi > lo) {
        sc[p] = (hi - lo) * (int64_t)w;
        sd[p] = (lo - ia * ra) * (int64_t)w;
      }
    }
    if (ib >= 0 && (a >> d & 1)) { /* d's rows [i*ra, +ra) to mine [ib*rb, +rb) */
      int64_t i = __builtin_popcountll(a & (((uint64_t)1 << d) - 1));
      int64_t lo = MC_MAX(i * ra, ib * rb), hi = MC_MIN((i + 1) * ra, (ib + 1) * rb);
      if (hi > lo) {
        rc[p] = (hi - lo) * (int64_t)w;
        rd[p] = (lo - ib * rb) * (int64_t)w;
      }
    }
  }
  int64_t moved = 0;
  for (int p = 0; p < P; p++)
    if (p != c->rank) moved += sc[p];
  c->all_to_allv(c, in[0], sc, sd, out[0], rc, rd);
  mc_free(sc);
  mc_free(dev);
  rt_comm_count(ctx, CK_RESHARD, t0, ia >= 0 ? (double)ra * (double)w : 0, (double)moved);
}
static void reshard_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  reshard(ctx, n, in, out, sizeof(float));
}
static void reshard_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  reshard(ctx, n, in, out, sizeof(double));
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
  Comm *c = ctx->comm ? set_comm(ctx, n) : rt_comm_self();
  int P = c->size;
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
  if (ctx->comm) rt_comm_count(ctx, CK_ALL_GATHER_TOPM, t0, (double)nb * P, (double)nb * (P - 1));
}

static void topm_f32(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  all_gather_topm(ctx, n, in, out, false);
}
static void topm_f64(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out) {
  all_gather_topm(ctx, n, in, out, true);
}

void rt_kern_comm_register(KernelFn *f32, KernelFn *f64) {
  f32[OP_ALL_REDUCE] = all_reduce_f32;
  f64[OP_ALL_REDUCE] = all_reduce_f64;
  f32[OP_ALL_TO_ALL] = a2a_f32;
  f64[OP_ALL_TO_ALL] = a2a_f64;
  f32[OP_ALL_TO_ALL_BACK] = a2ab_f32;
  f64[OP_ALL_TO_ALL_BACK] = a2ab_f64;
  f32[OP_RESHARD] = reshard_f32;
  f64[OP_RESHARD] = reshard_f64;
  f32[OP_ALL_GATHER_TOPM] = topm_f32;
  f64[OP_ALL_GATHER_TOPM] = topm_f64;
}
