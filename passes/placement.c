/* placement.c: the `placement` pass (docs/placement.md).
 *
 * Runs after autodiff, so backward nodes are placed with their forward layer. With one
 * device it does nothing. With P > 1 devices:
 *   - every node gets a mode: data-parallel (its batch rows split over its device set)
 *     or expert-sharded (role "experts" of a moe/hmoe: each device runs its own experts
 *     on the rows routed to them), and a device set: all (Node.device = -1), one
 *     (Node.device = d) or a list from on(...) (Node.devices);
 *   - every tensor a PartKind: inputs, states and rows with B in dim 0 PART_BATCH; rows
 *     of expert-sharded nodes and their parameters PART_EXPERTS; other parameters
 *     PART_REPLICATED; reductions over local rows (parameter gradients, importance,
 *     load) PART_PARTIAL until the comm pass all-reduces them;
 *   - each MoE layer an expert -> device map (Graph.moe_expert_dev), by the policy.
 * Strategies: paper (default), data_parallel, hmoe; then `place` rules in file order.
 * User errors (fewer experts than devices, a device named twice, replicated
 * parameters over memory_budget) are reported at the layer or rule that caused them;
 * sema has checked the strategy, the policy and the batch split. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "plan.h"

/* ---------------------------------------------------------------- patterns */

/* `*` matches any run of characters. */
static bool glob(const char *p, const char *s) {
  if (!*p) return !*s;
  if (*p == '*') return glob(p + 1, s) || (*s && glob(p, s + 1));
  return *p == *s && glob(p + 1, s + 1);
}

/* Does rule pattern `pat` address node n? "L" all of layer L; "L.experts" / "L.gate"
 * that role of a moe/hmoe layer L. */
bool pass_rule_matches(const char *pat, const Node *n) {
  if (!n->layer) return false;
  const char *dot = strrchr(pat, '.');
  if (dot && (!strcmp(dot, ".experts") || !strcmp(dot, ".gate"))) {
    char layer[256];
    size_t len = (size_t)(dot - pat);
    if (len >= sizeof layer) return false;
    memcpy(layer, pat, len);
    layer[len] = 0;
    return n->role && !strcmp(n->role, dot + 1) && glob(layer, n->layer);
  }
  return glob(pat, n->layer);
}

/* ---------------------------------------------------------------- expert maps */

typedef struct NodePlace {
  bool experts; /* expert-sharded */
  int nset;     /* 0 = all devices */
  const int *set;
} NodePlace;

static int moe_index(const Graph *g, const char *layer) {
  for (int i = 0; layer && i < g->nmoe; i++)
    if (!strcmp(g->moe_names[i], layer)) return i;
  return -1;
}

/* Experts of moe layer `name`: the offsets i32[E+1] of its forward grouped_matmul. */
static int layer_experts(const Graph *g, const char *name) {
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_GROUPED_MATMUL && n->layer && !strcmp(n->layer, name) && n->role &&
        !strcmp(n->role, "experts"))
      return (int)n->in[2]->ty.dim[0].c - 1;
  }
  return 0;
}

/* Groups of an hmoe layer (params NAME.g0.w1, NAME.g1.w1, ...); 0 for a moe. */
static int layer_groups(const Graph *g, const char *name) {
  int G = 0;
  char buf[300];
  for (;; G++) {
    snprintf(buf, sizeof buf, "%s.g%d.w1", name, G);
    bool found = false;
    for (int i = 0; i < g->nparams && !found; i++)
      found = !strcmp(g->params[i]->name, buf);
    if (!found) return G;
  }
}

const double *plan_route_loads(const PlanLoads *pl, double zipf, const char *name, int E,
                               double *buf) {
  for (int i = 0; pl && i < pl->n; i++)
    if (!strcmp(pl->names[i], name) && pl->nexperts[i] == E) return pl->load[i];
  if (zipf <= 0 || !buf) return NULL;
  for (int e = 0; e < E; e++)
    buf[e] = pow(e + 1.0, -zipf);
  return buf;
}

/* Deals U units (experts or groups) over the n devices `set` by the policy: unit u ->
 * set[owner[u]]. balanced: heaviest unit first onto the least-loaded device that has
 * fewer than ceil(U/n) units (longest-processing-time with a memory cap). */
