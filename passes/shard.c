/* shard.c: one device's share of a placed graph's experts (docs/multidev.md, "Sharded
 * experts"). Not in the pass list: it runs per device, after the whole pipeline, on
 * P > 1 devices (runtime/train.c build_on through the runtime; costmodel.c for each
 * device of the plan, then undone).
 *
 * An expert parameter (pass_expert_shard: a parameter whose dim 0 indexes experts
 * [first, first + count) of a MoE layer, with the layer's expert -> device map as its
 * owner map: a moe's w1 b1 w2 b2, an hmoe group's gJ.w1 ...) keeps only the rows of its
 * local experts, in global order: [E_r, ...]. An hmoe stacks its groups with concat0s
 * (their shape rules sum the local rows) and splits the gradient back with one slice0
 * per group, refitted to the local rows (restack; a group without local experts: an
 * empty parameter and slice).
 * Every all_to_all of the layer receives offsets of the local experts, i32[E_r + 1].
 * The shape rules of every node that reads a changed tensor run again (in node order),
 * so the expert gradients (grouped_matmul_dw, grouped_sum_rows) become [E_r, ...]; the
 * grouped expert kernels are unchanged (they read E from the offsets and weights). The
 * expert-row tensors keep their rows (dim 0 follows B; rt_md_widen_expert_rows sizes
 * them). A device that holds none of a layer's experts (outside its on(...) set) has
 * E_r = 0: zero-size expert parameters, offsets i32[1]; its all_to_all sends every row
 * away and receives none. Prefix: pass_. */
#include <string.h>

#include "plan.h"

/* Groups of hmoe layer m: its params NAME.g0.w1, NAME.g1.w1, ... (0 for a moe). */
static int64_t layer_groups(const Graph *g, int m) {
  char buf[300];
  for (int64_t G = 0;; G++) {
    snprintf(buf, sizeof buf, "%s.g%lld.w1", g->moe_names[m], (long long)G);
    bool found = false;
    for (int i = 0; i < g->nparams && !found; i++)
      found = !strcmp(g->params[i]->name, buf);
    if (!found) return G;
  }
}

/* LAYER.w1 of a moe: dim 0 = all E experts of layer *m (first 0, count E); LAYER.gJ.w1
 * of an hmoe with G groups: group J's Eg = E / G experts (first J*Eg, count Eg). By
 * names and the layer's E only, so the answer is the same on a sharded graph. */
static bool attributed(const Graph *g, const Tensor *t, ExpertShard *s) {
  if (t->kind != TK_PARAM || t->part != PART_EXPERTS || !g->moe_expert_dev || t->ty.rank < 1)
    return false;
  int best = -1;
  int64_t grp = -1;
  size_t bl = 0;
  for (int i = 0; i < g->nmoe; i++) {
    size_t l = strlen(g->moe_names[i]);
    if (strncmp(t->name, g->moe_names[i], l) || t->name[l] != '.' || l < bl) continue;
    const char *rest = t->name + l + 1, *dot = strchr(rest, '.');
    long long j = -1;
    int used = 0;
    if (dot && !(sscanf(rest, "g%lld%n", &j, &used) == 1 && j >= 0 && rest + used == dot &&
                 !strchr(dot + 1, '.')))
      continue; /* neither NAME.PART nor NAME.gJ.PART */
    best = i;
    bl = l;
    grp = dot ? j : -1;
  }
  if (best < 0 || g->moe_nexperts[best] <= 0) return false;
  int64_t E = g->moe_nexperts[best], first = 0, count = E;
  if (grp >= 0) {
    int64_t G = layer_groups(g, best);
    if (G < 1 || E % G || grp >= G) return false;
    count = E / G;
    first = grp * count;
  }
  *s = (ExpertShard){best, first, count};
  return true;
}

/* A layer is sharded when every expert parameter of it is attributed: a moe's w1 b1 w2
 * b2, an hmoe's groups' (stacked by concat0s, whose gradient slices restack() fits). */
static bool layer_sharded(const Graph *g, int m) {
  size_t l = strlen(g->moe_names[m]);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    ExpertShard s;
    if (t->part == PART_EXPERTS && !strncmp(t->name, g->moe_names[m], l) && t->name[l] == '.' &&
        (!attributed(g, t, &s) || s.moe != m))
      return false;
  }
  return true;
}

bool pass_expert_shard(const Graph *g, const Tensor *t, ExpertShard *s) {
  ExpertShard a;
  if (!attributed(g, t, &a) || !layer_sharded(g, a.moe)) return false;
  if (s) *s = a;
  return true;
}

int64_t pass_expert_local(const Graph *g, const ExpertShard *s, int rank, int64_t *list) {
  int64_t n = 0;
  for (int64_t e = s->first; e < s->first + s->count; e++)
    if (g->moe_expert_dev[s->moe][e] == rank) {
      if (list) list[n] = e;
      n++;
    }
  return n;
}

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
    layer[m] = layer_sharded(g, m);
  bool *changed = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  for (int i = 0; i < g->nparams; i++) {
    Tensor *t = g->params[i];
    ExpertShard s;
    if (!pass_expert_shard(g, t, &s) || !layer[s.moe]) continue;
    int64_t n = pass_expert_local(g, &s, rank, NULL); /* 0 off the layer's on(...) set */
    if (!dim_is_const(t->ty.dim[0]) || t->ty.dim[0].c != s.count)
      mc_fatal("pass_shard_experts: expert parameter '%s' has %s rows, not the %lld experts "
               "it is attributed",
               t->name, dim_is_const(t->ty.dim[0]) ? "other" : "symbolic", (long long)s.count);
    t->ty.dim[0] = dim_int(n);
    changed[t->id] = true;
  }
  restack(g); /* before the slices' shape rules run again below */
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (n->op == OP_ALL_TO_ALL) { /* the received offsets: this device's experts */
      int moe = (int)n->ia[0];
      MOEC_ASSERT(moe >= 0 && moe < g->nmoe);
      if (!layer[moe]) continue;
      int er = moe_experts_on(g, moe, rank);
      n->out[1]->ty.dim[0] = dim_int(er + 1);
      changed[n->out[1]->id] = true;
      continue;
    }
    bool touched = false;
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
