/* shapes.c: the shape rules of the dense ops in ops.def (the MoE ops' rules
 * are in shapes_moe.c), shape_scalar (shared), and the reshape helpers
 * (ir_dim_pack, ir_reshape).
 *
 * A rule reads its inputs' symbolic types (n->in[i]->ty) and attributes, checks
 * dtypes, ranks and dims exactly (dim_eq: B*T equals B*T, not 32*20), sets every
 * output's type, and returns NULL or an error message in the graph's arena. */
#include <string.h>

#include "ir.h"

/* ---------------------------------------------------------------- helpers */

static const char *tstr(Graph *g, const Tensor *t) {
  char buf[160];
  return mc_arena_printf(&g->arena, "'%s' %s", t->name, type_str(&t->ty, buf, sizeof buf));
}

static bool type_eq(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!dim_eq(a->dim[i], b->dim[i])) return false;
  return true;
}

static Dim last_dim(const Type *t) {
  return t->dim[t->rank - 1];
}

/* Product of dims [from, to). */
static Dim dims_prod(const Type *t, int from, int to) {
  Dim d = dim_int(1);
  for (int i = from; i < to; i++)
    d = dim_mul(d, t->dim[i]);
  return d;
}

static Type f32_type(int rank, const Dim *dims) {
  return ir_type(DT_F32, rank, dims);
}

static const char *need_f32(Graph *g, Node *n, int i) {
  if (n->in[i]->ty.dtype != DT_F32)
    return mc_arena_printf(&g->arena, "input %d %s must be f32", i, tstr(g, n->in[i]));
  return NULL;
}

static const char *need_i32(Graph *g, Node *n, int i) {
  if (n->in[i]->ty.dtype != DT_I32)
    return mc_arena_printf(&g->arena, "input %d %s must be i32", i, tstr(g, n->in[i]));
  return NULL;
}

static const char *need_rank(Graph *g, Node *n, int i, int rank) {
  if (n->in[i]->ty.rank != rank)
    return mc_arena_printf(&g->arena, "input %d %s must have rank %d", i, tstr(g, n->in[i]), rank);
  return NULL;
}

static const char *need_rank_ge(Graph *g, Node *n, int i, int rank) {
  if (n->in[i]->ty.rank < rank)
    return mc_arena_printf(&g->arena, "input %d %s must have rank >= %d", i, tstr(g, n->in[i]),
                           rank);
  return NULL;
}

static const char *mismatch(Graph *g, Node *n, int i, int j, const char *what) {
  return mc_arena_printf(&g->arena, "%s: %s vs %s", what, tstr(g, n->in[i]), tstr(g, n->in[j]));
}

#define TRY(x)                                                                                     \
  do {                                                                                             \
    const char *e_ = (x);                                                                          \
    if (e_) return e_;                                                                             \
  } while (0)

/* ---------------------------------------------------------------- reshape helpers */

/* c in bits 0..39, the powers of B, T, S in 40..47, 48..55, 56..62 */
int64_t ir_dim_pack(Dim d) {
  MOEC_ASSERT(d.c >= 1 && d.c < ((int64_t)1 << 40) && d.b >= 0 && d.t >= 0 && d.s >= 0);
  return d.c | ((int64_t)d.b << 40) | ((int64_t)d.t << 48) | ((int64_t)d.s << 56);
}

Dim ir_dim_unpack(int64_t v) {
  Dim d = {v & (((int64_t)1 << 40) - 1), (int8_t)((v >> 40) & 0xff), (int8_t)((v >> 48) & 0xff),
           (int8_t)((v >> 56) & 0x7f)};
  return d;
}

Tensor *ir_reshape(Graph *g, Tensor *x, Type to) {
  MOEC_ASSERT(to.rank >= 0 && to.rank <= IR_MAX_ATTR && to.rank <= MAX_RANK);
  int64_t ia[IR_MAX_ATTR] = {0};
  for (int i = 0; i < to.rank; i++)
    ia[i] = ir_dim_pack(to.dim[i]);
  Tensor *in[1] = {x};
  return ir_node(g, OP_RESHAPE, 1, in, ia, NULL)->out[0];
}

/* ---------------------------------------------------------------- elementwise */