static void deal(int U, int n, const char *policy, const double *load, int *owner) {
  if (!strcmp(policy, "round_robin")) {
    for (int u = 0; u < U; u++)
      owner[u] = u % n;
    return;
  }
  if (!strcmp(policy, "balanced") && load) {
    int cap = (U + n - 1) / n;
    int *order = mc_calloc((size_t)U, sizeof(int)), *cnt = mc_calloc((size_t)n, sizeof(int));
    double *tot = mc_calloc((size_t)n, sizeof(double));
    for (int u = 0; u < U; u++)
      order[u] = u;
    for (int a = 1; a < U; a++) /* stable insertion sort, heaviest first */
      for (int b = a; b > 0 && load[order[b]] > load[order[b - 1]]; b--) {
        int t = order[b];
        order[b] = order[b - 1];
        order[b - 1] = t;
      }
    for (int a = 0; a < U; a++) {
      int best = -1;
      for (int d = 0; d < n; d++)
        if (cnt[d] < cap && (best < 0 || tot[d] < tot[best])) best = d;
      owner[order[a]] = best;
      cnt[best]++;
      tot[best] += load[order[a]];
    }
    mc_free(order);
    mc_free(cnt);
    mc_free(tot);
    return;
  }
  /* contiguous: device d gets units [d*U/n, (d+1)*U/n) */
  for (int d = 0; d < n; d++)
    for (int u = (int)((int64_t)d * U / n); u < (int)((int64_t)(d + 1) * U / n); u++)
      owner[u] = d;
}

static void expert_map(Graph *g, int i, const NodePlace *np, const PassCtx *ctx,
                       const char *strategy, const char *policy) {
  const int P = ctx->devices;
  const Config *cfg = ctx->cfg;
  const char *name = g->moe_names[i];
  int E = layer_experts(g, name);
  int *map = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)(E > 0 ? E : 1));
  g->moe_nexperts[i] = E;
  g->moe_expert_dev[i] = map;
  /* the device set and mode of this layer's experts: its first expert node's */
  const NodePlace *ep = NULL;
  const Node *en = NULL;
  for (int k = 0; k < g->nnodes && !ep; k++) {
    const Node *n = g->nodes[k];
    if (n->layer && !strcmp(n->layer, name) && n->role && !strcmp(n->role, "experts")) {
      ep = &np[k];
      en = n;
    }
  }
  if (!ep || E <= 0) return;
  int n = ep->nset ? ep->nset : P;
  int *set = mc_calloc((size_t)n, sizeof(int));
  for (int d = 0; d < n; d++)
    set[d] = ep->nset ? ep->set[d] : d;
  if (!ep->experts) { /* replicated experts: every device of the set has all of them */
    for (int e = 0; e < E; e++)
      map[e] = -1;
    mc_free(set);
    return;
  }
  if (E < n) {
    pass_error(ctx, en->loc,
               "moe '%s' has %d experts for %d devices: sharding needs at least one expert per "
               "device (use fewer devices, strategy = data_parallel, or place %s.experts : "
               "on(...))",
               name, E, n, name);
    if (ctx->diag && cfg->devices_loc.line)
      fe_note(ctx->diag, cfg->devices_loc, "the devices are set here");
    mc_free(set);
    return;
  }
  if (E % n) pass_note(ctx, "note: %s: %d experts over %d devices: blocks differ by one expert\n", name, E, n);
  int G = layer_groups(g, name);
  double *zbuf = mc_arena_alloc(&g->arena, sizeof(double) * (size_t)(E > 0 ? E : 1));
  const double *load = plan_route_loads(ctx->loads, ctx->zipf, name, E, zbuf);
  if (!strcmp(policy, "balanced") && !load)
    pass_note(ctx,
              "note: %s: experts = balanced but no measured loads (--loads FILE) or skew (--skew) "
              "for its %d experts: contiguous used\n",
              name, E);
  int *owner = mc_calloc((size_t)E, sizeof(int));
  if (!strcmp(strategy, "hmoe") && G > 0) {
    /* whole groups: group -> node (or device) by the policy, then the group's experts
     * over that node's devices, contiguous */
    int Eg = E / G, nodes = cfg->mesh_nodes > 1 && n == P ? cfg->mesh_nodes : n;
    int per = n / nodes;
    double *gl = NULL;
    if (load) {
      gl = mc_calloc((size_t)G, sizeof(double));
      for (int e = 0; e < E; e++)
        gl[e / Eg] += load[e];
    }
    if (G < nodes)
      pass_note(ctx, "note: %s: %d groups for %d nodes/devices: some hold no experts\n", name, G,
                nodes);
    int *gown = mc_calloc((size_t)G, sizeof(int));
    if (G >= nodes)
      deal(G, nodes, policy, gl, gown);
    else
      for (int u = 0; u < G; u++)
        gown[u] = u;
    /* a node with at least per_node groups keeps each group whole on one of its devices
     * (its groups contiguous over them): the secondary exchange then stays on a device */
    int *cnt = mc_calloc((size_t)nodes, sizeof(int)), *seen = mc_calloc((size_t)nodes, sizeof(int));
    bool whole = G >= nodes;
    for (int u = 0; u < G && whole; u++)
      cnt[gown[u]]++;
    for (int v = 0; v < nodes && whole; v++)
      whole = cnt[v] >= per;
    for (int e = 0; e < E; e++) {
      int grp = e / Eg, j = e % Eg, v = gown[grp];
      int within = per <= 1 ? 0
                   : whole  ? (int)((int64_t)seen[v] * per / cnt[v])
                            : (int)((int64_t)j * per / Eg);
      owner[e] = v * per + within;
      if (whole && j == Eg - 1) seen[v]++;
    }
    mc_free(cnt);
    mc_free(seen);
    mc_free(gown);
    mc_free(gl);
  } else {
    deal(E, n, policy, load, owner);
  }
  for (int e = 0; e < E; e++)
    map[e] = set[owner[e]];
  mc_free(owner);
  mc_free(set);
}

