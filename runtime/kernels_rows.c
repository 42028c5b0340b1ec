/* kernels_rows.c: the collectives that gather every device's rows (ops.def), float32 and
 * float64, through ctx->comm (runtime/comm.h), on the node's device set:
 *   all_gather_rows   x[R,...] -> every device's rows in rank order (the global batch's
 *                     order): the routes a capacity decision reads (docs/moe.md)
 *   sparse_all_reduce (ids, rows) -> the dense sum of every device's row scatters: a
 *                     row-sparse gradient's all-reduce (docs/placement.md)
 *   table_gather      (ids, W rows) -> the ids' rows of a table sharded by rows: the ids
 *                     to their owners, the rows back
 *   table_scatter     (ids, g) -> the rows' gradients scatter-added on their owners
 * Without a communicator (a one-device program) both are the device's own. Prefix: rt_. */
#include <string.h>

#include "comm.h"
#include "runtime.h"

static Comm *rows_comm(const KernelCtx *ctx, const Node *n) {
  return ctx->comm ? comm_subset(ctx->comm, ir_node_mask(n, ctx->comm->size)) : NULL;
}

/* Into ctx->stats as kernels_comm.c counts: the bytes this device contributes (payload)
 * and sends to the P-1 others (an all_gather) */
static void count(const KernelCtx *ctx, CommKind k, double t0, double payload, int P) {
  CommStats *s = ctx->stats;
  if (!s) return;
  s->seconds[k] += mc_now() - t0;
  s->payload[k] += payload;
  s->sent[k] += (P - 1) * payload;
  s->calls[k]++;
}

/* every device sends the same number of bytes: checked, a mismatch stops every rank */
static void same_bytes(Comm *c, int64_t bytes, const char *op) {
  int64_t *all = mc_malloc((size_t)c->size * sizeof(int64_t));
  c->all_gather(c, &bytes, all, sizeof bytes);
  for (int s = 0; s < c->size; s++)
    if (all[s] != bytes) {
      char why[128];
      snprintf(why, sizeof why, "%s: the devices hold different numbers of rows", op);
      c->abort(c, why);
    }
  mc_free(all);
}

/* ---------------------------------------------------------------- all_gather_rows */

static void all_gather_rows(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                            size_t fel) {
  Comm *c = rows_comm(ctx, n);
  double t0 = mc_now();
  size_t elem = n->in[0]->ty.dtype == DT_I32 ? sizeof(int32_t) : fel;
  size_t bytes = (size_t)n->in[0]->numel * elem;
  int P = c ? c->size : 1;
  if ((int64_t)bytes * P != n->out[0]->numel * (int64_t)elem)
    mc_die("layer '%s': all_gather_rows of %d devices into %lld elements",
           n->layer ? n->layer : "?", P, (long long)n->out[0]->numel);
  if (P > 1) {
    same_bytes(c, (int64_t)bytes, "all_gather_rows");
    c->all_gather(c, in[0], out[0], bytes);
  } else {
    memcpy(out[0], in[0], bytes);
  }
  count(ctx, CK_ALL_GATHER_ROWS, t0, (double)bytes, P);
}

static void all_gather_rows_f32(const KernelCtx *ctx, const Node *n, void *const *in,
                                void *const *out) {
  all_gather_rows(ctx, n, in, out, sizeof(float));
}
static void all_gather_rows_f64(const KernelCtx *ctx, const Node *n, void *const *in,
                                void *const *out) {
  all_gather_rows(ctx, n, in, out, sizeof(double));
}

/* ---------------------------------------------------------------- sparse all-reduce */

/* A pair's ids take R*4 bytes padded to 8, so that its rows (and the next pair) stay
 * aligned for double. */
static size_t ids_bytes(int64_t R) { return ((size_t)R * 4 + 7) & ~(size_t)7; }

/* (ids i32[R], rows[R,D] [, ids2, rows2, ...]) on every device of the node's set -> dW[V,D]:
 * every device's pairs gathered (all_gather, rank order) and scatter-added in that order,
 * pair by pair, so that every device holds the same bits. Without a communicator (one
 * device) it is embedding_bwd. */