/* (a, b): b the same type as a, or a rank-0 scalar of a's dtype -> a's type. */
const char *shape_binary(Graph *g, Node *n) {
  const Type *a = &n->in[0]->ty, *b = &n->in[1]->ty;
  if (a->dtype != b->dtype) return mismatch(g, n, 0, 1, "dtypes differ");
  if (b->rank != 0 && !type_eq(a, b)) return mismatch(g, n, 0, 1, "shapes differ");
  n->out[0]->ty = *a;
  return NULL;
}

/* x -> x's type. Every op using it computes on floats except zeros (shape donor). */
const char *shape_unary(Graph *g, Node *n) {
  if (n->op != OP_ZEROS) TRY(need_f32(g, n, 0));
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* x -> y, mask: both x's type. */
const char *shape_dropout(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  if (!(n->fa[0] >= 0 && n->fa[0] < 1))
    return mc_arena_printf(&g->arena, "dropout p = %g is outside [0, 1)", n->fa[0]);
  n->out[0]->ty = n->in[0]->ty;
  n->out[1]->ty = n->in[0]->ty;
  return NULL;
}

/* ---------------------------------------------------------------- matmul family */

const char *shape_matmul(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_f32(g, n, 1));
  TRY(need_rank_ge(g, n, 0, 1));
  TRY(need_rank_ge(g, n, 1, 2));
  const Type *a = &n->in[0]->ty, *b = &n->in[1]->ty;
  bool ta = n->ia[0] != 0, tb = n->ia[1] != 0;
  if (!ta) {
    /* a[..., K] . b[K, N] (or b[N, K] with transB) -> [..., N] */
    TRY(need_rank(g, n, 1, 2));
    Dim k = tb ? b->dim[1] : b->dim[0], nn = tb ? b->dim[0] : b->dim[1];
    if (!dim_eq(last_dim(a), k)) return mismatch(g, n, 0, 1, "inner dims differ");
    Type o = *a;
    o.dim[o.rank - 1] = nn;
    n->out[0]->ty = o;
    return NULL;
  }
  /* transA: a as rows [R, M]; b [..., N] with R rows, or [N, R] with transB -> [M, N] */
  TRY(need_rank_ge(g, n, 0, 2));
  Dim r = dims_prod(a, 0, a->rank - 1), m = last_dim(a), nn, rb;
  if (tb) {
    TRY(need_rank(g, n, 1, 2));
    nn = b->dim[0];
    rb = b->dim[1];
  } else {
    nn = last_dim(b);
    rb = dims_prod(b, 0, b->rank - 1);
  }
  if (!dim_eq(r, rb)) return mismatch(g, n, 0, 1, "row counts differ (transA)");
  Dim o[2] = {m, nn};
  n->out[0]->ty = f32_type(2, o);
  return NULL;
}

/* x[..., N] + b[N] -> x's type */
const char *shape_bias_add(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_f32(g, n, 1));
  TRY(need_rank_ge(g, n, 0, 1));
  TRY(need_rank(g, n, 1, 1));
  if (!dim_eq(last_dim(&n->in[0]->ty), n->in[1]->ty.dim[0]))
    return mismatch(g, n, 0, 1, "bias width differs from the last dim");
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* x[..., N] -> [N] */
const char *shape_sum_rows(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_rank_ge(g, n, 0, 1));
  Dim d = last_dim(&n->in[0]->ty);
  n->out[0]->ty = f32_type(1, &d);
  return NULL;
}

/* x (any shape, f32) -> f32 scalar (sum, cv2, ...). */
const char *shape_scalar(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  n->out[0]->ty = f32_type(0, NULL);
  return NULL;
}

/* (scalar g, shape donor x) -> x's shape, f32 */
const char *shape_like1(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_rank(g, n, 0, 0));
  Type t = n->in[1]->ty;
  t.dtype = DT_F32;
  n->out[0]->ty = t;
  return NULL;
}

/* x -> the type packed in ia[] (see ir_reshape): same dtype and element count. */
const char *shape_reshape(Graph *g, Node *n) {
  const Type *x = &n->in[0]->ty;
  Type t = {.dtype = x->dtype, .rank = 0};
  for (int i = 0; i < IR_MAX_ATTR && n->ia[i] != 0; i++) {
    Dim d = ir_dim_unpack(n->ia[i]);
    if (d.c < 1) return "reshape: a target dim is not positive";
    if (t.rank == MAX_RANK) return "reshape: target rank too large";
    t.dim[t.rank++] = d;
  }
  if (!dim_eq(dims_prod(x, 0, x->rank), dims_prod(&t, 0, t.rank))) {
    char b1[160], b2[160];
    return mc_arena_printf(&g->arena, "reshape of '%s' %s to %s changes the element count",
                           n->in[0]->name, type_str(x, b1, sizeof b1), type_str(&t, b2, sizeof b2));
  }
  n->out[0]->ty = t;
  return NULL;
}

