/* bind.c: the `bind` pass: B and T bound for the graph a compile hands on: the whole
 * batch (the global graph a plan reports), or one device's rows (the graph that device
 * runs). On a device graph every tensor on an on(...) subset S has B/|S| rows, and every
 * expert-row tensor room for the rows of the global batch, the most the all-to-all can
 * bring one device. It also refuses, at the rule that asked for them, the placements the
 * runtime cannot run. docs/multidev.md, "Device subsets" and "Sharded experts". */
#include <math.h>
#include <string.h>

#include "plan.h"

int plan_fair_widen(const Graph *g, int m, int P) {
  if (!g->moe_expert_dev || m < 0 || m >= g->nmoe || g->moe_nexperts[m] <= 0) return P;
  bool *has = mc_calloc((size_t)P + 1, sizeof(bool));
  int set = 0;
  for (int e = 0; e < g->moe_nexperts[m] && set < P; e++) {
    int d = g->moe_expert_dev[m][e];
    if (d < 0 || d >= P) set = P; /* replicated experts: every device */
    else if (!has[d]) has[d] = true, set++;
  }
  mc_free(has);
  return set > 0 ? (P + set - 1) / set : P;
}

/* The factor each MoE layer's expert rows are widened by: x P (every route of the global
 * batch on one device: the worst case), or with plan.expert_headroom = H, H x the rows a
 * device of the layer's expert set gets under uniform routing (P / |set| x its B/P share),
 * at most x P; a step that routes more rows to a device stops in the all-to-all with the
 * reason. Batchwise gating keeps x P: its slot lists are N*k*P long (comm.c). */
int *plan_layer_widen(const Graph *g, int P) {
  int *f = mc_calloc((size_t)g->nmoe + 1, sizeof(int));
  for (int m = 0; m < g->nmoe; m++) {
    f[m] = P;
    if (g->expert_headroom <= 0 || !g->moe_expert_dev || g->moe_nexperts[m] <= 0) continue;
    int64_t w = (int64_t)g->expert_headroom * plan_fair_widen(g, m, P);
    f[m] = w < P ? (int)w : P;
  }
  for (int k = 0; k < g->nnodes; k++)
    for (int m = 0; m < g->nmoe && g->nodes[k]->op == OP_BATCHWISE_ROUTE; m++)
      if (g->nodes[k]->layer && !strcmp(g->nodes[k]->layer, g->moe_names[m])) f[m] = P;
  return f;
}

/* The forward all_to_all of MoE layer m that brings the rows of level lv (1: an hmoe's
 * group rows, by groups; else the expert rows), or NULL. */
static const Node *level_a2a(const Graph *g, int m, int lv) {
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_ALL_TO_ALL && !n->backward && n->layer && !strcmp(n->layer, g->moe_names[m]) &&
        !n->ia[3] == (lv != 1))
      return n;
  }
  return NULL;
}

/* The level of expert-row tensor t of MoE layer m: 0 a plain layer's rows; for an hmoe
 * under the two-level exchange 1 the group side's (role "group": each group's rows on its
 * group's device, placement.c) and 2 the experts'. */
static int tensor_level(const Graph *g, int m, const Tensor *t) {
  if (!g->moe_group_dev || !g->moe_group_dev[m]) return 0;
  return pass_group_node(t->producer) ? 1 : 2;
}

/* t's rows per row its level's exchange brings (k for the group side's dispatched rows),
 * or 0 when its rows are not a multiple of them. */
static int64_t rows_per_row(const Tensor *t, const Node *a2a) {
  Dim a = a2a->out[0]->ty.dim[0], d = t->ty.dim[0];
  if (a.b != d.b || a.t != d.t || a.s != d.s || a.c <= 0 || d.c % a.c) return 0;
  return d.c / a.c;
}

/* Whether MoE layer m's expert rows can be sized per step (runtime/rows.c): several
 * devices, no plan.expert_headroom, one batch shape, no batchwise gating nor capacity=,
 * and each level's rows brought by one forward all_to_all (a plain layer's, or an hmoe's
 * group-level and expert-level ones) whose received rows every expert-row tensor of that
 * level holds a whole multiple of. */