/* ---------------------------------------------------------------- hmoe's two levels */

/* The second dispatch of hmoe layer `name` (the one whose rows come from the first,
 * group-level dispatch), or NULL (a moe layer). */
Node *pass_group_dispatch(const Graph *g, const char *name) {
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (n->op == OP_DISPATCH && !n->backward && n->layer && !strcmp(n->layer, name) &&
        n->in[0]->producer && n->in[0]->producer->op == OP_DISPATCH)
      return n;
  }
  return NULL;
}

bool pass_group_node(const Node *n) {
  return n->role && !strcmp(n->role, "group");
}

/* strategy = hmoe: the two-level exchange (appendix B). Each group gets a device among
 * its experts' (its node's, with a mesh); the second dispatch, the combine of the
 * experts' outputs and their backward nodes (what reads the second dispatch's positions)
 * run there, on the group's rows, role "group". The comm pass then moves each group row
 * once to its group's device and the expert rows only between that device and the
 * group's experts. Not when the experts are on(...) a subset or replicated. */
static void group_stage(Graph *g, int i, NodePlace *np, int P) {
  const char *name = g->moe_names[i];
  int E = g->moe_nexperts[i], G = layer_groups(g, name);
  Node *d2 = pass_group_dispatch(g, name);
  if (!d2 || G < 1 || E % G) return;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->layer && !strcmp(n->layer, name) && n->role && !strcmp(n->role, "experts") &&
        (!np[k].experts || np[k].nset))
      return;
  }
  for (int e = 0; e < E; e++)
    if (g->moe_expert_dev[i][e] < 0 || g->moe_expert_dev[i][e] >= P) return;
  int Eg = E / G, *gdev = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)G);
  int *seen = mc_calloc((size_t)P, sizeof(int)); /* groups so far by their first device */
  for (int u = 0; u < G; u++) {
    int first = g->moe_expert_dev[i][u * Eg], nd = 0, devs[64];
    for (int e = u * Eg; e < (u + 1) * Eg; e++) { /* the group's devices, ascending */
      int d = g->moe_expert_dev[i][e], j = nd;
      bool dup = false;
      for (int q = 0; q < nd; q++)
        dup |= devs[q] == d;
      if (dup || nd == 64) continue;
      for (; j > 0 && devs[j - 1] > d; j--)
        devs[j] = devs[j - 1];
      devs[j] = d;
      nd++;
    }
    gdev[u] = devs[seen[first]++ % nd]; /* the node's groups dealt over its devices */
  }
  mc_free(seen);
  g->moe_group_dev[i] = gdev;
  g->moe_ngroups[i] = G;
  const Tensor *pos = d2->out[2];
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    bool reads = false;
    for (int j = 0; j < n->nin; j++)
      reads |= n->in[j] == pos;
    if (n == d2 || (reads && n->layer && !strcmp(n->layer, name))) {
      np[k].experts = true;
      n->role = "group";
    }
  }
}

/* ---------------------------------------------------------------- the pass */

static bool has_batch_rows(const Tensor *t) {
  return t->ty.rank >= 1 && t->ty.dim[0].b > 0;
}

static double const_bytes(const Tensor *t) {
  double n = 4;
  for (int d = 0; d < t->ty.rank; d++)
    n *= (double)dim_eval(t->ty.dim[d], 1, 1);
  return n;
}

/* An on(...) list in ascending order (the order of the batch rows over the set, and of
 * the ranks of its communicator); a device named twice is an error (NULL). */
