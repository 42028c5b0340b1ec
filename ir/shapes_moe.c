/* shapes_moe.c: the shape rules of the MoE ops in ops.def (gating, load and
 * importance, dispatch/combine, grouped expert matmuls, concat/slice, and the
 * hierarchical-MoE helpers). Conventions as in shapes.c: symbolic dims compared
 * exactly with dim_eq; N*k rows are dim_mul(N, k); expert counts and offsets
 * lengths are constants. Returns NULL or an error message in the graph's arena. */
#include <string.h>

#include "shapes_util.h"

/* ---------------------------------------------------------------- helpers */

static Type mk(DType dt, int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_type(dt, rank, d);
}

/* Input i is an offsets vector i32[E+1] with a constant length; sets *e = E. */
static const char *need_offsets(Graph *g, Node *n, int i, int64_t *e) {
  TRY(need(g, n, i, DT_I32, 1));
  Dim d = n->in[i]->ty.dim[0];
  /* E = 0: a device's share of a layer's experts off its on(...) set (passes/shard.c) */
  if (!dim_is_const(d) || d.c < (g->experts_local ? 1 : 2))
    return err_in(g, n, i, "must be offsets i32[E+1], E >= 1");
  *e = d.c - 1;
  return NULL;
}

/* Inputs i and j have the same type. */
static const char *same(Graph *g, Node *n, int i, int j) {
  if (!type_eq(&n->in[i]->ty, &n->in[j]->ty)) return mismatch(g, n, i, j, "types differ");
  return NULL;
}

/* Input i is [N, C] (f32 or i32 as dt) with the given dims. */
static const char *need_2d(Graph *g, Node *n, int i, DType dt, Dim r, Dim c) {
  TRY(need(g, n, i, dt, 2));
  const Type *t = &n->in[i]->ty;
  if (!dim_eq(t->dim[0], r) || !dim_eq(t->dim[1], c)) {
    char b1[48], b2[48];
    return err_in(g, n, i,
                  mc_arena_printf(&g->arena, "must be [%s, %s]", dim_str(r, b1, sizeof b1),
                                  dim_str(c, b2, sizeof b2)));
  }
  return NULL;
}

/* A constant attribute in [lo, hi]. */
static const char *need_attr(Graph *g, Node *n, int a, int64_t lo, int64_t hi, const char *what) {
  if (n->ia[a] < lo || n->ia[a] > hi)
    return mc_arena_printf(&g->arena, "%s: %s = %lld is outside [%lld, %lld]", ir_ops[n->op].name,
                           what, (long long)n->ia[a], (long long)lo, (long long)hi);
  return NULL;
}

#define MC_BIG ((int64_t)1 << 40)

/* ---------------------------------------------------------------- gating */

/* (clean[N,E], raw[N,E]) -> noisy, sigma, eps: all [N,E] */
const char *shape_noise(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(same(g, n, 0, 1));
  for (int j = 0; j < 3; j++)
    n->out[j]->ty = n->in[0]->ty;
  return NULL;
}

/* (g_noisy, g_sigma, eps, raw): all [N,E] -> draw [N,E] */
const char *shape_noise_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  for (int i = 1; i < 4; i++)
    TRY(same(g, n, 0, i));
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* x[N,E] -> idx i32[N,k], val[N,k], thr[N,2], thr_idx i32[N,2]; k = ia[0] in [1, E] */
const char *shape_topk(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  Dim N = n->in[0]->ty.dim[0], E = n->in[0]->ty.dim[1];
  if (!dim_is_const(E)) return err_in(g, n, 0, "must have a constant number of columns");
  TRY(need_attr(g, n, 0, 1, E.c, "k"));
  Dim k = dim_int(n->ia[0]), two = dim_int(2);
  n->out[0]->ty = mk(DT_I32, 2, N, k, k);
  n->out[1]->ty = mk(DT_F32, 2, N, k, k);
  n->out[2]->ty = mk(DT_F32, 2, N, two, two);
  n->out[3]->ty = mk(DT_I32, 2, N, two, two);
  return NULL;
}

