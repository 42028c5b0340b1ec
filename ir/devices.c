/* devices.c: where a placed graph's nodes, tensors and expert rows live. The one
 * definition of device sets (bit masks over P <= 64 devices) and of expert sharding
 * and of tables sharded by rows that the passes (comm, shard, costmodel) and the runtime
 * (collectives, gathers) share. Read-only queries on the placement the passes set. */
#include <stdio.h>
#include <string.h>

#include "ir.h"

uint64_t ir_all_mask(int P) {
  return P >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << P) - 1;
}

uint64_t ir_node_mask(const Node *n, int P) {
  if (!n || (n->device < 0 && n->ndevices <= 0)) return ir_all_mask(P);
  if (n->device >= 0) return (uint64_t)1 << n->device;
  uint64_t m = 0;
  for (int i = 0; i < n->ndevices; i++)
    m |= (uint64_t)1 << n->devices[i];
  return m;
}

int ir_node_set_size(const Node *n, int P) {
  return n->ndevices > 0 ? n->ndevices : n->device >= 0 ? 1 : P;
}

uint64_t ir_tensor_mask(const Tensor *t, int P) {
  const Node *n = t->producer;
  if (!n) return ir_all_mask(P);
  if (n->op == OP_RESHARD) return (uint64_t)n->ia[3];
  if (n->op == OP_ALL_TO_ALL_BACK && n->ia[2]) return (uint64_t)n->ia[2];
  return ir_node_mask(n, P);
}

bool ir_runs_on(const Node *n, int rank, int P) {
  return ir_node_mask(n, P) >> rank & 1;
}

bool ir_has_subsets(const Graph *g, int P) {
  if (P <= 1) return false;
  for (int k = 0; k < g->nnodes; k++)
    if (ir_node_mask(g->nodes[k], P) != ir_all_mask(P)) return true;
  return false;
}

IrSubCtx ir_node_subctx(const Node *n, int rank, int P, int64_t B) {
  uint64_t m = ir_node_mask(n, P);
  IrSubCtx c = {rank * (B / P), B / P, rank, P};
  if (P <= 1 || m == ir_all_mask(P)) return c;
  int k = __builtin_popcountll(m), idx = __builtin_popcountll(m & (((uint64_t)1 << rank) - 1));
  return (IrSubCtx){idx * (B / k), B / k, idx, k};
}

/* ---------------------------------------------------------------- expert shards */

/* Is p NAME.gJ.w1 (J written plainly: g7, not g07)? *j = J. */
static bool group_w1(const char *p, const char *name, size_t l, long long *j) {
  int used = 0;
  if (strncmp(p, name, l) || p[l] != '.' || sscanf(p + l + 1, "g%lld%n", j, &used) != 1 || *j < 0)
    return false;
  char canon[32];
  return used == snprintf(canon, sizeof canon, "g%lld", *j) && !strcmp(p + l + 1 + used, ".w1");
}

/* Groups of hmoe layer m: its params NAME.g0.w1, NAME.g1.w1, ... (0 for a moe): the
 * count of consecutive groups from g0. One pass over the params (a model of 128 x 128
 * experts has ~500 of them, asked about once per parameter and device). */
static int64_t layer_groups(const Graph *g, int m) {
  const char *name = g->moe_names[m];
  size_t l = strlen(name);
  int64_t n = 0, sum = 0, max = -1;
  for (int i = 0; i < g->nparams; i++) {
    const char *p = g->params[i]->name;
    long long j = -1;
    if (!group_w1(p, name, l, &j)) continue;
    n++;
    sum += j;
    max = j > max ? j : max;
  }
  /* names are unique: n distinct groups 0..n-1 when their sum and maximum say so; else
   * count the run from g0 */
  if (n == 0 || (max == n - 1 && sum == n * (n - 1) / 2)) return n;
  bool *seen = mc_calloc((size_t)max + 1, sizeof(bool));
  for (int i = 0; i < g->nparams; i++) {
    const char *p = g->params[i]->name;
    long long j = -1;
    if (group_w1(p, name, l, &j) && j <= max) seen[j] = true;
  }
  int64_t G = 0;
  while (G <= max && seen[G])
    G++;
  mc_free(seen);
  return G;
}

/* The moe layer whose params t's name says it is (LAYER.PART or LAYER.gJ.PART, the
 * longest layer name that fits): *m, and *grp = J or -1. */
static bool name_layer(const Graph *g, const Tensor *t, int *m, int64_t *grp) {
  int best = -1;
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
    *grp = dot ? j : -1;
  }
  *m = best;
  return best >= 0;
}

/* LAYER.w1 of a moe: dim 0 = all E experts of layer *m (first 0, count E); LAYER.gJ.w1
 * of an hmoe with G groups: group J's Eg = E / G experts (first J*Eg, count Eg). By
 * names and the layer's E only, so the answer is the same on a sharded graph. G < 0:
 * not known yet (counted here). */