/* ---------------------------------------------------------------- embedding */

/* ids i32[...], W[V, D] -> [..., D] */
const char *shape_embedding(Graph *g, Node *n) {
  TRY(need_i32(g, n, 0));
  TRY(need_f32(g, n, 1));
  TRY(need_rank(g, n, 1, 2));
  const Type *ids = &n->in[0]->ty;
  if (ids->rank + 1 > MAX_RANK) return "embedding: ids have too many dims";
  Type o = *ids;
  o.dtype = DT_F32;
  o.dim[o.rank++] = n->in[1]->ty.dim[1];
  n->out[0]->ty = o;
  return NULL;
}

/* (ids i32[...], g[..., D]) -> dW[V, D], V = ia[0] */
const char *shape_embedding_bwd(Graph *g, Node *n) {
  if (n->nin < 2 || n->nin % 2) return "embedding_bwd takes (ids, rows) pairs";
  if (n->ia[0] < 1) return "embedding_bwd: ia[0] (vocabulary) must be positive";
  for (int p = 0; p < n->nin; p += 2) {
    TRY(need_i32(g, n, p));
    TRY(need_f32(g, n, p + 1));
    const Type *ids = &n->in[p]->ty, *gr = &n->in[p + 1]->ty;
    if (gr->rank != ids->rank + 1)
      return mismatch(g, n, p, p + 1, "gradient rank is not ids rank + 1");
    for (int i = 0; i < ids->rank; i++)
      if (!dim_eq(ids->dim[i], gr->dim[i])) return mismatch(g, n, p, p + 1, "leading dims differ");
    if (!dim_eq(last_dim(gr), last_dim(&n->in[1]->ty)))
      return mismatch(g, n, 1, p + 1, "the pairs' rows differ in width");
  }
  const Type *gr = &n->in[1]->ty;
  Dim o[2] = {dim_int(n->ia[0]), last_dim(gr)};
  n->out[0]->ty = f32_type(2, o);
  return NULL;
}

/* ---------------------------------------------------------------- lstm */

/* (xproj[B,T,4U], W_hh[4U,R], h0[B,R], c0[B,U] [, W_p[R,U]]) -> H[B,T,R], C[B,T,U],
 * G[B,T,4U], hT[B,R], cT[B,U]; R = U without W_p */
const char *shape_lstm(Graph *g, Node *n) {
  if (n->nin != 4 && n->nin != 5) return "lstm takes 4 inputs, or 5 with a projection";
  for (int i = 0; i < n->nin; i++)
    TRY(need_f32(g, n, i));
  TRY(need_rank(g, n, 0, 3));
  for (int i = 1; i < n->nin; i++)
    TRY(need_rank(g, n, i, 2));
  const Type *xp = &n->in[0]->ty, *w = &n->in[1]->ty;
  Dim b = xp->dim[0], t = xp->dim[1], r = w->dim[1];
  Dim u = n->nin == 5 ? n->in[4]->ty.dim[1] : r, u4 = dim_mul(dim_int(4), u);
  if (n->nin == 5 && !dim_eq(n->in[4]->ty.dim[0], r))
    return mismatch(g, n, 4, 1, "W_p must be [R, U] for W_hh [4U, R]");
  if (!dim_eq(w->dim[0], u4)) return mismatch(g, n, 1, 1, "W_hh must be [4U, R]");
  if (!dim_eq(xp->dim[2], u4)) return mismatch(g, n, 0, 1, "xproj width must be 4U of W_hh");
  const Type *h0 = &n->in[2]->ty, *c0 = &n->in[3]->ty;
  if (!dim_eq(h0->dim[0], b) || !dim_eq(h0->dim[1], r))
    return mismatch(g, n, 2, 0, "h0 must be [B, R]");
  if (!dim_eq(c0->dim[0], b) || !dim_eq(c0->dim[1], u))
    return mismatch(g, n, 3, 0, "c0 must be [B, U]");
  Dim btr[3] = {b, t, r}, btu[3] = {b, t, u}, bt4u[3] = {b, t, u4}, br[2] = {b, r}, bu[2] = {b, u};
  n->out[0]->ty = f32_type(3, btr);
  n->out[1]->ty = f32_type(3, btu);
  n->out[2]->ty = f32_type(3, bt4u);
  n->out[3]->ty = f32_type(2, br);
  n->out[4]->ty = f32_type(2, bu);
  return NULL;
}