static bool layer_per_step(const Graph *g, int m, int devices) {
  if (devices <= 1 || g->expert_headroom > 0 || g->nshapes) return false;
  bool hmoe = g->moe_group_dev && g->moe_group_dev[m];
  int a2as[2] = {0, 0};
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (!n->layer || strcmp(n->layer, g->moe_names[m])) continue;
    if (n->op == OP_BATCHWISE_ROUTE || n->op == OP_CAPACITY) return false;
    if (n->op != OP_ALL_TO_ALL || n->backward) continue;
    if ((n->ia[3] && !hmoe) || (!n->ia[3] && n->nin != 2)) return false;
    a2as[n->ia[3] ? 1 : 0]++;
  }
  if (a2as[0] != 1 || a2as[1] != (hmoe ? 1 : 0)) return false;
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    if (t->part != PART_EXPERTS || t->ty.rank < 1 || t->ty.dim[0].b <= 0 || !t->producer ||
        !t->producer->layer || strcmp(t->producer->layer, g->moe_names[m]))
      continue;
    if (!rows_per_row(t, level_a2a(g, m, tensor_level(g, m, t)))) return false;
  }
  return true;
}

PlanRows plan_rows_of(const Graph *g, const Tensor *t, int P, int rank, int64_t b, int64_t T) {
  PlanRows r = {0};
  while (r.moe < g->nmoe && strcmp(t->producer->layer, g->moe_names[r.moe]))
    r.moe++;
  MOEC_ASSERT(r.moe < g->nmoe); /* marked by plan_widen_expert_rows: a layer's tensor */
  int m = r.moe;
  r.level = tensor_level(g, m, t);
  const Node *a2a = level_a2a(g, m, r.level);
  r.per_row = rows_per_row(t, a2a);
  int64_t worst = r.worst = dim_eval(a2a->out[0]->ty.dim[0], b, T); /* every route */
  /* routes per token at this level (top-k picks k distinct experts, or groups, and each
   * gets the token once): the primary dispatch's k; x the secondary's at an hmoe's experts */
  int64_t K = 1;
  for (int i = 0, seen = 0; i < g->nnodes && seen < (r.level == 2 ? 2 : 1); i++) {
    const Node *n = g->nodes[i];
    if (n->op == OP_DISPATCH && !n->backward && n->layer && !strcmp(n->layer, g->moe_names[m]))
      K *= dim_eval(n->in[1]->ty.dim[1], 1, 1), seen++;
  }
  /* the devices holding the level's groups or experts, and how many are this device's */
  int units = r.level == 1 ? g->moe_ngroups[m] : g->moe_nexperts[m], mine = 0, set = 0;
  const int *dev = r.level == 1         ? g->moe_group_dev[m]
                   : g->moe_expert_dev ? g->moe_expert_dev[m]
                                       : NULL;
  bool *has = mc_calloc((size_t)P + 1, sizeof(bool));
  for (int e = 0; dev && e < units; e++) {
    int d = dev[e];
    mine += d == rank;
    if (d < 0 || d >= P) { /* replicated: every device */
      set = P;
    } else if (set < P && !has[d]) {
      has[d] = true;
      set++;
    }
  }
  mc_free(has);
  r.bound = !dev || mine >= K ? worst : worst / K * mine;
  r.fair = set > 0 ? worst / P * ((P + set - 1) / set) : worst;
  r.bound = MC_MAX(r.bound, 1); /* a kernel's rows: at least one */
  r.fair = MC_MIN(MC_MAX(r.fair, 1), r.bound);
  return r;
}