static bool attributed(const Graph *g, const Tensor *t, int64_t G, ExpertShard *s) {
  if (t->kind != TK_PARAM || t->part != PART_EXPERTS || !g->moe_expert_dev || t->ty.rank < 1)
    return false;
  int best;
  int64_t grp = -1;
  if (!name_layer(g, t, &best, &grp) || g->moe_nexperts[best] <= 0) return false;
  int64_t E = g->moe_nexperts[best], first = 0, count = E;
  if (grp >= 0) {
    if (G < 0) G = layer_groups(g, best);
    if (G < 1 || E % G || grp >= G) return false;
    count = E / G;
    first = grp * count;
  }
  *s = (ExpertShard){best, first, count};
  return true;
}

bool ir_hmoe_experts_local(const Graph *g, int m) {
  if (!g->moe_group_dev || m < 0 || m >= g->nmoe || !g->moe_group_dev[m] || !g->moe_expert_dev)
    return false;
  int G = g->moe_ngroups[m], E = g->moe_nexperts[m];
  for (int e = 0; G > 0 && e < E; e++)
    if (g->moe_expert_dev[m][e] != g->moe_group_dev[m][e / (E / G)]) return false;
  return G > 0;
}

bool ir_layer_sharded(const Graph *g, int m) {
  size_t l = strlen(g->moe_names[m]);
  int64_t G = layer_groups(g, m);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    ExpertShard s;
    int mm;
    int64_t grp;
    if (t->part != PART_EXPERTS || strncmp(t->name, g->moe_names[m], l) || t->name[l] != '.')
      continue;
    /* a name of a longer layer (NAME.x of layer NAME.x...) is that layer's business */
    if (!name_layer(g, t, &mm, &grp) || mm != m) return false;
    if (!attributed(g, t, G, &s) || s.moe != m) return false;
  }
  return true;
}

bool ir_expert_shard(const Graph *g, const Tensor *t, ExpertShard *s) {
  ExpertShard a;
  if (!attributed(g, t, -1, &a) || !ir_layer_sharded(g, a.moe)) return false;
  if (s) *s = a;
  return true;
}

void ir_expert_shards(const Graph *g, ExpertShard *s, bool *ok) {
  int nm = g->nmoe;
  int64_t *G = mc_calloc((size_t)nm + 1, sizeof(int64_t));
  bool *bad = mc_calloc((size_t)nm + 1, sizeof(bool)); /* not ir_layer_sharded */
  for (int m = 0; m < nm; m++)
    G[m] = layer_groups(g, m);
  for (int i = 0; i < g->nparams; i++) { /* ir_layer_sharded's test, every layer at once */
    const Tensor *t = g->params[i];
    if (t->part != PART_EXPERTS) continue;
    int mm = -1;
    int64_t grp;
    if (!name_layer(g, t, &mm, &grp)) mm = -1;
    for (int m = 0; m < nm; m++) {
      size_t l = strlen(g->moe_names[m]);
      if (strncmp(t->name, g->moe_names[m], l) || t->name[l] != '.') continue;
      ExpertShard a;
      if (mm != m || !attributed(g, t, G[m], &a) || a.moe != m) bad[m] = true;
    }
  }
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    int mm;
    int64_t grp;
    ok[i] = t->kind == TK_PARAM && t->part == PART_EXPERTS && name_layer(g, t, &mm, &grp) &&
            attributed(g, t, G[mm], &s[i]) && !bad[s[i].moe];
  }
  mc_free(G);
  mc_free(bad);
}

int64_t ir_expert_local(const Graph *g, const ExpertShard *s, int rank, int64_t *list) {
  int64_t n = 0;
  for (int64_t e = s->first; e < s->first + s->count; e++)
    if (g->moe_expert_dev[s->moe][e] == rank) {
      if (list) list[n] = e;
      n++;
    }
  return n;
}

int64_t ir_table_first(int64_t V, int P, int r) {
  return V * r / P; /* floor(r V / P); V < 2^31 (i32 ids), P <= 64 */
}

int ir_table_owner(int64_t V, int P, int64_t row) {
  /* the largest r with floor(r V / P) <= row, i.e. r < (row + 1) P / V */
  return (int)(((row + 1) * P - 1) / V);
}

bool ir_table_shard(const Graph *g, const Tensor *t, int64_t *V, int *P) {
  if (t->kind != TK_PARAM || t->part != PART_ROWS) return false;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op != OP_TABLE_GATHER || n->in[1] != t) continue;
    if (V) *V = n->ia[0];
    if (P) *P = (int)n->ia[1];
    return true;
  }
  return false;
}
