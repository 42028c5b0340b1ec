/* autodiff.c: reverse-mode differentiation of the forward graph.
 *
 * Appends to g the ordinary nodes (marked backward, outputs TK_GRAD) that compute
 * d(g->loss)/d(param) for every param, using the gradient rules of ops.def:
 *
 *   1. which float tensors need a gradient: those that depend on a param (through
 *      differentiable ops) and on which the loss depends;
 *   2. the seed: d loss / d loss = 1, made as scale(zeros(loss), 0, +1);
 *   3. nodes in reverse order: a node whose outputs carry gradients and whose
 *      inputs need one calls its rule; contributions reaching a tensor from
 *      several consumers are summed with OP_ADD in the order they arrive (reverse
 *      node order, then input order: deterministic);
 *   4. param->grad for every param: its own TK_GRAD tensor (a copy where the
 *      gradient is shared or is a forward tensor), zeros where the param does not
 *      reach the loss, so the optimizer always has one;
 *   5. dead backward nodes (gradients of inputs nobody needs, e.g. d/d data)
 *      are dropped, with their tensors, so the program computes only what the
 *      params need.
 * Emitted nodes carry the forward node's layer, role and location. */

#include "passes.h"

static bool same_type(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int i = 0; i < a->rank; i++)
    if (!dim_eq(a->dim[i], b->dim[i])) return false;
  return true;
}

static bool differentiable(const Node *n) {
  const OpInfo *info = &ir_ops[n->op];
  return info->grad && !(info->flags & OPF_NODIFF);
}

/* Adds gradient contribution d to the tensor x's running sum in grads[]. */
static void accumulate(Graph *g, Tensor **grads, const Node *n, Tensor *x, Tensor *d) {
  if (!same_type(&d->ty, &x->ty)) {
    char b1[128], b2[128];
    mc_fatal("gradient rule of '%s' gave '%s' a gradient of type %s (expected %s)",
             ir_ops[n->op].name, x->name, type_str(&d->ty, b1, sizeof b1),
             type_str(&x->ty, b2, sizeof b2));
  }
  Tensor *s = grads[x->id];
  grads[x->id] = s ? ir_op2(g, OP_ADD, s, d) : d;
}

/* Drops backward nodes whose outputs nothing live reads, and their tensors
 * (all made by autodiff: nodes from first_node, tensors from first_tensor). */
static void prune(Graph *g, int first_node, int first_tensor) {
  bool *live = mc_calloc((size_t)g->ntensors, sizeof(bool));
  bool *keep = mc_calloc((size_t)g->nnodes, sizeof(bool));
  for (int i = 0; i < g->nparams; i++)
    live[g->params[i]->grad->id] = true;
  for (int k = g->nnodes - 1; k >= first_node; k--) {
    const Node *n = g->nodes[k];
    for (int j = 0; j < n->nout; j++)
      keep[k] |= live[n->out[j]->id];
    if (!keep[k]) continue;
    for (int i = 0; i < n->nin; i++)
      live[n->in[i]->id] = true;
  }
  int nt = first_tensor;
  for (int i = first_tensor; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    if (t->producer && !keep[t->producer->id]) continue;
    t->id = nt;
    g->tensors[nt++] = t;
  }
  g->ntensors = nt;
  int nn = first_node;
  for (int k = first_node; k < g->nnodes; k++) {
    if (!keep[k]) continue;
    g->nodes[nn] = g->nodes[k];
    g->nodes[nn]->id = nn;
    nn++;
  }
  g->nnodes = nn;
  mc_free(live);
  mc_free(keep);
}