/* (g_val[N,k], g_thr[N,2], idx i32[N,k], thr_idx i32[N,2]) -> dx[N,E], E = ia[0] */
const char *shape_topk_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  Dim N = n->in[0]->ty.dim[0], k = n->in[0]->ty.dim[1];
  TRY(need_2d(g, n, 1, DT_F32, N, dim_int(2)));
  TRY(need_2d(g, n, 2, DT_I32, N, k));
  TRY(need_2d(g, n, 3, DT_I32, N, dim_int(2)));
  if (!dim_is_const(k)) return err_in(g, n, 0, "must have a constant k");
  TRY(need_attr(g, n, 0, k.c, MC_BIG, "E"));
  n->out[0]->ty = mk(DT_F32, 2, N, dim_int(n->ia[0]), N);
  return NULL;
}

/* (clean[N,E], noisy[N,E], sigma[N,E], thr[N,2]) -> load[E] */
const char *shape_load_smooth(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(same(g, n, 0, 1));
  TRY(same(g, n, 0, 2));
  Dim N = n->in[0]->ty.dim[0], E = n->in[0]->ty.dim[1];
  TRY(need_2d(g, n, 3, DT_F32, N, dim_int(2)));
  n->out[0]->ty = mk(DT_F32, 1, E, E, E);
  return NULL;
}

/* (g[E], clean, noisy, sigma, thr) -> dclean[N,E], dsigma[N,E], dthr[N,2] */
const char *shape_load_smooth_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 1, DT_F32, 2));
  TRY(same(g, n, 1, 2));
  TRY(same(g, n, 1, 3));
  Dim N = n->in[1]->ty.dim[0], E = n->in[1]->ty.dim[1];
  TRY(need_2d(g, n, 4, DT_F32, N, dim_int(2)));
  TRY(need(g, n, 0, DT_F32, 1));
  if (!dim_eq(n->in[0]->ty.dim[0], E)) return mismatch(g, n, 0, 1, "g must be [E]");
  n->out[0]->ty = n->in[1]->ty;
  n->out[1]->ty = n->in[1]->ty;
  n->out[2]->ty = n->in[4]->ty;
  return NULL;
}

/* idx i32[N,k] -> f32[E], E = ia[0] */
const char *shape_load_count(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_I32, 2));
  TRY(need_attr(g, n, 0, 1, MC_BIG, "E"));
  Dim E = dim_int(n->ia[0]);
  n->out[0]->ty = mk(DT_F32, 1, E, E, E);
  return NULL;
}

/* (idx i32[N,k], gates[N,k]) -> importance[E], E = ia[0] */
const char *shape_importance(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_I32, 2));
  const Type *t = &n->in[0]->ty;
  TRY(need_2d(g, n, 1, DT_F32, t->dim[0], t->dim[1]));
  TRY(need_attr(g, n, 0, 1, MC_BIG, "E"));
  Dim E = dim_int(n->ia[0]);
  n->out[0]->ty = mk(DT_F32, 1, E, E, E);
  return NULL;
}

/* (g[E], idx i32[N,k]) -> [N,k] */
const char *shape_gather_idx(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 1));
  TRY(need(g, n, 1, DT_I32, 2));
  Type t = n->in[1]->ty;
  t.dtype = DT_F32;
  n->out[0]->ty = t;
  return NULL;
}

/* (g scalar, v[...]) -> v's type */
const char *shape_cv2_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 0));
  if (n->in[1]->ty.dtype != DT_F32) return err_in(g, n, 1, "must be f32");
  n->out[0]->ty = n->in[1]->ty;
  return NULL;
}

/* ---------------------------------------------------------------- dispatch / combine */