/* (gH[B,T,R], W_hh[4U,R], h0[B,R], c0[B,U], H[B,T,R], C[B,T,U], G[B,T,4U] [, W_p[R,U]])
 *   -> dxproj[B,T,4U], dW_hh[4U,R], dh0[B,R], dc0[B,U] [, dW_p[R,U]]; R = U without W_p */
const char *shape_lstm_bwd(Graph *g, Node *n) {
  for (int i = 0; i < n->nin; i++)
    TRY(need_f32(g, n, i));
  const Type *gh = &n->in[0]->ty, *w = &n->in[1]->ty;
  TRY(need_rank(g, n, 0, 3));
  TRY(need_rank(g, n, 1, 2));
  bool proj = n->nin == 8;
  if (proj) TRY(need_rank(g, n, 7, 2));
  Dim b = gh->dim[0], t = gh->dim[1], r = w->dim[1];
  Dim u = proj ? n->in[7]->ty.dim[1] : r, u4 = dim_mul(dim_int(4), u);
  if (!dim_eq(gh->dim[2], r) || !dim_eq(w->dim[0], u4))
    return mismatch(g, n, 0, 1, "gH must be [B, T, R] for W_hh [4U, R]");
  Dim btr[3] = {b, t, r}, btu[3] = {b, t, u}, bt4u[3] = {b, t, u4}, br[2] = {b, r}, bu[2] = {b, u},
      wd[2] = {u4, r}, pd[2] = {r, u};
  Type tbr = f32_type(2, br), tbu = f32_type(2, bu), tbtr = f32_type(3, btr),
       tbtu = f32_type(3, btu), tbt4u = f32_type(3, bt4u), tp = f32_type(2, pd);
  if (!type_eq(&n->in[2]->ty, &tbr) || !type_eq(&n->in[3]->ty, &tbu))
    return mismatch(g, n, 2, 3, "h0 must be [B, R] and c0 [B, U]");
  if (!type_eq(&n->in[4]->ty, &tbtr) || !type_eq(&n->in[5]->ty, &tbtu))
    return mismatch(g, n, 4, 5, "H must be [B, T, R] and C [B, T, U]");
  if (!type_eq(&n->in[6]->ty, &tbt4u)) return mismatch(g, n, 6, 0, "G must be [B, T, 4U]");
  if (proj && !type_eq(&n->in[7]->ty, &tp)) return mismatch(g, n, 7, 1, "W_p must be [R, U]");
  n->out[0]->ty = tbt4u;
  n->out[1]->ty = f32_type(2, wd);
  n->out[2]->ty = tbr;
  n->out[3]->ty = tbu;
  if (proj) n->out[4]->ty = tp;
  return NULL;
}

/* ---------------------------------------------------------------- cross-entropy */

/* (logits[N,V], targets i32[N]) -> loss scalar, probs[N,V] */
const char *shape_xent(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_i32(g, n, 1));
  TRY(need_rank(g, n, 0, 2));
  TRY(need_rank(g, n, 1, 1));
  if (!dim_eq(n->in[0]->ty.dim[0], n->in[1]->ty.dim[0]))
    return mismatch(g, n, 0, 1, "logits and targets have different row counts");
  if (n->nin > 3) return mc_arena_printf(&g->arena, "xent takes 2 or 3 inputs, not %d", n->nin);
  if (n->nin == 3) { /* the bias, folded in by the fusion pass */
    TRY(need_f32(g, n, 2));
    TRY(need_rank(g, n, 2, 1));
    if (!dim_eq(n->in[0]->ty.dim[1], n->in[2]->ty.dim[0]))
      return mismatch(g, n, 0, 2, "logits[N,V] and bias[V] differ in V");
  }
  n->out[0]->ty = f32_type(0, NULL);
  n->out[1]->ty = n->in[0]->ty;
  return NULL;
}

/* (x[N,D], W[V,D], b[V], targets i32[N]) -> loss, probs[N,S+1], cand i32[S], tries i32[1];
 * S = ia[1] in [1, V] */