static void sparse_all_reduce(const KernelCtx *ctx, const Node *n, void *const *in,
                              void *const *out, size_t elem) {
  Comm *c = rows_comm(ctx, n);
  int P = c ? c->size : 1;
  double t0 = mc_now();
  int64_t V = n->out[0]->shape[0], D = n->out[0]->shape[1];
  size_t rb = (size_t)D * elem, blk = 0;
  for (int q = 0; q + 1 < n->nin; q += 2)
    blk += ids_bytes(n->in[q]->numel) + (size_t)n->in[q]->numel * rb;
  char *send = mc_malloc(blk ? blk : 1), *recv = mc_malloc(blk * (size_t)P + 1), *at = send;
  for (int q = 0; q + 1 < n->nin; q += 2) { /* pair by pair: its ids, then its rows */
    size_t R = (size_t)n->in[q]->numel, ib = ids_bytes((int64_t)R);
    memset(at, 0, ib);
    memcpy(at, in[q], R * 4);
    memcpy(at + ib, in[q + 1], R * rb);
    at += ib + R * rb;
  }
  if (P > 1) {
    same_bytes(c, (int64_t)blk, "sparse_all_reduce");
    c->all_gather(c, send, recv, blk);
  } else {
    memcpy(recv, send, blk);
  }
  memset(out[0], 0, (size_t)(V * D) * elem);
  for (int s = 0; s < P; s++) {
    const char *b = recv + (size_t)s * blk;
    for (int q = 0; q + 1 < n->nin; q += 2) {
      int64_t R = n->in[q]->numel;
      for (int64_t r = 0; r < R; r++) {
        int32_t id;
        memcpy(&id, b + (size_t)r * 4, 4);
        if (id < 0 || id >= V)
          mc_die("layer '%s': gradient row %d is outside [0, %lld) (op %s)",
                 n->layer ? n->layer : "?", (int)id, (long long)V, ir_ops[n->op].name);
        const char *row = b + ids_bytes(R) + (size_t)r * rb;
        if (elem == sizeof(float)) {
          float *d = (float *)out[0] + (int64_t)id * D;
          const float *x = (const float *)row;
          for (int64_t j = 0; j < D; j++)
            d[j] += x[j];
        } else {
          double *d = (double *)out[0] + (int64_t)id * D;
          const double *x = (const double *)row;
          for (int64_t j = 0; j < D; j++)
            d[j] += x[j];
        }
      }
      b += ids_bytes(R) + (size_t)R * rb;
    }
  }
  mc_free(send);
  mc_free(recv);
  count(ctx, CK_SPARSE_ALL_REDUCE, t0, (double)blk, P);
}

static void sparse_all_reduce_f32(const KernelCtx *ctx, const Node *n, void *const *in,
                                  void *const *out) {
  sparse_all_reduce(ctx, n, in, out, sizeof(float));
}
static void sparse_all_reduce_f64(const KernelCtx *ctx, const Node *n, void *const *in,
                                  void *const *out) {
  sparse_all_reduce(ctx, n, in, out, sizeof(double));
}

/* ---------------------------------------------------------------- tables sharded by rows */

int rt_rows_all_gather(const KernelCtx *ctx, const Node *n, const void *send, void *recv,
                       size_t bytes, int *rank) {
  Comm *c = rows_comm(ctx, n);
  *rank = c ? c->rank : 0;
  if (!c) {
    memcpy(recv, send, bytes);
    return 1;
  }
  same_bytes(c, (int64_t)bytes, ir_ops[n->op].name);
  c->all_gather(c, send, recv, bytes);
  return c->size;
}

/* A table's exchange on one device: its ids in owner order (owner by owner, positions
 * ascending: pos[j] is the position of the j-th sent id), how many go to each owner
 * (n[p]), and the ids it received as an owner (rid, nr of them; rn[p] from device p, in
 * rank order). */
typedef struct TableX {
  int P;
  int64_t *pos, *n, *rn, nr;
  int32_t *rid;
} TableX;

/* every array from one block: the P-entry counts first (8-byte aligned), then the ids */
static void table_route(Comm *c, const Node *n, const int32_t *ids, int64_t N, TableX *x) {
  int P = c ? c->size : 1, r = c ? c->rank : 0;
  int64_t V = n->ia[0];
  if (P != (int)n->ia[1])
    mc_die("layer '%s': a table of %lld devices runs on %d", n->layer ? n->layer : "?",
           (long long)n->ia[1], P);
  x->P = P;
  x->n = mc_calloc((size_t)P * 6, sizeof(int64_t));
  x->rn = x->n + P;
  int64_t *sb = x->n + 2 * P, *rb = x->n + 3 * P, *sd = x->n + 4 * P, *rd = x->n + 5 * P;
  for (int64_t j = 0; j < N; j++) {
    if (ids[j] < 0 || ids[j] >= V)
      mc_die("layer '%s': id %d is outside the vocabulary [0, %lld)", n->layer ? n->layer : "?",
             (int)ids[j], (long long)V);
    x->n[ir_table_owner(V, P, ids[j])]++;
  }
  int64_t *at = mc_malloc(sizeof(int64_t) * (size_t)P);
  comm_displs(x->n, P, at);
  x->pos = mc_malloc(sizeof(int64_t) * (size_t)MC_MAX(N, 1));
  int32_t *sid = mc_malloc(sizeof(int32_t) * (size_t)MC_MAX(N, 1));
  for (int64_t j = 0; j < N; j++) { /* a stable counting sort by owner */
    int64_t k = at[ir_table_owner(V, P, ids[j])]++;
    x->pos[k] = j;
    sid[k] = ids[j];
  }
  mc_free(at);
  if (!c) {
    x->rn[0] = N;
    x->nr = N;
    x->rid = sid;
    return;
  }
  for (int p = 0; p < P; p++)
    sb[p] = x->n[p] * 4;
  comm_all_to_all_counts(c, sb, rb);
  comm_displs(sb, P, sd);
  x->nr = comm_displs(rb, P, rd) / 4;
  x->rid = mc_malloc(sizeof(int32_t) * (size_t)MC_MAX(x->nr, 1));
  c->all_to_allv(c, sid, sb, sd, x->rid, rb, rd);
  mc_free(sid);
  int64_t lo = ir_table_first(V, P, r), hi = ir_table_first(V, P, r + 1);
  for (int p = 0; p < P; p++)
    x->rn[p] = rb[p] / 4;
  for (int64_t j = 0; j < x->nr; j++)
    if (x->rid[j] < lo || x->rid[j] >= hi)
      c->abort(c, "table_gather: an id sent to the wrong owner");
}