int64_t *plan_widen_expert_rows(Graph *g, int devices, int64_t B, int64_t T) {
  int64_t *save = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
  int *f = devices > 1 ? plan_layer_widen(g, devices) : NULL;
  for (int i = 0; i < g->ntensors && devices > 1; i++) {
    Tensor *t = g->tensors[i];
    if (t->part != PART_EXPERTS || t->ty.rank < 1 || t->ty.dim[0].b <= 0) continue;
    save[i] = ir_dim_pack(t->ty.dim[0]);
    int64_t cap = pass_capacity_rows(g, t, B, T); /* capacity=: its experts' routes at most */
    if (cap >= 0) {
      t->ty.dim[0] = dim_int(cap);
      continue;
    }
    const char *layer = t->producer ? t->producer->layer : NULL;
    int w = devices;
    for (int m = 0; layer && m < g->nmoe; m++)
      if (!strcmp(layer, g->moe_names[m])) w = f[m];
    for (int q = 0; q < t->ty.dim[0].b; q++)
      t->ty.dim[0].c *= w;
  }
  /* the rows sized per step keep the worst case as their bound (the most a step can
   * route to one device, and what a backend without the per-step region allocates) */
  for (int m = 0; m < g->nmoe && devices > 1; m++) {
    if (!layer_per_step(g, m, devices)) continue;
    for (int i = 0; i < g->ntensors; i++) {
      Tensor *t = g->tensors[i];
      if (save[i] && t->producer && t->producer->layer &&
          !strcmp(t->producer->layer, g->moe_names[m]))
        t->rows_per_step = true;
    }
  }
  mc_free(f);
  return save;
}

void plan_rows_clear(Graph *g) {
  for (int i = 0; i < g->ntensors; i++)
    g->tensors[i]->rows_per_step = false;
}

int64_t plan_rows_slot_of(const PlanRows *r) {
  return MC_MIN((int64_t)ceil(PLAN_ROWS_MARGIN * (double)r->fair), r->bound);
}

void plan_rows_at_margin(Graph *g, int d, int devices, int64_t B, int64_t T) {
  int64_t b = (B + devices - 1) / devices; /* a device's rows, as the bind pass binds them */
  PlanRows *r = mc_calloc((size_t)g->ntensors + 1, sizeof(PlanRows));
  for (int i = 0; i < g->ntensors; i++) /* first: the exchanges' dims are changed below */
    if (g->tensors[i]->rows_per_step) r[i] = plan_rows_of(g, g->tensors[i], devices, d, b, T);
  for (int i = 0; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    if (!t->rows_per_step) continue;
    t->ty.dim[0] = dim_int(plan_rows_slot_of(&r[i]) * r[i].per_row);
    t->rows_per_step = false;
  }
  mc_free(r);
}

bool plan_rows_outgrow(const Graph *g, const double *scale) {
  for (int i = 0; scale && i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    if (!t->rows_per_step || t->shape[0] <= 0) continue;
    PlanRows r = plan_rows_of(g, t, g->ndev, g->rank, g->B, g->T);
    int64_t rows = llround(scale[r.moe * PLAN_ROW_LEVELS + r.level] * (double)r.fair);
    if (MC_MIN(rows, r.bound) > plan_rows_slot_of(&r)) return true;
  }
  return false;
}

int64_t plan_rows_bytes(const Graph *g, double share, const double *scale, size_t elem) {
  int64_t *nb = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
  int64_t *off = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
  bool any = false;
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    if (!t->rows_per_step || t->shape[0] <= 0) continue;
    any = true;
    PlanRows r = plan_rows_of(g, t, g->ndev, g->rank, g->B, g->T);
    /* share <= 0: the fair share, what the runtime lays out first (runtime/rows.c), times
     * the level's scale (its rows expected under a routing against uniform's) */
    double f = scale && share <= 0 ? scale[r.moe * PLAN_ROW_LEVELS + r.level] : 1;
    int64_t rows =
        share <= 0 ? llround(f * (double)r.fair) : (int64_t)ceil(share * (double)r.worst);
    rows = MC_MIN(MC_MAX(rows, 1), r.bound) * r.per_row;
    nb[i] = t->numel / t->shape[0] * rows * (int64_t)(t->ty.dtype == DT_I32 ? 4 : elem);
  }
  int64_t bytes = any ? pass_memplan_rows(g, nb, off, NULL, NULL) : 0;
  mc_free(nb);
  mc_free(off);
  return bytes;
}

void plan_unwiden_expert_rows(Graph *g, int64_t *save) {
  for (int i = 0; i < g->ntensors; i++)
    if (save[i]) {
      g->tensors[i]->ty.dim[0] = ir_dim_unpack(save[i]);
      g->tensors[i]->rows_per_step = false;
    }
  mc_free(save);
}