static const int *sorted_set(Graph *g, const PlaceRule *r, const PassCtx *ctx) {
  int *d = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)(r->ndevices + 1));
  for (int i = 0; i < r->ndevices; i++) {
    int v = r->devices[i], j = i;
    for (; j > 0 && d[j - 1] > v; j--)
      d[j] = d[j - 1];
    d[j] = v;
  }
  for (int i = 1; i < r->ndevices; i++)
    if (d[i] == d[i - 1]) {
      pass_error(ctx, r->loc, "place %s : on(...) names device %d twice", r->pattern, d[i]);
      return NULL;
    }
  return d;
}

/* A table the comm pass will shard by rows (plan.tables = sharded: read by embeddings
 * only; pass_table_shard decides): a device holds 1/P of it. */
static bool table_rows(const Graph *g, const Tensor *p, const Config *cfg, int P) {
  if (!cfg->tables_sharded || P <= 1) return false;
  bool read = false;
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++)
      if (g->nodes[k]->in[i] == p) {
        if (g->nodes[k]->op != OP_EMBEDDING || i != 1) return false;
        read = true;
      }
  return read;
}

void pass_placement(Graph *g, const PassCtx *ctx) {
  int P = ctx->devices;
  if (P <= 1 || !ctx->cfg) return; /* one device: the graph stays exactly as it is */
  const Config *cfg = ctx->cfg;
  const char *strategy = cfg->strategy ? cfg->strategy : "paper";
  const char *policy = cfg->expert_policy ? cfg->expert_policy : "contiguous";
  /* sema checked the names, the batch split and the rules' devices */
  MOEC_ASSERT(!strcmp(strategy, "paper") || !strcmp(strategy, "data_parallel") ||
              !strcmp(strategy, "hmoe"));
  MOEC_ASSERT(!strcmp(policy, "contiguous") || !strcmp(policy, "round_robin") ||
              !strcmp(policy, "balanced"));
  bool dp = !strcmp(strategy, "data_parallel");

  /* 1. modes and device sets: the strategy, then the rules in order */
  NodePlace *np = mc_calloc((size_t)g->nnodes, sizeof(NodePlace));
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    np[k].experts = !dp && n->role && !strcmp(n->role, "experts") && moe_index(g, n->layer) >= 0;
  }
  for (const PlaceRule *r = cfg->rules; r; r = r->next)
    for (int k = 0; k < g->nnodes; k++) {
      const Node *n = g->nodes[k];
      if (!pass_rule_matches(r->pattern, n)) continue;
      bool exp = n->role && !strcmp(n->role, "experts") && moe_index(g, n->layer) >= 0;
      if (r->kind == PK_REPLICATE) {
        np[k].experts = false;
        np[k].nset = 0;
      } else if (r->kind == PK_SHARD_EXPERTS) {
        if (exp) np[k].experts = true;
      } else {
        for (int d = 0; d < r->ndevices; d++)
          if (r->devices[d] >= P) {
            pass_error(ctx, r->loc, "place %s : on(...) names device %d, but there are %d devices",
                       r->pattern, r->devices[d], P);
            mc_free(np);
            return;
          }
        const int *set = sorted_set(g, r, ctx);
        if (!set) {
          mc_free(np);
          return;
        }
        np[k].nset = r->ndevices;
        np[k].set = set;
      }
    }

  /* 2. expert maps */
  g->moe_expert_dev = mc_arena_alloc(&g->arena, sizeof(int *) * (size_t)(g->nmoe + 1));
  g->moe_nexperts = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)(g->nmoe + 1));
  int errors0 = ctx->diag ? ctx->diag->errors : 0;
  for (int i = 0; i < g->nmoe; i++)
    expert_map(g, i, np, ctx, strategy, policy);
  if (ctx->diag && ctx->diag->errors > errors0) {
    mc_free(np);
    return;
  }
  g->moe_group_dev = mc_arena_alloc(&g->arena, sizeof(int *) * (size_t)(g->nmoe + 1));
  g->moe_ngroups = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)(g->nmoe + 1));
  for (int i = 0; i < g->nmoe; i++) {
    g->moe_group_dev[i] = NULL;
    g->moe_ngroups[i] = 0;
    if (!strcmp(strategy, "hmoe")) group_stage(g, i, np, P);
  }

  /* 3. nodes: device sets */
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    n->device = np[k].nset == 1 ? np[k].set[0] : -1;
    if (np[k].nset > 1) {
      n->devices = np[k].set;
      n->ndevices = np[k].nset;
    }
  }

  /* 4. tensors */
  for (int i = 0; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    if (t->kind == TK_INPUT || t->kind == TK_STATE) t->part = PART_BATCH;
    if (t->kind == TK_PARAM) t->part = PART_REPLICATED;
  }
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    for (int i = 0; i < n->nin; i++)
      if (n->in[i]->kind == TK_PARAM && np[k].experts) n->in[i]->part = PART_EXPERTS;
    bool partial = false;
    for (int i = 0; i < n->nin; i++)
      partial |= n->in[i]->part == PART_BATCH || n->in[i]->part == PART_PARTIAL ||
                 n->in[i]->part == PART_EXPERTS;
    for (int j = 0; j < n->nout; j++) {
      Tensor *t = n->out[j];
      t->part = np[k].experts       ? PART_EXPERTS
                : has_batch_rows(t) ? PART_BATCH
                : partial           ? PART_PARTIAL
                                    : PART_REPLICATED;
    }
  }

  /* 5. data_parallel: every device holds every expert (and its grads and Adam state) */
  if (cfg->memory_budget > 0) {
    double need = 0;
    for (int i = 0; i < g->nparams; i++)
      if (g->params[i]->part != PART_EXPERTS)
        need += 4 * const_bytes(g->params[i]) / (table_rows(g, g->params[i], cfg, P) ? P : 1);
    if (need > cfg->memory_budget)
      pass_error(ctx, cfg->memory_budget_loc,
                 "the replicated parameters need %.1f MiB per device (weights, gradients and "
                 "Adam's two moments), over memory_budget = %.1f MiB: %s",
                 need / 1048576.0, cfg->memory_budget / 1048576.0,
                 dp ? "the experts do not fit one device; use strategy = paper to shard them"
                    : "shard more layers' experts (place ... : shard(experts)) or use more "
                      "memory");
  }
  mc_free(np);
}