static void table_free(TableX *x) {
  mc_free(x->n);
  mc_free(x->pos);
  mc_free(x->rid);
}

/* Rows of rb bytes: sn[p] of them from send to device p, rn[p] from p into recv (rank
 * order); without a communicator the device's own. */
static void table_rows(Comm *c, const TableX *x, const void *send, const int64_t *sn, void *recv,
                       const int64_t *rn, size_t rb) {
  if (!c) {
    memcpy(recv, send, (size_t)sn[0] * rb);
    return;
  }
  int64_t *b = mc_malloc(sizeof(int64_t) * (size_t)x->P * 4);
  int64_t *sb = b, *sd = b + x->P, *rcb = b + 2 * x->P, *rd = b + 3 * x->P;
  for (int p = 0; p < x->P; p++) {
    sb[p] = sn[p] * (int64_t)rb;
    rcb[p] = rn[p] * (int64_t)rb;
  }
  comm_displs(sb, x->P, sd);
  comm_displs(rcb, x->P, rd);
  c->all_to_allv(c, send, sb, sd, recv, rcb, rd);
  mc_free(b);
}

/* Into ctx->stats: payload = this device's ids and rows, sent = what crossed to others
 * (ids it sent away, rows it sent to another device) */
static void table_count(const KernelCtx *ctx, const TableX *x, int rank, CommKind k, double t0,
                        int64_t N, size_t rb, bool rows_back) {
  CommStats *s = ctx->stats;
  if (!s) return;
  double sent = 0;
  for (int p = 0; p < x->P; p++) {
    if (p == rank) continue;
    sent += (double)x->n[p] * 4 + (double)(rows_back ? x->rn[p] : x->n[p]) * (double)rb;
  }
  s->seconds[k] += mc_now() - t0;
  s->payload[k] += (double)N * (4 + (double)rb);
  s->sent[k] += sent;
  s->calls[k]++;
}

/* (ids i32[N], W[V_r,D]) -> out[N,D]: each owner looks up the ids it received and sends
 * their rows back in the order it received them; they land at the ids' positions. */
static void table_gather(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                         size_t elem) {
  Comm *c = rows_comm(ctx, n);
  double t0 = mc_now();
  int64_t N = n->in[0]->numel, D = n->out[0]->shape[n->out[0]->ty.rank - 1];
  int64_t V = n->ia[0], Vr = n->in[1]->shape[0];
  int rank = c ? c->rank : 0;
  TableX x;
  table_route(c, n, in[0], N, &x);
  int64_t lo = ir_table_first(V, x.P, rank);
  if (Vr != ir_table_first(V, x.P, rank + 1) - lo)
    mc_die("layer '%s': device %d holds %lld rows of the table, not its range's",
           n->layer ? n->layer : "?", rank, (long long)Vr);
  size_t rb = (size_t)D * elem;
  char *mine = mc_malloc((size_t)MC_MAX(x.nr, 1) * rb), *got = mc_malloc((size_t)MC_MAX(N, 1) * rb);
  for (int64_t j = 0; j < x.nr; j++) /* the rows others asked for, in the order they came */
    memcpy(mine + (size_t)j * rb, (const char *)in[1] + (size_t)(x.rid[j] - lo) * rb, rb);
  table_rows(c, &x, mine, x.rn, got, x.n, rb);
  for (int64_t j = 0; j < N; j++)
    memcpy((char *)out[0] + (size_t)x.pos[j] * rb, got + (size_t)j * rb, rb);
  mc_free(mine);
  mc_free(got);
  table_count(ctx, &x, rank, CK_TABLE_GATHER, t0, N, rb, true);
  table_free(&x);
}