void pass_autodiff(Graph *g, const PassCtx *ctx) {
  (void)ctx;
  if (g->has_backward) return;
  if (!g->loss) mc_fatal("autodiff: the graph has no loss");
  MOEC_ASSERT(g->loss->ty.rank == 0 && g->loss->ty.dtype == DT_F32);
  int nfwd = g->nnodes, ntens = g->ntensors;
  for (int k = 0; k < nfwd; k++)
    MOEC_ASSERT(g->nodes[k]->id == k); /* prune() relies on it */

  /* 1. dep: depends on a param; need: the loss depends on it */
  bool *dep = mc_calloc((size_t)ntens, sizeof(bool));
  bool *need = mc_calloc((size_t)ntens, sizeof(bool));
  for (int i = 0; i < g->nparams; i++)
    dep[g->params[i]->id] = true;
  for (int k = 0; k < nfwd; k++) {
    const Node *n = g->nodes[k];
    if (!differentiable(n)) continue;
    bool any = false;
    for (int i = 0; i < n->nin; i++)
      any |= dep[n->in[i]->id];
    for (int j = 0; j < n->nout; j++)
      dep[n->out[j]->id] = any && n->out[j]->ty.dtype == DT_F32;
  }
  need[g->loss->id] = true;
  for (int k = nfwd - 1; k >= 0; k--) {
    const Node *n = g->nodes[k];
    if (!differentiable(n)) continue;
    bool any = false;
    for (int j = 0; j < n->nout; j++)
      any |= need[n->out[j]->id];
    if (!any) continue;
    for (int i = 0; i < n->nin; i++)
      need[n->in[i]->id] = true;
  }

  Tensor **grads = mc_calloc((size_t)ntens, sizeof(Tensor *));
  ir_set_backward(g, true);

  /* 2. the seed */
  if (dep[g->loss->id]) {
    ir_set_context(g, NULL, "loss", g->loss->loc);
    double fa[IR_MAX_ATTR] = {0, 1};
    Tensor *z = ir_op1(g, OP_ZEROS, g->loss);
    Tensor *in[1] = {z};
    grads[g->loss->id] = ir_node(g, OP_SCALE, 1, in, NULL, fa)->out[0];
  }

  /* 3. reverse sweep */
  Tensor *gout[8];
  for (int k = nfwd - 1; k >= 0; k--) {
    Node *n = g->nodes[k];
    if (!differentiable(n)) continue;
    bool any_out = false, any_in = false;
    for (int j = 0; j < n->nout; j++)
      any_out |= grads[n->out[j]->id] != NULL;
    for (int i = 0; i < n->nin; i++)
      any_in |= dep[n->in[i]->id] && need[n->in[i]->id];
    if (!any_out || !any_in) continue;
    MOEC_ASSERT(n->nout <= (int)MC_ARRAY_LEN(gout));
    for (int j = 0; j < n->nout; j++)
      gout[j] = grads[n->out[j]->id];
    Tensor **gin = mc_calloc((size_t)n->nin, sizeof(Tensor *)); /* variadic ops: any nin */
    ir_set_context(g, n->layer, n->role, n->loc);
    ir_ops[n->op].grad(g, n, gout, gin);
    for (int i = 0; i < n->nin; i++) {
      Tensor *x = n->in[i];
      if (gin[i] && dep[x->id] && need[x->id]) accumulate(g, grads, n, x, gin[i]);
    }
    mc_free(gin);
  }

  /* 4. every param gets its own gradient tensor (given: a gradient an earlier param
   * took; every d below comes from step 3, so its id is below ngrad) */
  int ngrad = g->ntensors;
  bool *given = mc_calloc((size_t)ngrad + 1, sizeof(bool));
  for (int i = 0; i < g->nparams; i++) {
    Tensor *w = g->params[i];
    ir_set_context(g, NULL, "grad", w->loc);
    Tensor *d = grads[w->id];
    bool shared = d && given[d->id];
    if (d) given[d->id] = true;
    if (!d)
      d = ir_op1(g, OP_ZEROS, w);
    else if (shared || d->kind != TK_GRAD) {
      double fa[IR_MAX_ATTR] = {1, 0};
      Tensor *in[1] = {d};
      d = ir_node(g, OP_SCALE, 1, in, NULL, fa)->out[0];
    }
    w->grad = d;
  }
  mc_free(given);
  ir_set_backward(g, false);
  ir_set_context(g, NULL, NULL, (Loc){0});

  /* 5. drop what no param gradient needs */
  prune(g, nfwd, ntens);
  g->has_backward = true;
  mc_free(dep);
  mc_free(need);
  mc_free(grads);
}