/* (x[N,D], idx i32[N,k]) -> xs[N*k,D], offsets i32[E+1], pos i32[N,k]; E = ia[0] */
const char *shape_dispatch(Graph *g, Node *n) {
  TRY(need(g, n, 1, DT_I32, 2));
  Dim N = n->in[1]->ty.dim[0], k = n->in[1]->ty.dim[1];
  TRY(need(g, n, 0, DT_F32, 2));
  if (!dim_eq(n->in[0]->ty.dim[0], N)) return mismatch(g, n, 0, 1, "row counts differ");
  TRY(need_attr(g, n, 0, 1, MC_BIG, "E"));
  Dim D = n->in[0]->ty.dim[1], E1 = dim_int(n->ia[0] + 1);
  n->out[0]->ty = mk(DT_F32, 2, dim_mul(N, k), D, D);
  n->out[1]->ty = mk(DT_I32, 1, E1, E1, E1);
  n->out[2]->ty = n->in[1]->ty;
  return NULL;
}

/* (idx i32[N,k] [, every device's idx i32[Ng,k]]) -> kept i32[N,k], drop[E]; E = ia[0] */
const char *shape_capacity(Graph *g, Node *n) {
  if (n->nin < 1 || n->nin > 2) return "capacity takes idx and, on P devices, every device's idx";
  TRY(need(g, n, 0, DT_I32, 2));
  if (!dim_is_const(n->in[0]->ty.dim[1])) return err_in(g, n, 0, "needs a constant k");
  if (n->nin == 2) {
    TRY(need(g, n, 1, DT_I32, 2));
    if (!dim_eq(n->in[1]->ty.dim[1], n->in[0]->ty.dim[1])) return mismatch(g, n, 0, 1, "k differs");
  }
  TRY(need_attr(g, n, 0, 1, MC_BIG, "E"));
  if (!(n->fa[0] > 0)) return "capacity: the factor fa[0] must be positive";
  Dim E = dim_int(n->ia[0]);
  n->out[0]->ty = n->in[0]->ty;
  n->out[1]->ty = mk(DT_F32, 1, E, E, E);
  return NULL;
}

/* x[R,...] -> [R*ia[0], ...] */
const char *shape_all_gather_rows(Graph *g, Node *n) {
  if (n->in[0]->ty.rank < 1) return err_in(g, n, 0, "all_gather_rows needs rows (rank >= 1)");
  TRY(need_attr(g, n, 0, 1, 65536, "devices"));
  n->out[0]->ty = n->in[0]->ty;
  n->out[0]->ty.dim[0] = dim_mul(n->in[0]->ty.dim[0], dim_int(n->ia[0]));
  return NULL;
}

/* (g_xs[N*k,D], pos i32[N,k]) -> dx[N,D] */
const char *shape_undispatch(Graph *g, Node *n) {
  TRY(need(g, n, 1, DT_I32, 2));
  Dim N = n->in[1]->ty.dim[0], k = n->in[1]->ty.dim[1];
  TRY(need(g, n, 0, DT_F32, 2));
  if (!dim_eq(n->in[0]->ty.dim[0], dim_mul(N, k)))
    return mismatch(g, n, 0, 1, "rows must be N*k of pos [N,k]");
  n->out[0]->ty = mk(DT_F32, 2, N, n->in[0]->ty.dim[1], N);
  return NULL;
}

/* (xs[R,K], W[E,K,M] (transW: [E,M,K]), offsets i32[E+1]) -> [R,M] */
const char *shape_grouped_matmul(Graph *g, Node *n) {
  int64_t e;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_F32, 3));
  TRY(need_offsets(g, n, 2, &e));
  const Type *x = &n->in[0]->ty, *w = &n->in[1]->ty;
  if (!dim_eq(w->dim[0], dim_int(e))) return mismatch(g, n, 1, 2, "expert counts differ");
  bool tw = n->ia[0] != 0;
  Dim K = tw ? w->dim[2] : w->dim[1], M = tw ? w->dim[1] : w->dim[2];
  if (!dim_eq(x->dim[1], K)) return mismatch(g, n, 0, 1, "inner dims differ");
  n->out[0]->ty = mk(DT_F32, 2, x->dim[0], M, M);
  return NULL;
}

