/* kernels_sampled.c: CPU kernels of the sampled softmax (ops.def: sampled_xent,
 * sampled_xent_bwd) in float32 and float64 (bodies in kernels_sampled.inc), the
 * log-uniform candidate sampler they share, and the row-sparse all-reduce of a gradient
 * (sparse_all_reduce, a collective). docs/moe.md ("Sampled softmax") has the maths.
 * Prefix: rt_. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "comm.h"
#include "multidev.h"
#include "runtime.h"

/* ---------------------------------------------------------------- the sampler */

double rt_log_uniform_p(int64_t c, int64_t V) {
  return log1p(1.0 / (double)(c + 1)) / log((double)V + 1.0);
}

double rt_log_uniform_expected(int64_t c, int64_t V, int64_t tries) {
  if (tries <= 0) return 1; /* every class is among the samples */
  return -expm1((double)tries * log1p(-rt_log_uniform_p(c, V)));
}

int64_t rt_sample_log_uniform(uint64_t key, int64_t V, int64_t S, int32_t *cand) {
  MOEC_ASSERT(V >= 1 && S >= 1 && S <= V && V <= INT32_MAX);
  if (S == V) { /* all of them: the exact softmax */
    for (int64_t c = 0; c < V; c++)
      cand[c] = (int32_t)c;
    return 0;
  }
  uint8_t *seen = mc_calloc((size_t)(V + 7) / 8, 1);
  double lv = log((double)V + 1.0);
  /* rare classes can take many draws when S is close to V; this bound is never near for
   * S <= V/2 (the expected draws are a few times S) */
  int64_t cap = 64 * V + 1000000, tries = 0, m = 0;
  while (m < S) {
    if (tries == cap)
      mc_die("sampled_softmax_xent: %lld distinct of %lld classes took more than %lld draws "
             "from the log-uniform proposal: use samples = vocab (all classes: the exact "
             "softmax) or fewer samples",
             (long long)S, (long long)V, (long long)cap);
    double u = mc_rng_uniform(key, (uint64_t)tries++);
    int64_t c = (int64_t)floor(exp(u * lv)) - 1;
    c = c < 0 ? 0 : c >= V ? V - 1 : c;
    if (seen[c >> 3] >> (c & 7) & 1) continue;
    seen[c >> 3] |= (uint8_t)(1u << (c & 7));
    cand[m++] = (int32_t)c;
  }
  mc_free(seen);
  return tries;
}

/* A target outside [0, V): a user error (bad data), named by layer. */
_Noreturn static void bad_target(const Node *n, int32_t id, int64_t V) {
  mc_die("layer '%s': target %d is outside the vocabulary [0, %lld) (op %s)",
         n->layer ? n->layer : "?", (int)id, (long long)V, ir_ops[n->op].name);
}

/* The loss normaliser: fa[0], or 1/(N * ndevices) with N this device's rows (as xent). */
static double sampled_scale(const KernelCtx *ctx, const Node *n, int64_t rows) {
  if (n->fa[0] != 0) return n->fa[0];
  int nd = ctx->ndevices > 0 ? ctx->ndevices : 1;
  return 1.0 / ((double)rows * (double)nd);
}

static bool sampling(const KernelCtx *ctx) {
  return ctx->training || ctx->sample_softmax;
}

/* ---------------------------------------------------------------- instances */

#include "fastmath.h" /* rt_expf */

#define real float
#define K(name) name##_f32
#define GEMM cblas_sgemm
#define EXP rt_expf
#include "kernels_sampled.inc"
#undef real
#undef K
#undef GEMM
#undef EXP

#define real double
#define K(name) name##_f64
#define GEMM cblas_dgemm
#define EXP exp
#include "kernels_sampled.inc"
#undef real
#undef K
#undef GEMM
#undef EXP

/* ---------------------------------------------------------------- sparse all-reduce */

/* (ids i32[R], rows[R,D]) on every device of the node's set -> dW[V,D]: every device's rows
 * gathered (all_gather, rank order) and scatter-added in that order, so every device holds
 * the same bits. Without a communicator (one device) it is embedding_bwd. */
static void sparse_all_reduce(const KernelCtx *ctx, const Node *n, void *const *in,
                              void *const *out, size_t elem) {
  Comm *c = ctx->comm ? comm_subset(ctx->comm, rt_md_node_mask(n, ctx->comm->size)) : NULL;
  int P = c ? c->size : 1;
  double t0 = mc_now();
  int64_t R = n->in[0]->numel, V = n->out[0]->shape[0], D = n->out[0]->shape[1];
  size_t rb = (size_t)D * elem, blk = (size_t)R * (4 + rb);
  char *send = mc_malloc(blk ? blk : 1), *recv = mc_malloc(blk * (size_t)P + 1);
  memcpy(send, in[0], (size_t)R * 4);
  memcpy(send + (size_t)R * 4, in[1], (size_t)R * rb);
  if (P > 1) {
    int64_t *rs = mc_malloc((size_t)P * sizeof(int64_t)); /* every device sends R rows */
    c->all_gather(c, &R, rs, sizeof R);
    for (int s = 0; s < P; s++)
      if (rs[s] != R)
        c->abort(c, "sparse_all_reduce: the devices hold different numbers of gradient rows");
    mc_free(rs);
    c->all_gather(c, send, recv, blk);
  } else {
    memcpy(recv, send, blk);
  }
  memset(out[0], 0, (size_t)(V * D) * elem);
  for (int s = 0; s < P; s++) {
    const char *b = recv + (size_t)s * blk;
    for (int64_t r = 0; r < R; r++) {
      int32_t id;
      memcpy(&id, b + (size_t)r * 4, 4);
      if (id < 0 || id >= V)
        mc_die("layer '%s': gradient row %d is outside [0, %lld) (op %s)",
               n->layer ? n->layer : "?", (int)id, (long long)V, ir_ops[n->op].name);
      const char *row = b + (size_t)R * 4 + (size_t)r * rb;
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
  }
  mc_free(send);
  mc_free(recv);
  if (c && c->rank < RT_INPROC_MAX) rt_md_comm_seconds[c->rank][1] += mc_now() - t0;
}

static void sparse_all_reduce_f32(const KernelCtx *ctx, const Node *n, void *const *in,
                                  void *const *out) {
  sparse_all_reduce(ctx, n, in, out, sizeof(float));
}
static void sparse_all_reduce_f64(const KernelCtx *ctx, const Node *n, void *const *in,
                                  void *const *out) {
  sparse_all_reduce(ctx, n, in, out, sizeof(double));
}

void rt_kern_sampled_register(KernelFn *f32, KernelFn *f64) {
  register_f32(f32);
  register_f64(f64);
  f32[OP_SPARSE_ALL_REDUCE] = sparse_all_reduce_f32;
  f64[OP_SPARSE_ALL_REDUCE] = sparse_all_reduce_f64;
}
