/* sparse.c: row-sparse gradients over N devices (docs/placement.md, "Sparse gradients").
 * The gradient of an embedding, or of a sampled softmax's weight and bias, is a scatter of
 * rows (embedding_bwd(ids, rows)): only the rows of the batch's tokens, targets and
 * samples are non-zero. When every device's (id, row) pairs are fewer bytes than a ring
 * all-reduce of the dense [V, D] gradient, the comm pass makes each such scatter a
 * sparse_all_reduce (the pairs all-gathered, scattered in rank order) instead of
 * all-reducing the parameter's gradient (on the cpu backend: the cuda one all-reduces it
 * dense).
 * With plan.tables = sharded an embedding's table is not replicated at all: each device
 * holds a contiguous range of its rows (PART_ROWS), the embedding becomes a table_gather
 * (ids to their owners, rows back) and its gradient a table_scatter into the owner's rows
 * (docs/placement.md, "Tables sharded by rows"). Prefix: pass_. */
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

static void mark_part(Tensor *t, PartKind part) {
  Node *p = t->producer;
  t->part = part;
  if (p->op == OP_RESHAPE || p->op == OP_ADD)
    for (int i = 0; i < (p->op == OP_ADD ? 2 : 1); i++)
      mark_part(p->in[i], part);
}

bool pass_sparse_grad(Graph *g, Tensor *p, int P, const Config *cfg) {
  /* the cuda backend has no sparse_all_reduce kernel: its gradients go dense */
  if (P <= 1 || !cfg || cfg->backend == BK_CUDA || !p->grad || !p->grad->producer) return false;
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
  mark_part(p->grad, PART_REPLICATED);
  return true;
}

/* ---------------------------------------------------------------- tables sharded by rows */

/* (ids i32[...], g[...,D]) -> dW[V_r,D]: this device's rows on a device graph (the shard
 * pass), all V on the global one */
const char *shape_table_scatter(Graph *g, Node *n) {
  int64_t V = n->ia[0];
  int P = (int)n->ia[1];
  if (V < 1 || P < 1 || V < P)
    return mc_arena_printf(&g->arena, "table_scatter: %lld rows over %d devices", (long long)V, P);
  const char *err = shape_embedding_bwd(g, n);
  if (err || !g->experts_local) return err;
  int r = g->experts_rank;
  n->out[0]->ty.dim[0] = dim_int(ir_table_first(V, P, r + 1) - ir_table_first(V, P, r));
  return NULL;
}

bool pass_table_shard(Graph *g, Tensor *p, int P, const Config *cfg) {
  if (P <= 1 || !cfg || !cfg->tables_sharded || !p->grad || !p->grad->producer || p->ty.rank != 2 ||
      !dim_is_const(p->ty.dim[0]) || p->ty.dim[0].c < P)
    return false;
  /* an embedding's table: read only by embeddings on every device, its gradient a sum of
   * their scatters (a sampled softmax's weight: passes/comm.c, sampled_table) */
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    for (int i = 0; i < n->nin; i++)
      if (n->in[i] == p && (n->op != OP_EMBEDDING || i != 1 || ir_node_set_size(n, P) != P))
        return false;
  }
  Node *leaf[8];
  int nl = 0;
  if (!scatter_tree(p->grad, p->grad->producer, leaf, &nl, 8) ||
      ir_node_set_size(p->grad->producer, P) != P)
    return false;
  for (int i = 0; i < nl; i++)
    if (leaf[i]->nin != 2) return false;
  int64_t V = p->ty.dim[0].c;
  double remote = (double)(P - 1) / P; /* uniform ids: this share has another owner */
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (n->op != OP_EMBEDDING || n->in[1] != p) continue;
    n->op = OP_TABLE_GATHER;
    n->ia[0] = V;
    n->ia[1] = P;
    n->fa[0] = remote;
  }
  for (int i = 0; i < nl; i++) {
    leaf[i]->op = OP_TABLE_SCATTER;
    leaf[i]->ia[1] = P;
    leaf[i]->fa[0] = remote;
    leaf[i]->out[0]->name = nl == 1 ? mc_arena_printf(&g->arena, "%s.grad@rows", p->name)
                                    : mc_arena_printf(&g->arena, "%s.grad@rows%d", p->name, i);
  }
  p->part = PART_ROWS;
  mark_part(p->grad, PART_ROWS);
  return true;
}