/* (h[R,H], g[R,O], W[E,H,O], offsets i32[E+1]) -> [R,H] */
const char *shape_grouped_matmul_relu_bwd(Graph *g, Node *n) {
  int64_t e;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_F32, 2));
  TRY(need(g, n, 2, DT_F32, 3));
  TRY(need_offsets(g, n, 3, &e));
  const Type *h = &n->in[0]->ty, *gr = &n->in[1]->ty, *w = &n->in[2]->ty;
  if (!dim_eq(w->dim[0], dim_int(e))) return mismatch(g, n, 2, 3, "expert counts differ");
  if (!dim_eq(gr->dim[1], w->dim[2])) return mismatch(g, n, 1, 2, "inner dims differ");
  if (!dim_eq(h->dim[0], gr->dim[0])) return mismatch(g, n, 0, 1, "row counts differ");
  if (!dim_eq(h->dim[1], w->dim[1])) return mismatch(g, n, 0, 2, "hidden dims differ");
  n->out[0]->ty = mk(DT_F32, 2, h->dim[0], h->dim[1], h->dim[1]);
  return NULL;
}

/* (xs[R,K], g[R,M], offsets i32[E+1]) -> dW[E,K,M] */
const char *shape_grouped_matmul_dw(Graph *g, Node *n) {
  int64_t e;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_F32, 2));
  TRY(need_offsets(g, n, 2, &e));
  const Type *x = &n->in[0]->ty, *gr = &n->in[1]->ty;
  if (!dim_eq(x->dim[0], gr->dim[0])) return mismatch(g, n, 0, 1, "row counts differ");
  n->out[0]->ty = mk(DT_F32, 3, dim_int(e), x->dim[1], gr->dim[1]);
  return NULL;
}

/* (x[R,M], b[E,M], offsets i32[E+1]) -> [R,M] */
const char *shape_grouped_bias(Graph *g, Node *n) {
  int64_t e;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need_offsets(g, n, 2, &e));
  TRY(need_2d(g, n, 1, DT_F32, dim_int(e), n->in[0]->ty.dim[1]));
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* (g[R,M], offsets i32[E+1]) -> [E,M] */
const char *shape_grouped_sum_rows(Graph *g, Node *n) {
  int64_t e;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need_offsets(g, n, 1, &e));
  Dim M = n->in[0]->ty.dim[1];
  n->out[0]->ty = mk(DT_F32, 2, dim_int(e), M, M);
  return NULL;
}

/* (ys[N*k,O], gates[N,k], pos i32[N,k]) -> y[N,O] */
const char *shape_combine(Graph *g, Node *n) {
  TRY(need(g, n, 2, DT_I32, 2));
  Dim N = n->in[2]->ty.dim[0], k = n->in[2]->ty.dim[1];
  TRY(need_2d(g, n, 1, DT_F32, N, k));
  TRY(need(g, n, 0, DT_F32, 2));
  if (!dim_eq(n->in[0]->ty.dim[0], dim_mul(N, k)))
    return mismatch(g, n, 0, 2, "rows must be N*k of pos [N,k]");
  n->out[0]->ty = mk(DT_F32, 2, N, n->in[0]->ty.dim[1], N);
  return NULL;
}

/* (g[N,O], ys[N*k,O], gates[N,k], pos i32[N,k]) -> dys[N*k,O], dgates[N,k] */
const char *shape_combine_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 3, DT_I32, 2));
  Dim N = n->in[3]->ty.dim[0], k = n->in[3]->ty.dim[1];
  TRY(need_2d(g, n, 2, DT_F32, N, k));
  TRY(need(g, n, 1, DT_F32, 2));
  Dim O = n->in[1]->ty.dim[1];
  if (!dim_eq(n->in[1]->ty.dim[0], dim_mul(N, k)))
    return mismatch(g, n, 1, 3, "rows must be N*k of pos [N,k]");
  TRY(need_2d(g, n, 0, DT_F32, N, O));
  n->out[0]->ty = n->in[1]->ty;
  n->out[1]->ty = n->in[2]->ty;
  return NULL;
}