const char *shape_sampled_xent(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_rank(g, n, 0, 2));
  TRY(need_f32(g, n, 1));
  TRY(need_rank(g, n, 1, 2));
  TRY(need_f32(g, n, 2));
  TRY(need_rank(g, n, 2, 1));
  TRY(need_i32(g, n, 3));
  TRY(need_rank(g, n, 3, 1));
  const Type *x = &n->in[0]->ty, *w = &n->in[1]->ty, *b = &n->in[2]->ty;
  if (!dim_is_const(w->dim[0]) || !dim_eq(x->dim[1], w->dim[1]))
    return mismatch(g, n, 0, 1, "x[N,D] and W[V,D] need the same D and a constant V");
  if (!dim_eq(b->dim[0], w->dim[0])) return mismatch(g, n, 1, 2, "W[V,D] and b[V] differ in V");
  if (!dim_eq(x->dim[0], n->in[3]->ty.dim[0]))
    return mismatch(g, n, 0, 3, "x and targets have different row counts");
  if (n->ia[1] < 1 || n->ia[1] > w->dim[0].c)
    return mc_arena_printf(&g->arena, "sampled_xent: samples = %lld must be in [1, V = %lld]",
                           (long long)n->ia[1], (long long)w->dim[0].c);
  Dim pd[2] = {x->dim[0], dim_int(n->ia[1] + 1)}, s = dim_int(n->ia[1]), one = dim_int(1);
  n->out[0]->ty = f32_type(0, NULL);
  n->out[1]->ty = f32_type(2, pd);
  n->out[2]->ty = ir_type(DT_I32, 1, &s);
  n->out[3]->ty = ir_type(DT_I32, 1, &one);
  return NULL;
}

/* (targets i32[N]) -> cand i32[S], tries i32[1]; S = ia[1] in [1, V = ia[2]] */
const char *shape_sample_log_uniform(Graph *g, Node *n) {
  TRY(need_i32(g, n, 0));
  if (n->ia[1] < 1 || n->ia[1] > n->ia[2])
    return mc_arena_printf(&g->arena, "sample_log_uniform: samples = %lld must be in [1, V = %lld]",
                           (long long)n->ia[1], (long long)n->ia[2]);
  Dim s = dim_int(n->ia[1]), one = dim_int(1);
  n->out[0]->ty = ir_type(DT_I32, 1, &s);
  n->out[1]->ty = ir_type(DT_I32, 1, &one);
  return NULL;
}

/* (x[N,D], Wt[N,D], Ws[S,D], b[V], targets i32[N], cand i32[S], tries i32[1], W[V_r,D]) ->
 * loss, probs[N,S+1] */
const char *shape_sampled_xent_rows(Graph *g, Node *n) {
  for (int i = 0; i < 8; i++) {
    TRY(i >= 4 && i <= 6 ? need_i32(g, n, i) : need_f32(g, n, i));
    TRY(need_rank(g, n, i, i <= 2 || i == 7 ? 2 : 1));
  }
  const Type *x = &n->in[0]->ty;
  for (int i = 1; i < 8; i += i == 2 ? 5 : 1)
    if (!dim_eq(x->dim[1], n->in[i]->ty.dim[1]))
      return mismatch(g, n, 0, i, "x[N,D] and the table's rows differ in D");
  if (!dim_eq(x->dim[0], n->in[1]->ty.dim[0]) || !dim_eq(x->dim[0], n->in[4]->ty.dim[0]))
    return mismatch(g, n, 0, 4, "x, the targets' rows and the targets differ in rows");
  if (!dim_eq(n->in[2]->ty.dim[0], dim_int(n->ia[1])) ||
      !dim_eq(n->in[5]->ty.dim[0], dim_int(n->ia[1])) ||
      !dim_eq(n->in[3]->ty.dim[0], dim_int(n->ia[2])))
    return mismatch(g, n, 2, 5, "the candidates' rows, cand[S] and b[V] do not match S and V");
  Dim pd[2] = {x->dim[0], dim_int(n->ia[1] + 1)};
  n->out[0]->ty = f32_type(0, NULL);
  n->out[1]->ty = f32_type(2, pd);
  return NULL;
}

/* (g, probs[N,S+1], x[N,D], Wt[N,D], Ws[S,D], targets[N], cand[S], tries[1]) -> as
 * sampled_xent_bwd's */
