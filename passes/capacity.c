/* capacity.c: the expert-row buffers of a moe layer with capacity= (docs/moe.md,
 * "Capacity"). Without it a device's expert-side rows are sized for the worst case, every
 * route of the global batch on its experts (x P); with it each of its E_r experts keeps
 * at most cap = ceil(C*k*N/E) routes, so E_r * cap rows suffice. Prefix: pass_. */
#include <string.h>

#include "passes.h"

int64_t pass_capacity_rows(const Graph *g, const Tensor *t, int64_t B, int64_t T) {
  const char *layer = t->producer ? t->producer->layer : NULL;
  if (!layer || B <= 0 || T <= 0) return -1;
  const Node *cap = NULL;
  for (int k = 0; k < g->nnodes && !cap; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_CAPACITY && n->layer && !strcmp(n->layer, layer)) cap = n;
  }
  int m = -1;
  for (int i = 0; cap && i < g->nmoe && m < 0; i++)
    if (!strcmp(g->moe_names[i], layer)) m = i;
  if (!cap || m < 0) return -1;
  int64_t E = cap->ia[0], k = cap->in[0]->ty.dim[1].c;
  int64_t N = dim_eval(cap->in[0]->ty.dim[0], B, T), Er = E;
  if (g->experts_local && g->moe_expert_dev) { /* this device's experts of the layer */
    Er = 0;
    for (int64_t e = 0; e < E; e++)
      Er += g->moe_expert_dev[m][e] == g->experts_rank;
  }
  int64_t rows = Er * ir_capacity_rows(cap->fa[0], k, N, E);
  return rows < N * k ? rows : N * k;
}
