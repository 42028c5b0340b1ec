/* sparse.c: row-sparse gradients over N devices (docs/placement.md, "Sparse gradients").
 * The gradient of an embedding, or of a sampled softmax's weight and bias, is a scatter of
 * rows (embedding_bwd(ids, rows)): only the rows of the batch's tokens, targets and
 * samples are non-zero. When every device's (id, row) pairs are fewer bytes than a ring
 * all-reduce of the dense [V, D] gradient, the comm pass makes each such scatter a
 * sparse_all_reduce (the pairs all-gathered, scattered in rank order) instead of
 * all-reducing the parameter's gradient. Prefix: pass_. */
#include "passes.h"

/* The scatters whose (reshaped) sum is t: true when t is made only of add, reshape and
 * embedding_bwd nodes on the same devices; leaves appended to out (at most cap). */
static bool scatter_tree(Tensor *t, const Node *like, Node **out, int *n, int cap) {
  Node *p = t->producer;
  if (!p || p->device != like->device || p->ndevices != like->ndevices) return false;
  switch (p->op) {
  case OP_EMBEDDING_BWD:
    if (*n == cap) return false;
    out[(*n)++] = p;
    return true;
  case OP_RESHAPE:
    return scatter_tree(p->in[0], like, out, n, cap);
  case OP_ADD:
    return scatter_tree(p->in[0], like, out, n, cap) && scatter_tree(p->in[1], like, out, n, cap);
  default:
    return false;
  }
}

static void mark_replicated(Tensor *t) {
  Node *p = t->producer;
  t->part = PART_REPLICATED;
  if (p->op == OP_RESHAPE || p->op == OP_ADD)
    for (int i = 0; i < (p->op == OP_ADD ? 2 : 1); i++)
      mark_replicated(p->in[i]);
}

bool pass_sparse_grad(Graph *g, Tensor *p, int P, const Config *cfg) {
  if (P <= 1 || !cfg || !p->grad || !p->grad->producer) return false;
  Node *leaf[8];
  int n = 0;
  if (!scatter_tree(p->grad, p->grad->producer, leaf, &n, 8)) return false;
  int nd = p->grad->producer->ndevices > 0  ? p->grad->producer->ndevices
           : p->grad->producer->device >= 0 ? 1
                                            : P;
  if (nd <= 1) return false;
  /* elements every device sends (ids and rows) vs a ring all-reduce's 2/nd of the tensor;
   * the symbols at this device's rows of the config's batch */
  int64_t B = cfg->batch > 0 ? (cfg->batch + nd - 1) / nd : 1,
          T = cfg->unroll > 0 ? cfg->unroll : 1;
  double pairs = 0, dense = 1;
  for (int i = 0; i < n; i++)
    for (int q = 0; q + 1 < leaf[i]->nin; q += 2) {
      const Type *ids = &leaf[i]->in[q]->ty, *rows = &leaf[i]->in[q + 1]->ty;
      double r = 1;
      for (int d = 0; d < ids->rank; d++)
        r *= (double)dim_eval(ids->dim[d], B, T);
      pairs += r * (double)(1 + dim_eval(rows->dim[rows->rank - 1], B, T));
    }
  for (int d = 0; d < p->ty.rank; d++)
    dense *= (double)dim_eval(p->ty.dim[d], B, T);
  if (!(pairs < 2 * dense / nd)) return false;
  for (int i = 0; i < n; i++) {
    leaf[i]->op = OP_SPARSE_ALL_REDUCE;
    leaf[i]->ia[1] = nd;
    leaf[i]->out[0]->name = n == 1 ? mc_arena_printf(&g->arena, "%s.grad@rows", p->name)
                                   : mc_arena_printf(&g->arena, "%s.grad@rows%d", p->name, i);
  }
  mark_replicated(p->grad);
  return true;
}