/* ---------------------------------------------------------------- measured loads */

static void free_loads_arrays(PlanLoads *pl) {
  for (int i = 0; i < pl->n; i++) {
    free((char *)pl->names[i]); /* strndup */
    mc_free((double *)pl->load[i]);
  }
  mc_free((void *)pl->names);
  mc_free((void *)pl->load);
  mc_free((void *)pl->nexperts);
  pl->n = 0;
}

void plan_free_loads(PlanLoads *pl) {
  if (!pl) return;
  free_loads_arrays(pl);
  mc_free(pl);
}

/* The last line of `path` with "name" / "load" pairs wins: {"moe":[{"name":"m",
 * "load":[12, 30, ...]}, ...]} (moec run --metrics lines extended with per-expert loads). */
PlanLoads *plan_read_loads(const char *path, const char **err) {
  FILE *f = fopen(path, "r");
  if (!f) {
    *err = "cannot open the loads file";
    return NULL;
  }
  PlanLoads *pl = mc_calloc(1, sizeof(PlanLoads));
  char *line = NULL;
  size_t cap = 0;
  while (getline(&line, &cap, f) > 0) {
    const char *s = line;
    int n = 0;
    const char **names = NULL;
    const double **loads = NULL;
    int *ne = NULL;
    while ((s = strstr(s, "\"name\""))) {
      const char *q = strchr(s + 6, '"');
      const char *e = q ? strchr(q + 1, '"') : NULL;
      const char *l = e ? strstr(e, "\"load\"") : NULL;
      const char *next = e ? strstr(e, "\"name\"") : NULL;
      if (!l || (next && next < l)) {
        s = e ? e : s + 6;
        continue;
      }
      const char *b = strchr(l, '[');
      if (!b) break;
      double *v = NULL;
      int nv = 0;
      char *end = (char *)b + 1;
      for (;;) {
        while (*end == ' ' || *end == ',')
          end++;
        if (*end == ']' || !*end) break;
        char *p2;
        double x = strtod(end, &p2);
        if (p2 == end) break;
        v = mc_realloc(v, sizeof(double) * (size_t)(nv + 1));
        v[nv++] = x;
        end = p2;
      }
      names = mc_realloc(names, sizeof(char *) * (size_t)(n + 1));
      loads = mc_realloc(loads, sizeof(double *) * (size_t)(n + 1));
      ne = mc_realloc(ne, sizeof(int) * (size_t)(n + 1));
      names[n] = strndup(q + 1, (size_t)(e - q - 1));
      loads[n] = v;
      ne[n] = nv;
      n++;
      s = end;
    }
    if (n > 0) { /* a later line replaces an earlier one */
      free_loads_arrays(pl);
      pl->n = n;
      pl->names = names;
      pl->load = loads;
      pl->nexperts = ne;
    }
  }
  free(line);
  fclose(f);
  if (pl->n == 0) {
    mc_free(pl);
    *err = "no line with \"name\" and \"load\": [...] entries";
    return NULL;
  }
  return pl;
}