/* The place rule that gave node n its device set (the last one matching), or NULL. */
static const PlaceRule *rule_of(const Config *cfg, const Node *n) {
  const PlaceRule *found = NULL;
  for (const PlaceRule *r = cfg ? cfg->rules : NULL; r; r = r->next)
    if (r->kind == PK_ON && pass_rule_matches(r->pattern, n)) found = r;
  return found;
}

static void set_error(const PassCtx *ctx, const Node *n, const char *fmt, const char *a) {
  const PlaceRule *r = rule_of(ctx->cfg, n);
  char msg[512];
  snprintf(msg, sizeof msg, fmt, n->layer ? n->layer : "?", a);
  pass_error(ctx, r ? r->loc : n->loc, "%s", msg);
  if (r && ctx->diag) fe_note(ctx->diag, n->loc, "layer '%s' is here", n->layer ? n->layer : "?");
}

/* What the N-device runtime cannot run: state carried on a device subset; a parameter
 * read on two device sets (its gradient would mix them); a batch a subset does not
 * divide. False after reporting. */
static bool check_sets(Graph *g, const PassCtx *ctx, int64_t B) {
  const int P = ctx->devices;
  uint64_t *pm = mc_calloc((size_t)g->ntensors + 1, sizeof(uint64_t));
  bool ok = true;
  for (int k = 0; k < g->nnodes && ok; k++) {
    const Node *n = g->nodes[k];
    uint64_t m = ir_node_mask(n, P);
    if (m == ir_all_mask(P)) continue;
    int sz = __builtin_popcountll(m);
    if (B % sz) {
      char b[160];
      snprintf(b, sizeof b, "batch %lld does not split evenly over its %d devices",
               (long long)B, sz);
      set_error(ctx, n, "layer '%s' is placed on a device subset, but %s: use a batch that "
                        "every device set's size divides",
                b);
      ok = false;
      break;
    }
    for (int i = 0; i < n->nin && ok; i++) {
      const Tensor *t = n->in[i];
      if (t->kind == TK_STATE) {
        set_error(ctx, n,
                  "layer '%s' keeps state from step to step ('%s') and is placed on a subset "
                  "of the devices: not supported (place it on every device)",
                  t->name);
        ok = false;
      }
    }
  }
  for (int k = 0; k < g->nnodes && ok; k++) {
    const Node *n = g->nodes[k];
    uint64_t m = ir_node_mask(n, P);
    for (int i = 0; i < n->nin && ok; i++) {
      const Tensor *t = n->in[i];
      if (t->kind != TK_PARAM || n->backward || t->part == PART_EXPERTS) continue;
      if (pm[t->id] && pm[t->id] != m) {
        set_error(ctx, n,
                  "layer '%s' reads parameter '%s' on a device set other than its other "
                  "readers': its gradient would mix them; place its readers on the same "
                  "devices",
                  t->name);
        ok = false;
      }
      pm[t->id] = m;
    }
  }
  mc_free(pm);
  return ok;
}

/* Device ctx->rank's shapes: B/P rows; on(...) subsets B/|S|; expert rows widened. */
static void bind_device(Graph *g, int64_t B, int64_t T, int64_t S, int P) {
  mc_free(plan_widen_expert_rows(g, P, B, T)); /* room for the rows of every device */
  int n = g->ntensors;
  Dim *orig = mc_calloc((size_t)n + 1, sizeof(Dim));
  int *nset = mc_calloc((size_t)n + 1, sizeof(int));
  for (int i = 0; i < n; i++) {
    Tensor *t = g->tensors[i];
    uint64_t m = ir_tensor_mask(t, P);
    if (t->part != PART_BATCH || t->ty.rank < 1 || t->ty.dim[0].b <= 0 || m == ir_all_mask(P))
      continue;
    MOEC_ASSERT(t->ty.dim[0].b == 1); /* batch rows of B, not B^2 */
    int k = __builtin_popcountll(m);
    nset[i] = k;
    orig[i] = t->ty.dim[0];
    t->ty.dim[0].c *= (P + k - 1) / k; /* the plan's room: at least B/k rows */
  }
  ir_bind_seq(g, B / P, T, S);
  for (int i = 0; i < n; i++) {
    if (!nset[i]) continue;
    Tensor *t = g->tensors[i];
    t->shape[0] = dim_eval(orig[i], B / nset[i], T); /* the exact rows of one device */
    t->numel = 1;
    for (int d = 0; d < t->ty.rank; d++)
      t->numel *= t->shape[d];
  }
  mc_free(orig);
  mc_free(nset);
}

