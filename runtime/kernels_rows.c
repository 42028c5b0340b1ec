/* kernels_rows.c: the collectives that gather every device's rows (ops.def), float32 and
 * float64, through ctx->comm (runtime/comm.h), on the node's device set:
 *   all_gather_rows   x[R,...] -> every device's rows in rank order (the global batch's
 *                     order): the routes a capacity decision reads (docs/moe.md)
 *   sparse_all_reduce (ids, rows) -> the dense sum of every device's row scatters: a
 *                     row-sparse gradient's all-reduce (docs/placement.md)
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

void rt_kern_rows_register(KernelFn *f32, KernelFn *f64) {
  f32[OP_ALL_GATHER_ROWS] = all_gather_rows_f32;
  f64[OP_ALL_GATHER_ROWS] = all_gather_rows_f64;
  f32[OP_SPARSE_ALL_REDUCE] = sparse_all_reduce_f32;
  f64[OP_SPARSE_ALL_REDUCE] = sparse_all_reduce_f64;
}