const char *shape_sampled_xent_rows_bwd(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_rank(g, n, 0, 0));
  for (int i = 1; i < 8; i++) {
    TRY(i >= 5 ? need_i32(g, n, i) : need_f32(g, n, i));
    TRY(need_rank(g, n, i, i >= 5 ? 1 : 2));
  }
  Dim N = n->in[2]->ty.dim[0], D = n->in[2]->ty.dim[1], S = n->in[6]->ty.dim[0];
  if (!dim_eq(n->in[1]->ty.dim[0], N) || !dim_eq(n->in[3]->ty.dim[0], N) ||
      !dim_eq(n->in[5]->ty.dim[0], N))
    return mismatch(g, n, 1, 2, "probs, x, the targets' rows and the targets differ in rows");
  if (!dim_is_const(S) || !dim_eq(n->in[1]->ty.dim[1], dim_int(S.c + 1)) ||
      !dim_eq(n->in[4]->ty.dim[0], S))
    return mismatch(g, n, 1, 6, "probs[N,S+1], the candidates' rows and cand[S] differ in S");
  if (!dim_eq(n->in[3]->ty.dim[1], D) || !dim_eq(n->in[4]->ty.dim[1], D))
    return mismatch(g, n, 2, 3, "x and the rows differ in D");
  Dim nd[2] = {N, D}, n1[2] = {N, dim_int(1)}, sd[2] = {S, D}, s1[2] = {S, dim_int(1)};
  n->out[0]->ty = f32_type(2, nd);
  n->out[1]->ty = f32_type(2, nd);
  n->out[2]->ty = f32_type(2, n1);
  n->out[3]->ty = f32_type(2, sd);
  n->out[4]->ty = f32_type(2, s1);
  return NULL;
}

/* (g, probs[N,S+1], x[N,D], W[V,D], targets[N], cand[S], tries[1]) ->
 * dx[N,D], dWt[N,D], dbt[N,1], dWs[S,D], dbs[S,1] */
const char *shape_sampled_xent_bwd(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_rank(g, n, 0, 0));
  TRY(need_f32(g, n, 1));
  TRY(need_rank(g, n, 1, 2));
  TRY(need_f32(g, n, 2));
  TRY(need_rank(g, n, 2, 2));
  TRY(need_f32(g, n, 3));
  TRY(need_rank(g, n, 3, 2));
  for (int i = 4; i < 7; i++) {
    TRY(need_i32(g, n, i));
    TRY(need_rank(g, n, i, 1));
  }
  Dim N = n->in[2]->ty.dim[0], D = n->in[2]->ty.dim[1], S = n->in[5]->ty.dim[0];
  if (!dim_eq(n->in[1]->ty.dim[0], N) || !dim_eq(n->in[4]->ty.dim[0], N))
    return mismatch(g, n, 1, 2, "probs, x and targets have different row counts");
  if (!dim_is_const(S) || !dim_eq(n->in[1]->ty.dim[1], dim_int(S.c + 1)))
    return mismatch(g, n, 1, 5, "probs[N,S+1] and cand[S] differ in S");
  if (!dim_eq(n->in[3]->ty.dim[1], D)) return mismatch(g, n, 2, 3, "x and W differ in D");
  Dim nd[2] = {N, D}, n1[2] = {N, dim_int(1)}, sd[2] = {S, D}, s1[2] = {S, dim_int(1)};
  n->out[0]->ty = f32_type(2, nd);
  n->out[1]->ty = f32_type(2, nd);
  n->out[2]->ty = f32_type(2, n1);
  n->out[3]->ty = f32_type(2, sd);
  n->out[4]->ty = f32_type(2, s1);
  return NULL;
}

/* (g scalar, probs[N,V], targets i32[N]) -> dlogits[N,V] */
const char *shape_xent_bwd(Graph *g, Node *n) {
  TRY(need_f32(g, n, 0));
  TRY(need_rank(g, n, 0, 0));
  TRY(need_f32(g, n, 1));
  TRY(need_rank(g, n, 1, 2));
  TRY(need_i32(g, n, 2));
  TRY(need_rank(g, n, 2, 1));
  if (!dim_eq(n->in[1]->ty.dim[0], n->in[2]->ty.dim[0]))
    return mismatch(g, n, 1, 2, "probs and targets have different row counts");
  n->out[0]->ty = n->in[1]->ty;
  return NULL;
}

/* xent_bwd's checks; dlogits[N,V] and db[V] */
const char *shape_xent_bias_bwd(Graph *g, Node *n) {
  TRY(shape_xent_bwd(g, n));
  n->out[1]->ty = f32_type(1, &n->in[1]->ty.dim[1]);
  return NULL;
}