/* The batch a graph is bound at: the train block's batch x unroll, or for a graph with
 * shapes the one with the most target positions (what a plan reports). */
static void bind_size(const Graph *g, const Config *cfg, int64_t *B, int64_t *T, int64_t *S) {
  *B = cfg && cfg->batch > 0 ? cfg->batch : 32;
  *T = *S = cfg && cfg->unroll > 0 ? cfg->unroll : 20;
  for (int i = 0; i < g->nshapes; i++) {
    const BatchShape *s = &g->shapes[i];
    if (i == 0 || s->B * s->T > *B * *T) *B = s->B, *T = s->T, *S = s->S;
  }
}

/* A graph with several batch shapes is bound again for each batch (rt_program_bind): every
 * layer on every device, so that a device's rows are the batch's over P. */
static bool check_shapes(Graph *g, const PassCtx *ctx) {
  const int P = ctx->devices > 0 ? ctx->devices : 1;
  for (int k = 0; k < g->nnodes && P > 1; k++) {
    const Node *n = g->nodes[k];
    if (ir_node_mask(n, P) != ir_all_mask(P)) {
      set_error(ctx, n,
                "layer '%s' is placed on a device subset%s: a model whose batches change shape "
                "(a translation model) runs every layer on every device",
                "");
      return false;
    }
  }
  for (int i = 0; i < g->nshapes; i++)
    MOEC_ASSERT(g->shapes[i].B % P == 0); /* the driver's shapes split over the devices */
  return true;
}

void pass_bind(Graph *g, const PassCtx *ctx) {
  const Config *cfg = ctx->cfg;
  int64_t B, T, S;
  bind_size(g, cfg, &B, &T, &S);
  const int P = ctx->devices > 0 ? ctx->devices : 1;
  g->B_global = B;
  g->expert_headroom = cfg ? cfg->expert_headroom : 0;
  if (g->nshapes && !check_shapes(g, ctx)) return;
  if (P > 1 && !check_sets(g, ctx, B)) return;
  if (!ctx->device_graph || P <= 1) {
    g->rank = 0;
    g->ndev = 1;
    ir_bind_seq(g, B, T, S);
    return;
  }
  MOEC_ASSERT(B % P == 0 && ctx->rank >= 0 && ctx->rank < P); /* sema: the batch splits */
  g->rank = ctx->rank;
  g->ndev = P;
  bind_device(g, B, T, S, P);
}

Type *pass_device_view(Graph *g, const PassCtx *ctx, int d) {
  int64_t B, T, S;
  bind_size(g, ctx->cfg, &B, &T, &S);
  const int P = ctx->devices > 0 ? ctx->devices : 1;
  Type *save = pass_shard_experts(g, P > 1 ? d : -1); /* every type, for the restore */
  g->expert_headroom = ctx->cfg ? ctx->cfg->expert_headroom : 0;
  if (P > 1) {
    g->rank = d;
    g->ndev = P;
    bind_device(g, B, T, S, P);
  }
  /* the memplan pass's figures (its offsets are not needed to report them) */
  g->mem = pass_memplan_plan(g, g->B, g->T, ctx->elem ? ctx->elem : sizeof(float), 0, NULL);
  return save;
}

void pass_device_view_end(Graph *g, const PassCtx *ctx, Type *save) {
  pass_unshard_experts(g, save);
  plan_rows_clear(g);
  PassCtx global = *ctx;
  global.device_graph = false;
  pass_bind(g, &global);
  pass_memplan(g, &global);
}
