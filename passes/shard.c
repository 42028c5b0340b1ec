/* shard.c: the `shard` pass: one device's share of a placed graph's experts
 * (docs/multidev.md, "Sharded experts"), on the graph a device of P > 1 runs; the plan's
 * cost model applies it to each device in turn and undoes it (plan_device_shapes).
 *
 * An expert parameter (ir_expert_shard: a parameter whose dim 0 indexes experts
 * [first, first + count) of a MoE layer, with the layer's expert -> device map as its
 * owner map: a moe's w1 b1 w2 b2, an hmoe group's gJ.w1 ...) keeps only the rows of its
 * local experts, in global order: [E_r, ...]. An hmoe stacks its groups with concat0s
 * (their shape rules sum the local rows) and splits the gradient back with one slice0
 * per group, refitted to the local rows (restack; a group without local experts: an
 * empty parameter and slice).
 * Every all_to_all of the layer's experts receives offsets of the local experts,
 * i32[E_r + 1] (an hmoe's group-level all_to_all keeps its i32[G + 1]).
 * The shape rules of every node that reads a changed tensor run again (in node order),
 * so the expert gradients (grouped_matmul_dw, grouped_sum_rows) become [E_r, ...]; the
 * grouped expert kernels are unchanged (they read E from the offsets and weights). The
 * expert-row tensors keep their rows (dim 0 follows B; plan_widen_expert_rows sizes
 * them, in the bind pass). A device that holds none of a layer's experts (outside its on(...) set)
 * has E_r = 0: zero-size expert parameters, offsets i32[1]; its all_to_all sends every row away and
 * receives none. A table sharded by rows (PART_ROWS, plan.tables = sharded) keeps this device's
 * range of rows, [V_r, D], and so does its gradient's table_scatter. Prefix: pass_. */
#include <string.h>

#include "plan.h"

static bool same_type(const Type *a, const Type *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return false;
  for (int d = 0; d < a->rank; d++)
    if (!dim_eq(a->dim[d], b->dim[d])) return false;
  return true;
}

static int moe_experts_on(const Graph *g, int moe, int rank) {
  int n = 0;
  for (int e = 0; e < g->moe_nexperts[moe]; e++)
    n += g->moe_expert_dev[moe][e] == rank;
  return n;
}

/* An hmoe's stacking concat0 of its groups' parameters: its gradient is split back by
 * one slice0 per group (ir/grads_moe.c grad_concat0, rows [ia[0], ia[0] + ia[1])), each
 * the gradient of its parameter. Refits every such slice to the rows its parameter has
 * now: the local experts' rows after a shard (a group without local experts gets an
 * empty slice), the whole group's after pass_unshard_experts. */
static void restack(Graph *g) {
  for (int k = 0; k < g->nnodes; k++) {
    const Node *c = g->nodes[k];
    if (c->op != OP_CONCAT0) continue;
    int64_t at = 0;
    for (int i = 0; i < c->nin; i++) {
      const Tensor *x = c->in[i];
      if (!dim_is_const(x->ty.dim[0])) break;
      Node *s = x->kind == TK_PARAM && x->grad ? x->grad->producer : NULL;
      if (s && s->op == OP_SLICE0) {
        s->ia[0] = at;
        s->ia[1] = x->ty.dim[0].c;
      }
      at += x->ty.dim[0].c;
    }
  }
}

Type *pass_shard_experts(Graph *g, int rank) {
  Type *save = mc_malloc(sizeof(Type) * (size_t)(g->ntensors + 1));
  for (int i = 0; i < g->ntensors; i++)
    save[i] = g->tensors[i]->ty;
  if (rank < 0 || !g->moe_expert_dev || g->experts_local) return save; /* nothing to shard */
  g->experts_local = true; /* set first: the shape rules accept E_r = 0 offsets */
  g->experts_rank = rank;
  bool *layer = mc_calloc((size_t)g->nmoe + 1, sizeof(bool));
  for (int m = 0; m < g->nmoe; m++)
    layer[m] = ir_layer_sharded(g, m);
  bool *changed = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  ExpertShard *shards = mc_calloc((size_t)g->nparams + 1, sizeof(ExpertShard));
  bool *sharded = mc_calloc((size_t)g->nparams + 1, sizeof(bool));
  ir_expert_shards(g, shards, sharded);
  for (int i = 0; i < g->nparams; i++) {
    Tensor *t = g->params[i];
    ExpertShard s = shards[i];
    if (!sharded[i] || !layer[s.moe]) continue;
    int64_t n = ir_expert_local(g, &s, rank, NULL); /* 0 off the layer's on(...) set */
    if (!dim_is_const(t->ty.dim[0]) || t->ty.dim[0].c != s.count)
      mc_fatal("pass_shard_experts: expert parameter '%s' has %s rows, not the %lld experts "
               "it is attributed",
               t->name, dim_is_const(t->ty.dim[0]) ? "other" : "symbolic", (long long)s.count);
    t->ty.dim[0] = dim_int(n);
    changed[t->id] = true;
  }
  for (int i = 0; i < g->nparams; i++) { /* tables sharded by rows: this device's range */
    Tensor *t = g->params[i];
    int64_t V;
    int P;
    if (!ir_table_shard(g, t, &V, &P)) continue;
    t->ty.dim[0] = dim_int(ir_table_first(V, P, rank + 1) - ir_table_first(V, P, rank));
    changed[t->id] = true;
  }
  restack(g); /* before the slices' shape rules run again below */
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (n->op == OP_ALL_TO_ALL && !n->ia[3]) { /* the received offsets: this device's experts */
      int moe = (int)n->ia[0];
      MOEC_ASSERT(moe >= 0 && moe < g->nmoe);
      if (!layer[moe]) continue;
      int er = moe_experts_on(g, moe, rank);
      n->out[1]->ty.dim[0] = dim_int(er + 1);
      changed[n->out[1]->id] = true;
      continue;
    }
    bool touched = n->op == OP_TABLE_SCATTER; /* into this device's rows of its table */
    for (int i = 0; i < n->nin && !touched; i++)
      touched = changed[n->in[i]->id];
    if (!touched) continue;
    if (n->op == OP_FUSED || !ir_ops[n->op].shape)
      mc_fatal("pass_shard_experts: node %d (%s, layer '%s') reads a per-device expert tensor "
               "and has no shape rule to rerun",
               n->id, ir_ops[n->op].name, n->layer ? n->layer : "?");
    Type before[8];
    MOEC_ASSERT(n->nout <= 8);
    for (int j = 0; j < n->nout; j++)
      before[j] = n->out[j]->ty;
    const char *err = ir_ops[n->op].shape(g, n);
    if (err)
      mc_fatal("pass_shard_experts: node %d (%s, layer '%s'): %s", n->id, ir_ops[n->op].name,
               n->layer ? n->layer : "?", err);
    for (int j = 0; j < n->nout; j++)
      if (!same_type(&before[j], &n->out[j]->ty)) changed[n->out[j]->id] = true;
  }
  mc_free(changed);
  mc_free(layer);
  mc_free(shards);
  mc_free(sharded);
  return save;
}

void pass_unshard_experts(Graph *g, Type *save) {
  for (int i = 0; i < g->ntensors; i++)
    g->tensors[i]->ty = save[i];
  restack(g);
  g->experts_local = false;
  g->experts_rank = 0;
  mc_free(save);
}

void pass_shard(Graph *g, const PassCtx *ctx) {
  if (!ctx->device_graph || ctx->devices <= 1) return;
  mc_free(pass_shard_experts(g, ctx->rank)); /* this device's experts only (E_r may be 0) */
}