/* ---------------------------------------------------------------- concat / slice */

/* x_i[n_i, ...] (same dtype and trailing dims, constant n_i) -> [sum n_i, ...] */
const char *shape_concat0(Graph *g, Node *n) {
  const Type *t0 = &n->in[0]->ty;
  if (t0->rank < 1) return err_in(g, n, 0, "must have rank >= 1");
  int64_t rows = 0;
  for (int i = 0; i < n->nin; i++) {
    const Type *t = &n->in[i]->ty;
    if (t->dtype != t0->dtype || t->rank != t0->rank)
      return mismatch(g, n, 0, i, "dtypes or ranks differ");
    for (int d = 1; d < t->rank; d++)
      if (!dim_eq(t->dim[d], t0->dim[d])) return mismatch(g, n, 0, i, "trailing dims differ");
    if (!dim_is_const(t->dim[0])) return err_in(g, n, i, "must have a constant dim 0");
    rows += t->dim[0].c;
  }
  Type o = *t0;
  o.dim[0] = dim_int(rows);
  n->out[0]->ty = o;
  return NULL;
}

/* x[n, ...] (constant n) -> rows [ia[0], ia[0]+ia[1]) */
const char *shape_slice0(Graph *g, Node *n) {
  const Type *t = &n->in[0]->ty;
  if (t->rank < 1 || !dim_is_const(t->dim[0]))
    return err_in(g, n, 0, "must have rank >= 1 and a constant dim 0");
  /* empty slices only on a graph holding one device's experts (passes/shard.c: an hmoe
   * group without local experts) */
  int64_t lo = g->experts_local ? 0 : 1;
  TRY(need_attr(g, n, 0, 0, t->dim[0].c - lo, "start"));
  TRY(need_attr(g, n, 1, lo, t->dim[0].c - n->ia[0], "len"));
  Type o = *t;
  o.dim[0] = dim_int(n->ia[1]);
  n->out[0]->ty = o;
  return NULL;
}

/* ---------------------------------------------------------------- hmoe helpers */

/* (idx i32[R,k], offsets i32[G+1]) -> i32[R,k]; ia[0] = E */
const char *shape_global_idx(Graph *g, Node *n) {
  int64_t G;
  TRY(need(g, n, 0, DT_I32, 2));
  TRY(need_offsets(g, n, 1, &G));
  TRY(need_attr(g, n, 0, 1, MC_BIG, "E"));
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* (v[N,k], pos i32[N,k]) -> [N*k] */
const char *shape_scatter_pos(Graph *g, Node *n) {
  TRY(need(g, n, 1, DT_I32, 2));
  Dim N = n->in[1]->ty.dim[0], k = n->in[1]->ty.dim[1];
  TRY(need_2d(g, n, 0, DT_F32, N, k));
  Dim r = dim_mul(N, k);
  n->out[0]->ty = mk(DT_F32, 1, r, r, r);
  return NULL;
}

/* (u[N*k], pos i32[N,k]) -> [N,k] */
const char *shape_gather_pos(Graph *g, Node *n) {
  TRY(need(g, n, 1, DT_I32, 2));
  Dim N = n->in[1]->ty.dim[0], k = n->in[1]->ty.dim[1];
  TRY(need(g, n, 0, DT_F32, 1));
  if (!dim_eq(n->in[0]->ty.dim[0], dim_mul(N, k)))
    return mismatch(g, n, 0, 1, "length must be N*k of pos [N,k]");
  n->out[0]->ty = mk(DT_F32, 2, N, k, k);
  return NULL;
}

/* (x[R,M], s[R]) -> [R,M] */
const char *shape_row_scale(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_F32, 1));
  if (!dim_eq(n->in[0]->ty.dim[0], n->in[1]->ty.dim[0]))
    return mismatch(g, n, 0, 1, "row counts differ");
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* (a[R,M], b[R,M]) -> [R] */
const char *shape_row_dot(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(same(g, n, 0, 1));
  Dim R = n->in[0]->ty.dim[0];
  n->out[0]->ty = mk(DT_F32, 1, R, R, R);
  return NULL;
}