/* (ids i32[N], g[N,D], ...: pairs) -> dW[V_r,D]: the rows go to their owners (the ids' order
 * within each owner), which add them in rank order, each source's in position order (its
 * pairs in order): the global batch's order, the order embedding_bwd adds them on one
 * device (the same bits). */
static void table_scatter(const KernelCtx *ctx, const Node *n, void *const *in, void *const *out,
                          size_t elem) {
  Comm *c = rows_comm(ctx, n);
  double t0 = mc_now();
  int64_t N = 0, D = n->in[1]->shape[n->in[1]->ty.rank - 1];
  int64_t V = n->ia[0], Vr = n->out[0]->shape[0];
  int rank = c ? c->rank : 0;
  size_t rb = (size_t)D * elem;
  for (int q = 0; q < n->nin; q += 2)
    N += n->in[q]->numel;
  const int32_t *ids = in[0];
  const char *g = in[1];
  int32_t *cat = NULL;
  char *gcat = NULL;
  if (n->nin > 2) { /* the pairs one after the other */
    cat = mc_malloc(sizeof(int32_t) * (size_t)MC_MAX(N, 1));
    gcat = mc_malloc((size_t)MC_MAX(N, 1) * rb);
    for (int q = 0, at = 0; q < n->nin; at += (int)n->in[q]->numel, q += 2) {
      memcpy(cat + at, in[q], sizeof(int32_t) * (size_t)n->in[q]->numel);
      memcpy(gcat + (size_t)at * rb, in[q + 1], (size_t)n->in[q]->numel * rb);
    }
    ids = cat;
    g = gcat;
  }
  TableX x;
  table_route(c, n, ids, N, &x);
  int64_t lo = ir_table_first(V, x.P, rank);
  MOEC_ASSERT(Vr == ir_table_first(V, x.P, rank + 1) - lo);
  char *send = mc_malloc((size_t)MC_MAX(N, 1) * rb),
       *recv = mc_malloc((size_t)MC_MAX(x.nr, 1) * rb);
  for (int64_t j = 0; j < N; j++)
    memcpy(send + (size_t)j * rb, g + (size_t)x.pos[j] * rb, rb);
  table_rows(c, &x, send, x.n, recv, x.rn, rb);
  memset(out[0], 0, (size_t)Vr * rb);
  for (int64_t j = 0; j < x.nr; j++) {
    const char *row = recv + (size_t)j * rb;
    int64_t v = x.rid[j] - lo;
    if (elem == sizeof(float)) {
      float *d = (float *)out[0] + v * D, xv;
      for (int64_t q = 0; q < D; q++) { /* rows of a byte buffer: copied, not cast */
        memcpy(&xv, row + (size_t)q * sizeof xv, sizeof xv);
        d[q] += xv;
      }
    } else {
      double *d = (double *)out[0] + v * D, xv;
      for (int64_t q = 0; q < D; q++) {
        memcpy(&xv, row + (size_t)q * sizeof xv, sizeof xv);
        d[q] += xv;
      }
    }
  }
  mc_free(send);
  mc_free(recv);
  mc_free(cat);
  mc_free(gcat);
  table_count(ctx, &x, rank, CK_TABLE_SCATTER, t0, N, rb, false);
  table_free(&x);
}

static void table_gather_f32(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  table_gather(ctx, n, in, out, sizeof(float));
}
static void table_gather_f64(const KernelCtx *ctx, const Node *n, void *const *in,
                             void *const *out) {
  table_gather(ctx, n, in, out, sizeof(double));
}
static void table_scatter_f32(const KernelCtx *ctx, const Node *n, void *const *in,
                              void *const *out) {
  table_scatter(ctx, n, in, out, sizeof(float));
}
static void table_scatter_f64(const KernelCtx *ctx, const Node *n, void *const *in,
                              void *const *out) {
  table_scatter(ctx, n, in, out, sizeof(double));
}

void rt_kern_rows_register(KernelFn *f32, KernelFn *f64) {
  f32[OP_ALL_GATHER_ROWS] = all_gather_rows_f32;
  f64[OP_ALL_GATHER_ROWS] = all_gather_rows_f64;
  f32[OP_SPARSE_ALL_REDUCE] = sparse_all_reduce_f32;
  f64[OP_SPARSE_ALL_REDUCE] = sparse_all_reduce_f64;
  f32[OP_TABLE_GATHER] = table_gather_f32;
  f64[OP_TABLE_GATHER] = table_gather_f64;
  f32[OP_TABLE_SCATTER] = table_scatter_f32;
  f64[OP_TABLE_SCATTER] = table_scatter_f64;
}
