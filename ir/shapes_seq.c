/* shapes_seq.c: the shape rules of the sequence ops in ops.def (pad masks, the padded
 * cross-entropy, batched matmuls, attention scores and weights, column scaling, joining
 * along the last dim). Conventions as in shapes.c: dims compared exactly with dim_eq;
 * returns NULL or an error message in the graph's arena (helpers: shapes_util.h). */
#include "shapes_util.h"

/* ---------------------------------------------------------------- helpers */

static Type f32(int rank, Dim d0, Dim d1, Dim d2) {
  Dim d[3] = {d0, d1, d2};
  return ir_type(DT_F32, rank, d);
}

static Dim last(const Type *t) {
  return t->dim[t->rank - 1];
}

/* ---------------------------------------------------------------- masks, padded xent */

/* ids i32[B, L] -> mask f32[B, L] */
const char *shape_pad_mask(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_I32, 2));
  n->out[0]->ty = n->in[0]->ty;
  n->out[0]->ty.dtype = DT_F32;
  return NULL;
}

/* ids i32[...] -> f32 scalar */
const char *shape_count_nonpad(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_I32, -1));
  n->out[0]->ty = f32(0, dim_int(1), dim_int(1), dim_int(1));
  return NULL;
}

/* (logits[N,V], targets i32[N], count scalar) -> loss scalar, probs[N,V] */
const char *shape_xent_pad(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 2));
  TRY(need(g, n, 1, DT_I32, 1));
  TRY(need(g, n, 2, DT_F32, 0));
  if (!dim_eq(n->in[0]->ty.dim[0], n->in[1]->ty.dim[0]))
    return mismatch(g, n, 0, 1, "logits and targets have different row counts");
  n->out[0]->ty = f32(0, dim_int(1), dim_int(1), dim_int(1));
  n->out[1]->ty = n->in[0]->ty;
  return NULL;
}

/* (g scalar, probs[N,V], targets i32[N], count scalar) -> dlogits[N,V] */
const char *shape_xent_pad_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 0));
  TRY(need(g, n, 1, DT_F32, 2));
  TRY(need(g, n, 2, DT_I32, 1));
  TRY(need(g, n, 3, DT_F32, 0));
  if (!dim_eq(n->in[1]->ty.dim[0], n->in[2]->ty.dim[0]))
    return mismatch(g, n, 1, 2, "probs and targets have different row counts");
  n->out[0]->ty = n->in[1]->ty;
  return NULL;
}

/* ---------------------------------------------------------------- bmm */

/* a[Bt,M,K] (or [Bt,K,M] with transA) . b[Bt,K,N] (or [Bt,N,K] with transB) -> [Bt,M,N] */
const char *shape_bmm(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 3));
  TRY(need(g, n, 1, DT_F32, 3));
  const Type *a = &n->in[0]->ty, *b = &n->in[1]->ty;
  bool ta = n->ia[0] != 0, tb = n->ia[1] != 0;
  if (!dim_eq(a->dim[0], b->dim[0])) return mismatch(g, n, 0, 1, "batch dims differ");
  Dim m = ta ? a->dim[2] : a->dim[1], ka = ta ? a->dim[1] : a->dim[2];
  Dim kb = tb ? b->dim[2] : b->dim[1], nn = tb ? b->dim[1] : b->dim[2];
  if (!dim_eq(ka, kb)) return mismatch(g, n, 0, 1, "inner dims differ");
  n->out[0]->ty = f32(3, a->dim[0], m, nn);
  return NULL;
}

/* ---------------------------------------------------------------- attention */

/* (qw[Bt,T,A], mu[Bt,S,A], v[A]) -> s[Bt,T,S] */
const char *shape_attn_score(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 3));
  TRY(need(g, n, 1, DT_F32, 3));
  TRY(need(g, n, 2, DT_F32, 1));
  const Type *q = &n->in[0]->ty, *m = &n->in[1]->ty, *v = &n->in[2]->ty;
  if (!dim_eq(q->dim[0], m->dim[0])) return mismatch(g, n, 0, 1, "batch dims differ");
  if (!dim_eq(q->dim[2], m->dim[2]) || !dim_eq(q->dim[2], v->dim[0]))
    return mismatch(g, n, 0, 1, "attention widths differ (qw, mu and v share A)");
  n->out[0]->ty = f32(3, q->dim[0], q->dim[1], m->dim[1]);
  return NULL;
}