/* (clean[R,E], noisy, sigma, thr[R,2], offsets i32[G+1]) -> [G,E] */
const char *shape_load_smooth_grouped(Graph *g, Node *n) {
  int64_t G;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(same(g, n, 0, 1));
  TRY(same(g, n, 0, 2));
  Dim R = n->in[0]->ty.dim[0], E = n->in[0]->ty.dim[1];
  TRY(need_2d(g, n, 3, DT_F32, R, dim_int(2)));
  TRY(need_offsets(g, n, 4, &G));
  n->out[0]->ty = mk(DT_F32, 2, dim_int(G), E, E);
  return NULL;
}

/* (g[G,E], clean[R,E], noisy, sigma, thr[R,2], offsets[G+1]) -> dclean, dsigma, dthr */
const char *shape_load_smooth_grouped_bwd(Graph *g, Node *n) {
  int64_t G;
  TRY(need(g, n, 1, DT_F32, 2));
  TRY(same(g, n, 1, 2));
  TRY(same(g, n, 1, 3));
  Dim R = n->in[1]->ty.dim[0], E = n->in[1]->ty.dim[1];
  TRY(need_2d(g, n, 4, DT_F32, R, dim_int(2)));
  TRY(need_offsets(g, n, 5, &G));
  TRY(need_2d(g, n, 0, DT_F32, dim_int(G), E));
  n->out[0]->ty = n->in[1]->ty;
  n->out[1]->ty = n->in[1]->ty;
  n->out[2]->ty = n->in[4]->ty;
  return NULL;
}

/* (v[G,E], offsets i32[G+1]) -> [G,E] */
const char *shape_div_group_rows(Graph *g, Node *n) {
  int64_t G;
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need_offsets(g, n, 1, &G));
  if (!dim_eq(n->in[0]->ty.dim[0], dim_int(G))) return mismatch(g, n, 0, 1, "group counts differ");
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* ---------------------------------------------------------------- batchwise gating */

/* (gs[N,E], thr[E][, cut_val[E], cut_row i32[E]]) -> mask[N,E], rows i32[N*k*P],
 * offsets i32[E+1]; k = ia[0] in [1, E], P = ia[1] (0: 1) */
const char *shape_batchwise_route(Graph *g, Node *n) {
  if (n->nin != 2 && n->nin != 4)
    return mc_arena_printf(&g->arena, "batchwise_route takes 2 inputs (or 4 with a cut)");
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_F32, 1));
  Dim N = n->in[0]->ty.dim[0], E = n->in[0]->ty.dim[1];
  if (!dim_is_const(E)) return err_in(g, n, 0, "must have a constant number of columns");
  if (!dim_eq(n->in[1]->ty.dim[0], E)) return mismatch(g, n, 0, 1, "thresholds must be [E]");
  if (n->nin == 4) {
    TRY(need(g, n, 2, DT_F32, 1));
    TRY(need(g, n, 3, DT_I32, 1));
    if (!dim_eq(n->in[2]->ty.dim[0], E) || !dim_eq(n->in[3]->ty.dim[0], E))
      return mismatch(g, n, 0, 2, "the cut must be [E]");
  }
  TRY(need_attr(g, n, 0, 1, E.c, "k"));
  if (n->ia[1] < 0 || n->ia[1] > 65536) return err_in(g, n, 0, "devices out of range");
  Dim R = dim_mul(N, dim_int(n->ia[0] * (n->ia[1] > 1 ? n->ia[1] : 1))), E1 = dim_int(E.c + 1);
  n->out[0]->ty = n->in[0]->ty;
  n->out[1]->ty = mk(DT_I32, 1, R, R, R);
  n->out[2]->ty = mk(DT_I32, 1, E1, E1, E1);
  return NULL;
}

