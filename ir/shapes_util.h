/* shapes_util.h: the helpers the shape rules of shapes_moe.c and shapes_seq.c share:
 * naming a tensor in a message, exact type comparison, an input's dtype and rank, and
 * TRY (return the first error). Messages are arena strings; NULL means no error. */
#ifndef MOEC_IR_SHAPES_UTIL_H
#define MOEC_IR_SHAPES_UTIL_H

#include "ir.h"

/* "'name' f32[B, T, 8]" */
static inline const char *tstr(Graph *g, const Tensor *t) {
  char buf[160];
  return mc_arena_printf(&g->arena, "'%s' %s", t->name, type_str(&t->ty, buf, sizeof buf));
}

static inline bool type_eq(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!dim_eq(a->dim[i], b->dim[i])) return false;
  return true;
}

static inline const char *err_in(Graph *g, Node *n, int i, const char *what) {
  return mc_arena_printf(&g->arena, "%s: input %d %s %s", ir_ops[n->op].name, i, tstr(g, n->in[i]),
                         what);
}

static inline const char *mismatch(Graph *g, Node *n, int i, int j, const char *what) {
  return mc_arena_printf(&g->arena, "%s: %s: %s vs %s", ir_ops[n->op].name, what, tstr(g, n->in[i]),
                         tstr(g, n->in[j]));
}

#define TRY(x)                                                                                     \
  do {                                                                                             \
    const char *e_ = (x);                                                                          \
    if (e_) return e_;                                                                             \
  } while (0)

/* Input i has dtype dt and rank `rank` (rank < 0: at least -rank). */
static inline const char *need(Graph *g, Node *n, int i, DType dt, int rank) {
  const Type *t = &n->in[i]->ty;
  if (t->dtype != dt) return err_in(g, n, i, dt == DT_F32 ? "must be f32" : "must be i32");
  if (rank >= 0 ? t->rank != rank : t->rank < -rank)
    return err_in(g, n, i,
                  mc_arena_printf(&g->arena, "must have rank %s%d", rank < 0 ? ">= " : "",
                                  rank < 0 ? -rank : rank));
  return NULL;
}

#endif