/* (g[Bt,T,S], qw[Bt,T,A], mu[Bt,S,A], v[A]) -> dqw, dmu, dv */
const char *shape_attn_score_bwd(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 3));
  for (int i = 1; i < 4; i++)
    TRY(need(g, n, i, DT_F32, i == 3 ? 1 : 3));
  const Type *gr = &n->in[0]->ty, *q = &n->in[1]->ty, *m = &n->in[2]->ty;
  Type want = f32(3, q->dim[0], q->dim[1], m->dim[1]);
  if (!type_eq(gr, &want)) return mismatch(g, n, 0, 1, "the gradient must be [Bt, T, S]");
  if (!dim_eq(q->dim[2], m->dim[2]) || !dim_eq(q->dim[2], n->in[3]->ty.dim[0]))
    return mismatch(g, n, 1, 2, "attention widths differ");
  n->out[0]->ty = *q;
  n->out[1]->ty = *m;
  n->out[2]->ty = n->in[3]->ty;
  return NULL;
}

/* (s[Bt,T,S], mask[Bt,S]) -> a[Bt,T,S] */
const char *shape_masked_softmax(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, 3));
  TRY(need(g, n, 1, DT_F32, 2));
  const Type *s = &n->in[0]->ty, *m = &n->in[1]->ty;
  if (!dim_eq(s->dim[0], m->dim[0]) || !dim_eq(s->dim[2], m->dim[1]))
    return mismatch(g, n, 0, 1, "the mask must be [Bt, S] of scores [Bt, T, S]");
  n->out[0]->ty = *s;
  return NULL;
}

/* ---------------------------------------------------------------- columns */

/* (x[...,N], v[N]) -> x's type */
const char *shape_col_scale(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, -1));
  TRY(need(g, n, 1, DT_F32, 1));
  if (!dim_eq(last(&n->in[0]->ty), n->in[1]->ty.dim[0]))
    return mismatch(g, n, 0, 1, "the scale's length differs from the last dim");
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* (a[...,N1], b[...,N2]) -> [...,N1+N2] */
const char *shape_concat_last(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, -1));
  TRY(need(g, n, 1, DT_F32, -1));
  const Type *a = &n->in[0]->ty, *b = &n->in[1]->ty;
  if (a->rank != b->rank) return mismatch(g, n, 0, 1, "ranks differ");
  for (int i = 0; i + 1 < a->rank; i++)
    if (!dim_eq(a->dim[i], b->dim[i])) return mismatch(g, n, 0, 1, "leading dims differ");
  if (!dim_is_const(last(a)) || !dim_is_const(last(b)))
    return mismatch(g, n, 0, 1, "joined widths must be constants");
  Type o = *a;
  o.dim[o.rank - 1] = dim_int(last(a).c + last(b).c);
  n->out[0]->ty = o;
  return NULL;
}

/* x[...,N] -> [...,ia[1]], columns [ia[0], ia[0]+ia[1]) */
const char *shape_slice_last(Graph *g, Node *n) {
  TRY(need(g, n, 0, DT_F32, -1));
  Dim w = last(&n->in[0]->ty);
  if (!dim_is_const(w) || n->ia[0] < 0 || n->ia[1] < 1 || n->ia[0] + n->ia[1] > w.c)
    return err_in(g, n, 0,
                  mc_arena_printf(&g->arena, "has no columns [%lld, %lld)", (long long)n->ia[0],
                                  (long long)(n->ia[0] + n->ia[1])));
  Type o = n->in[0]->ty;
  o.dim[o.rank - 1] = dim_int(n->ia[1]);
  n->out[0]->ty = o;
  return NULL;
}