/* (x[N,D], rows i32[R]) -> [R,D] */
const char *shape_gather_rows(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_I32, 1));
  Dim R = n->in[1]->ty.dim[0], D = n->in[0]->ty.dim[1];
  n->out[0]->ty = mk(DT_F32, 2, R, D, D);
  return NULL;
}

/* (g[R,D], rows i32[R], x[N,D]) -> [N,D] */
const char *shape_scatter_rows(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_I32, 1));
  TRY(need(g, n, 2, DT_F32, 2));
  if (!dim_eq(n->in[0]->ty.dim[0], n->in[1]->ty.dim[0]))
    return mismatch(g, n, 0, 1, "slot counts differ");
  if (!dim_eq(n->in[0]->ty.dim[1], n->in[2]->ty.dim[1]))
    return mismatch(g, n, 0, 2, "widths differ");
  n->out[0]->ty = n->in[2]->ty;
  return NULL;
}

/* (gs[N,E], mask[N,E]) or (g, gs, mask): all [N,E] -> [N,E] */
const char *shape_masked_norm(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  for (int i = 1; i < n->nin; i++)
    TRY(same(g, n, 0, i));
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* Checks ys[R,O], G[N,E], rows i32[R], offsets i32[E+1] at inputs i..i+3. */
static const char *check_routes(Graph *g, Node *n, int i) {
  int64_t e;
  TRY(need(g, n, i, DT_F32, 2));
  TRY(need(g, n, i + 1, DT_F32, 2));
  TRY(need(g, n, i + 2, DT_I32, 1));
  TRY(need_offsets(g, n, i + 3, &e));
  if (!dim_eq(n->in[i]->ty.dim[0], n->in[i + 2]->ty.dim[0]))
    return mismatch(g, n, i, i + 2, "slot counts differ");
  if (!dim_eq(n->in[i + 1]->ty.dim[1], dim_int(e)))
    return mismatch(g, n, i + 1, i + 3, "expert counts differ");
  return NULL;
}

/* (ys[R,O], G[N,E], rows i32[R], offsets i32[E+1]) -> [N,O] */
const char *shape_combine_routes(Graph *g, Node *n) {
  TRY(check_routes(g, n, 0));
  n->out[0]->ty = mk(DT_F32, 2, n->in[1]->ty.dim[0], n->in[0]->ty.dim[1], n->in[0]->ty.dim[1]);
  return NULL;
}

/* (g[N,O], ys, G, rows, offsets) -> dys[R,O], dG[N,E] */
const char *shape_combine_routes_bwd(Graph *g, Node *n) {
  TRY(check_routes(g, n, 1));
  TRY(need_2d(g, n, 0, DT_F32, n->in[2]->ty.dim[0], n->in[1]->ty.dim[1]));
  n->out[0]->ty = n->in[1]->ty;
  n->out[1]->ty = n->in[2]->ty;
  return NULL;
}

/* (gs[N,E], mask[N,E], thr[E]) -> scalar */
const char *shape_threshold_loss(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(same(g, n, 0, 1));
  TRY(need(g, n, 2, DT_F32, 1));
  if (!dim_eq(n->in[2]->ty.dim[0], n->in[0]->ty.dim[1]))
    return mismatch(g, n, 0, 2, "thresholds must be [E]");
  n->out[0]->ty = mk(DT_F32, 0, dim_int(1), dim_int(1), dim_int(1));
  return NULL;
}

/* (g scalar, gs, mask, thr) -> dgs[N,E], dthr[E] */
const char *shape_threshold_loss_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 0));
  TRY(need(g, n, 1, DT_F32, 2));
  TRY(same(g, n, 1, 2));
  TRY(need(g, n, 3, DT_F32, 1));
  if (!dim_eq(n->in[3]->ty.dim[0], n->in[1]->ty.dim[1]))
    return mismatch(g, n, 1, 3, "thresholds must be [E]");
  n->out[0]->ty = n->in[1]->ty;
  n->out[1]->ty = n->in[3]->ty;
  return NULL;
}
