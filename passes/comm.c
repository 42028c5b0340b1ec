/* comm.c: the `comm` pass and the collectives' shape rules (ops.def, "collectives").
 *
 * After placement (P > 1; with one device it does nothing), every place where data must
 * move between devices becomes an explicit op:
 *   all_to_all      rows of a data-parallel node read by an expert-sharded one: the
 *                   dispatch (forward) and the gradient rows from combine_bwd (backward)
 *   all_to_all_back rows of an expert-sharded node read by a data-parallel one: the
 *                   combine (forward) and the gradient rows to undispatch (backward)
 *   all_reduce      every replicated parameter's gradient (one per parameter), and each
 *                   MoE layer's importance and load (aux losses over the global batch;
 *                   an hmoe's load factors and group row counts before their product)
 *   reshard         batch rows moving between two device sets (on(...) rules)
 *   all_gather_rows every device's routes before a moe(capacity=) decision
 *   sparse_all_reduce a gradient of row scatters exchanged as rows (passes/sparse.c)
 *   table_gather, table_scatter: an embedding of a table sharded by rows (sparse.c)
 * Expert gradients never leave their device: they are PART_EXPERTS and only partial
 * (PART_PARTIAL) gradients of replicated parameters are all-reduced.
 * New nodes go right before their first reader (all_reduce: right after the producer);
 * node ids are renumbered in order. Bytes: pass_comm_bytes (docs/placement.md). */
#include <string.h>

#include "plan.h"

/* ---------------------------------------------------------------- shape rules */

/* The row tensors after the offsets: the rows of input 0 (their pieces travel together). */
static const char *more_rows(Graph *g, Node *n) {
  if (n->nin < 2) return "an all-to-all needs rows and offsets i32[E+1]";
  if (n->in[0]->ty.rank < 1) return "an all-to-all moves rows: its input needs rank >= 1";
  if (n->in[1]->ty.dtype != DT_I32 || n->in[1]->ty.rank != 1)
    return mc_arena_printf(&g->arena, "an all-to-all needs offsets i32[E+1] as input 2");
  for (int i = 2; i < n->nin; i++)
    if (n->in[i]->ty.rank < 1 || !dim_eq(n->in[i]->ty.dim[0], n->in[0]->ty.dim[0]))
      return mc_arena_printf(&g->arena, "all-to-all input %d must have the rows of input 1", i + 1);
  return NULL;
}

/* (x, offsets, x_2, ...) -> (x, offsets, x_2, ...) types */
const char *shape_all_to_all(Graph *g, Node *n) {
  const char *err = more_rows(g, n);
  if (err) return err;
  for (int j = 0; j < n->nout; j++)
    n->out[j]->ty = n->in[j]->ty;
  return NULL;
}

/* (y, offsets, y_2, ...) -> (y, y_2, ...) types */
const char *shape_all_to_all_back(Graph *g, Node *n) {
  const char *err = more_rows(g, n);
  if (err) return err;
  for (int j = 0; j < n->nout; j++)
    n->out[j]->ty = n->in[j ? j + 1 : 0]->ty;
  return NULL;
}

const char *shape_collective_same(Graph *g, Node *n) {
  (void)g;
  n->out[0]->ty = n->in[0]->ty;
  return NULL;
}

/* (gs[N,E], thr[E]) -> cut_val[E], cut_row i32[E]; k = ia[0] in [1, E] */
const char *shape_all_gather_topm(Graph *g, Node *n) {
  const Type *a = &n->in[0]->ty, *b = &n->in[1]->ty;
  if (a->dtype != DT_F32 || a->rank != 2 || !dim_is_const(a->dim[1]))
    return "all_gather_topm needs scores f32[N, E] with a constant E";
  if (b->dtype != DT_F32 || b->rank != 1 || !dim_eq(b->dim[0], a->dim[1]))
    return "all_gather_topm needs thresholds f32[E]";
  if (n->ia[0] < 1 || n->ia[0] > a->dim[1].c)
    return mc_arena_printf(&g->arena, "all_gather_topm: k = %lld must be in [1, E]",
                           (long long)n->ia[0]);
  Dim E = a->dim[1];
  n->out[0]->ty = ir_type(DT_F32, 1, &E);
  n->out[1]->ty = ir_type(DT_I32, 1, &E);
  return NULL;
}

/* ---------------------------------------------------------------- bytes */

static int64_t bound_bytes(const Tensor *t) {
  return t->numel * 4; /* f32 and i32 */
}

CommBytes pass_comm_bytes(const Graph *g, const Node *n) {
  (void)g;
  CommBytes b = {0};
  int64_t nd = n->ia[1] > 0 ? n->ia[1] : 1;
  b.payload = bound_bytes(n->in[0]);
  if (n->op == OP_ALL_TO_ALL || n->op == OP_ALL_TO_ALL_BACK) /* pieces of the same rows */
    for (int i = 2; i < n->nin; i++)
      b.payload += bound_bytes(n->in[i]);
  const Node *route = n->nin > 1 ? n->in[1]->producer : NULL;
  switch (n->op) {
  case OP_ALL_TO_ALL:
  case OP_ALL_TO_ALL_BACK:
    if (route && route->op == OP_BATCHWISE_ROUTE) { /* E*floor(k*N/E) slots, not the buffer */
      int64_t N = route->in[0]->shape[0], E = route->in[0]->shape[1], k = route->ia[0];
      int64_t rows = n->in[0]->shape[0], M = rows > 0 ? n->in[0]->numel / rows : 0;
      b.payload = E * (k * N / E) * M * 4;
    }
    b.upper = b.payload;
    b.expected = (int64_t)((double)b.payload * n->fa[0] + 0.5);
    b.per_device = b.expected / nd;
    break;
  case OP_ALL_REDUCE: /* each device sends 2(n-1)/n of the tensor (reduce-scatter, then
                        all-gather); an i32 vector (n-1) of it: all-gathered, then summed */
    nd = n->ia[0] > 0 ? n->ia[0] : 1;
    b.upper = b.expected =
        n->in[0]->ty.dtype == DT_I32 ? nd * (nd - 1) * b.payload : 2 * (nd - 1) * b.payload;
    b.per_device = b.expected / nd;
    break;
  case OP_ALL_GATHER_TOPM: { /* every device's top min(m, N/P) (value, row) per expert */
    int64_t N = n->in[0]->shape[0], E = n->in[0]->shape[1], m = n->ia[0] * N / E;
    int64_t block = E * MC_MIN(m, N / nd) * 8;
    b.payload = nd * block; /* what every device ends up holding */
    b.upper = b.expected = (nd - 1) * b.payload;
    b.per_device = b.expected / nd;
    break;
  }
  case OP_ALL_GATHER_ROWS: /* every device's rows (the global batch's: bound) to every device */
    nd = n->ia[0] > 0 ? n->ia[0] : 1;
    b.upper = b.expected = (nd - 1) * b.payload;
    b.per_device = b.expected / nd;
    break;
  case OP_SPARSE_ALL_REDUCE: /* every device's (id, row) pairs, gathered by every device */
    b.payload = 0;
    for (int q = 0; q + 1 < n->nin; q += 2) { /* batch rows are bound global: all devices' */
      int64_t pairs = n->in[q]->numel * 4 + bound_bytes(n->in[q + 1]);
      b.payload += n->in[q]->ty.rank >= 1 && n->in[q]->ty.dim[0].b > 0 ? pairs : nd * pairs;
    }
    b.upper = b.expected = (nd - 1) * b.payload;
    b.per_device = b.expected / nd;
    break;
  case OP_TABLE_GATHER:  /* the ids to their owners, the rows back */
  case OP_TABLE_SCATTER: /* the ids and the rows' gradients to their owners */
    b.payload = 0;
    for (int q = 0; q + 1 < n->nin; q += 2) { /* ids not of the batch (a sampled softmax's
                                                 candidates): every device's */
      int64_t ids = n->in[q]->numel * 4 +
                    (n->op == OP_TABLE_GATHER ? bound_bytes(n->out[0]) : bound_bytes(n->in[q + 1]));
      b.payload += n->in[q]->ty.rank >= 1 && n->in[q]->ty.dim[0].b > 0 ? ids : nd * ids;
    }
    b.upper = b.payload;
    b.expected = (int64_t)((double)b.payload * n->fa[0] + 0.5);
    b.per_device = b.expected / nd;
    break;
  case OP_RESHARD:
    nd = MC_MAX(n->ia[0], n->ia[1]);
    b.upper = b.payload;
    b.expected = (int64_t)((double)b.payload * n->fa[0] + 0.5);
    b.per_device = b.expected / (nd > 0 ? nd : 1);
    break;
  default:
    break;
  }
  return b;
}

/* ---------------------------------------------------------------- the pass */

typedef struct Ins {
  Node *node;
  Node *anchor; /* goes before (or after) this node */
  bool after;
} Ins;

typedef struct Comm {
  Graph *g;
  int P;
  Ins *ins;
  int nins, cap;
  Tensor **a2a;            /* by tensor id: its all_to_all / all_to_all_back / reshard output */
  Tensor **recv;           /* by moe index: received offsets */
  Tensor **off_g, **off_x; /* by moe index, hmoe's two levels: the group and expert offsets */
  Node **defer;            /* by original node: emitted right after this node (or NULL) */
} Comm;

static int popcount(uint64_t m) {
  return __builtin_popcountll(m);
}

/* Gives node n the device set `m` (ascending). */
static void set_devices(Graph *g, Node *n, uint64_t m, int P) {
  n->device = -1;
  n->devices = NULL;
  n->ndevices = 0;
  if (m == ir_all_mask(P)) return;
  if (popcount(m) == 1) {
    n->device = __builtin_ctzll(m);
    return;
  }
  int *d = mc_arena_alloc(&g->arena, sizeof(int) * (size_t)popcount(m));
  for (int q = 0; q < P; q++)
    if (m >> q & 1) d[n->ndevices++] = q;
  n->devices = d;
}

/* The fraction of rows a reshard moves to another device: global row x (in [0, 1) of
 * the batch) sits on a[floor(x |a|)] and goes to b[floor(x |b|)], both in batch order
 * (the sets ascending); exact for a batch that both set sizes divide. */
static double reshard_fraction(uint64_t a, uint64_t b) {
  int na = popcount(a), nb = popcount(b), da[64], db[64], k = 0;
  for (int q = 0, i = 0, j = 0; q < 64; q++) {
    if (a >> q & 1) da[i++] = q;
    if (b >> q & 1) db[j++] = q;
  }
  int L = na * nb; /* a common multiple: segments of 1/L of the batch */
  for (int s = 0; s < L; s++)
    k += da[s / nb] != db[s / na];
  return (double)k / L;
}

static bool is_expert(const Node *n) {
  return n->nout > 0 && n->out[0]->part == PART_EXPERTS;
}

static int moe_of(const Graph *g, const char *layer) {
  for (int i = 0; layer && i < g->nmoe; i++)
    if (!strcmp(g->moe_names[i], layer)) return i;
  return -1;
}

/* Expected fraction of a MoE layer's rows that change device under uniform routing: a
 * row on device s stays when its expert is on s; averaged over the P senders (the batch
 * side's devices, each holds 1/P of the rows) that is 1 - sum_s (1/P)(E_s/E): (P-1)/P for
 * any map over the same P devices; with the experts on(...) a subset, E_s = 0 outside it. */
static double remote_fraction(const Graph *g, int moe, uint64_t senders) {
  int E = g->moe_nexperts[moe], P = popcount(senders);
  if (E <= 0 || P <= 0) return 0;
  double stay = 0; /* experts on a sender device (senders: the batch side's set) */
  for (int e = 0; e < E; e++) {
    int d = g->moe_expert_dev[moe][e];
    if (d >= 0 && d < 64 && (senders >> d & 1)) stay += 1.0 / P / E;
  }
  return 1 - stay;
}

static Node *new_node_ia(Comm *c, OpKind op, int nin, Tensor **in, const int64_t *ia,
                         const Node *like, Node *anchor, bool after, const char *what) {
  Graph *g = c->g;
  Node *n = ir_node(g, op, nin, in, ia, NULL);
  g->nnodes--; /* ir_node appended it; it is placed at its anchor below */
  n->layer = like->layer;
  n->role = like->role;
  n->loc = like->loc;
  n->backward = like->backward;
  n->device = -1;
  for (int j = 0; j < n->nout; j++) {
    n->out[j]->kind = n->backward ? TK_GRAD : TK_ACT;
    n->out[j]->loc = n->loc;
    n->out[j]->name = mc_arena_printf(&g->arena, "%s%s%s", in[0]->name, what, j ? ".offsets" : "");
  }
  if (c->nins == c->cap) {
    c->cap = c->cap ? 2 * c->cap : 32;
    c->ins = mc_realloc(c->ins, sizeof(Ins) * (size_t)c->cap);
  }
  c->ins[c->nins++] = (Ins){n, anchor, after};
  return n;
}

static Node *new_node(Comm *c, OpKind op, int nin, Tensor **in, const Node *like, Node *anchor,
                      bool after, const char *what) {
  return new_node_ia(c, op, nin, in, NULL, like, anchor, after, what);
}

/* The offsets i32[E+1] a node of an expert layer reads (not produced by an expert node). */
static Tensor *layer_offsets(const Node *n) {
  for (int i = 0; i < n->nin; i++)
    if (n->in[i]->ty.dtype == DT_I32 && n->in[i]->ty.rank == 1 && n->in[i]->part != PART_EXPERTS)
      return n->in[i];
  return NULL;
}

/* Offsets of moe layer m as the data-parallel side sees them: those its expert nodes read. */
static Tensor *moe_offsets(const Graph *g, const char *layer) {
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (is_expert(n) && n->layer && !strcmp(n->layer, layer)) {
      Tensor *o = layer_offsets(n);
      if (o) return o;
    }
  }
  return NULL;
}

/* hmoe's two-level exchange (strategy = hmoe, placement's group_stage): the level of a
 * node, 0 data-parallel (the batch side), 1 the group side (role "group": each group's
 * rows on its group's device), 2 the experts. */
static int level(const Node *n) {
  return !n || !is_expert(n) ? 0 : pass_group_node(n) ? 1 : 2;
}

/* Expected fraction of an hmoe layer's rows that change device in the group-level
 * exchange: a row on device s stays when its group's device is s; averaged over the P
 * senders, 1 - sum_s (1/P)(G_s/G), (P-1)/P when every device holds a group. */
static double group_remote_fraction(const Graph *g, int moe, uint64_t senders) {
  int G = g->moe_ngroups[moe], P = popcount(senders);
  double stay = 0;
  for (int u = 0; u < G && P > 0; u++) {
    int d = g->moe_group_dev[moe][u];
    if (d >= 0 && d < 64 && (senders >> d & 1)) stay += 1.0 / P / G;
  }
  return G > 0 && P > 0 ? 1 - stay : 0;
}

/* ... and in the expert-level exchange, from each group's device to its experts: a row
 * stays when its expert is on its group's device (uniform routing: 1/G of the rows are
 * each group's, 1/Eg of those each expert's). */
static double expert_remote_fraction(const Graph *g, int moe) {
  int G = g->moe_ngroups[moe], E = g->moe_nexperts[moe];
  if (G <= 0 || E <= 0) return 0;
  int Eg = E / G;
  double stay = 0;
  for (int e = 0; e < E; e++)
    stay += g->moe_expert_dev[moe][e] == g->moe_group_dev[moe][e / Eg] ? 1.0 / E : 0;
  return 1 - stay;
}

/* Two-level exchange of rows t between levels lp (producer) and lr (reader) of hmoe
 * layer moe: group rows (0 <-> 1, by the first dispatch's group offsets, ia[3] = 1) or
 * expert rows (1 <-> 2, by the second dispatch's offsets). */
static void rewire_levels(Comm *c, Node *reader, int slot, int moe, int lp, int lr) {
  Graph *g = c->g;
  Tensor *t = reader->in[slot];
  const Node *p = t->producer;
  bool groups = lp == 0 || lr == 0, fwd = lr > lp;
  Tensor *off = groups ? c->off_g[moe] : c->off_x[moe];
  MOEC_ASSERT(off != NULL);
  Tensor *in[2] = {t, off};
  Node *n = new_node(c, fwd ? OP_ALL_TO_ALL : OP_ALL_TO_ALL_BACK, 2, in, reader, reader, false,
                     fwd ? (groups ? "@groups" : "@experts") : (groups ? "@batch" : "@group"));
  const Node *side = fwd ? p : reader; /* who holds the rows in offsets order */
  n->ia[0] = moe;
  n->ia[1] = c->P;
  n->ia[2] = (int64_t)ir_node_mask(side, c->P);
  n->ia[3] = groups;
  n->fa[0] = groups ? group_remote_fraction(g, moe, ir_node_mask(side, c->P))
                    : expert_remote_fraction(g, moe);
  n->out[0]->part = lr == 0 ? PART_BATCH : PART_EXPERTS;
  if (fwd) n->out[1]->part = PART_EXPERTS;
  if (fwd && !groups && !c->recv[moe]) c->recv[moe] = n->out[1];
  c->a2a[t->id] = n->out[0];
  reader->in[slot] = n->out[0];
}

static void rewire(Comm *c, Node *reader, int slot) {
  Graph *g = c->g;
  Tensor *t = reader->in[slot];
  const Node *p = t->producer;
  bool rows = t->ty.rank >= 1 && t->ty.dim[0].b > 0;
  if (!p && t->kind != TK_INPUT && t->kind != TK_STATE) return; /* params */
  bool pe = p && is_expert(p), re = is_expert(reader);
  int moe = moe_of(g, re ? reader->layer : p ? p->layer : NULL);
  int lp = level(p), lr = level(reader);
  if (moe >= 0 && g->moe_ngroups && g->moe_ngroups[moe] > 0 && (lp == 1 || lr == 1)) {
    if (rows && lp != lr) {
      if (c->a2a[t->id])
        reader->in[slot] = c->a2a[t->id];
      else
        rewire_levels(c, reader, slot, moe, lp, lr);
    } else if (lr == 2 && lp < 2 && t->ty.dtype == DT_I32 && t->ty.rank == 1 && c->recv[moe]) {
      reader->in[slot] = c->recv[moe]; /* the experts' received offsets */
    }
    return;
  }
  if (re && !pe && rows) { /* dispatch: rows to their experts' devices */
    if (!c->a2a[t->id]) {
      Tensor *off = moe_offsets(g, reader->layer);
      MOEC_ASSERT(off != NULL && moe >= 0);
      Tensor *in[2] = {t, off};
      Node *n = new_node(c, OP_ALL_TO_ALL, 2, in, reader, reader, false, "@experts");
      n->ia[0] = moe;
      n->ia[1] = ir_node_set_size(reader, c->P);
      n->ia[2] = (int64_t)ir_node_mask(p, c->P); /* the batch side: who sends rows */
      n->fa[0] = remote_fraction(g, moe, ir_node_mask(p, c->P));
      n->out[0]->part = n->out[1]->part = PART_EXPERTS;
      c->a2a[t->id] = n->out[0];
      if (!c->recv[moe]) c->recv[moe] = n->out[1];
    }
    reader->in[slot] = c->a2a[t->id];
  } else if (re && !pe && t->ty.dtype == DT_I32 && t->ty.rank == 1 && moe >= 0) {
    if (c->recv[moe]) reader->in[slot] = c->recv[moe]; /* received offsets */
  } else if (!re && pe && rows) { /* combine: rows back to their batch devices */
    if (!c->a2a[t->id]) {
      Tensor *off = moe_offsets(g, p->layer);
      MOEC_ASSERT(off != NULL && moe >= 0);
      Tensor *in[2] = {t, off};
      Node *n = new_node(c, OP_ALL_TO_ALL_BACK, 2, in, reader, reader, false, "@batch");
      n->ia[0] = moe;
      n->ia[1] = ir_node_set_size(p, c->P);
      n->ia[2] = (int64_t)ir_node_mask(reader, c->P); /* the batch side: who gets rows back */
      n->fa[0] = remote_fraction(g, moe, ir_node_mask(reader, c->P));
      n->out[0]->part = PART_BATCH;
      c->a2a[t->id] = n->out[0];
    }
    reader->in[slot] = c->a2a[t->id];
  } else if (!re && !pe && rows && (p || t->kind == TK_INPUT) &&
             ir_node_mask(p, c->P) != ir_node_mask(reader, c->P)) { /* on(...): rows move */
    if (!c->a2a[t->id]) {
      Tensor *in[1] = {t};
      Node *n = new_node(c, OP_RESHARD, 1, in, reader, reader, false, "@reshard");
      uint64_t a = ir_node_mask(p, c->P), b = ir_node_mask(reader, c->P);
      n->ia[0] = popcount(a);
      n->ia[1] = popcount(b);
      n->ia[2] = (int64_t)a; /* from: rows in batch order over a's devices, ascending */
      n->ia[3] = (int64_t)b; /* to */
      n->fa[0] = reshard_fraction(a, b);
      set_devices(g, n, a | b, c->P); /* both sides take part */
      n->out[0]->part = PART_BATCH;
      c->a2a[t->id] = n->out[0];
    }
    reader->in[slot] = c->a2a[t->id];
  }
}

/* ---------------------------------------------------------------- hmoe: rows, ids, gates */

/* Whether a (a group-level exchange of an hmoe layer, from rewire_levels) and b move rows
 * between the same devices by the same offsets in the same direction and pass. */
static bool same_exchange(const Node *a, const Node *b) {
  return b->op == a->op && b->ia[3] && b->ia[0] == a->ia[0] && b->ia[2] == a->ia[2] &&
         b->backward == a->backward && b->nin == 2 && b->in[1] == a->in[1] &&
         dim_eq(b->in[0]->ty.dim[0], a->in[0]->ty.dim[0]);
}

/* An original node of the graph (not one this pass inserts), so its position is its id. */
static bool original(const Graph *g, const Node *p, int n0) {
  return p && p->id >= 0 && p->id < n0 && g->nodes[p->id] == p;
}

/* Nodes in (first, last] of the original order that read, directly or not, an output of
 * the exchanges mem[] (the readers of a gradient the exchange now brings later), marked
 * in dep[]; false when one of them produces an input of those exchanges. */
static bool dependents(Comm *c, const int *mem, int nm, int first, int last, bool *dep) {
  Graph *g = c->g;
  bool *hit = mc_calloc((size_t)g->ntensors + 1, sizeof(bool)), ok = true;
  for (int q = 0; q < nm; q++)
    hit[c->ins[mem[q]].node->out[0]->id] = true;
  for (int k = first; k <= last && ok; k++) {
    Node *n = g->nodes[k];
    for (int i = 0; i < n->nin && !dep[k]; i++)
      dep[k] = hit[n->in[i]->id];
    if (!dep[k]) continue;
    ok = !c->defer[k]; /* moved once already: leave this set apart */
    for (int j = 0; j < n->nout; j++)
      hit[n->out[j]->id] = true;
    for (int q = 0; q < nm; q++)
      ok &= c->ins[mem[q]].node->in[0]->producer != n;
  }
  mc_free(hit);
  return ok;
}

/* hmoe's group level moves several row tensors between the same devices by the same
 * offsets: forward the group rows, their secondary expert ids and gates, backward the rows'
 * and the gates' gradients. Each such set becomes one exchange whose rows carry every
 * piece (more inputs after the offsets): paper's number of all-to-alls and their latency,
 * the same bytes, no copies besides the exchange's own. It goes before the first reader
 * when every piece exists by then (forward), else right after the last piece's producer,
 * and the nodes that read the pieces before that (the secondary gate's backward, which
 * reads the gates' gradient) move after it, in order (backward). */
static void pack_group_level(Comm *c, int n0) {
  Graph *g = c->g;
  for (int i = 0; i < c->nins; i++) {
    Node *a = c->ins[i].node;
    if ((a->op != OP_ALL_TO_ALL && a->op != OP_ALL_TO_ALL_BACK) || !a->ia[3] || c->ins[i].after ||
        a->nin != 2)
      continue;
    int mem[8], nm = 0, first = n0, last = -1;
    bool ok = true;
    for (int j = i; j < c->nins && nm < 8; j++) {
      Node *b = c->ins[j].node;
      if (c->ins[j].after || !same_exchange(a, b)) continue;
      mem[nm++] = j;
      const Node *p = b->in[0]->producer;
      ok &= original(g, p, n0) && original(g, c->ins[j].anchor, n0);
      first = MC_MIN(first, c->ins[j].anchor->id);
      last = MC_MAX(last, p ? p->id : n0);
    }
    if (nm < 2 || !ok) continue;
    bool *dep = mc_calloc((size_t)n0 + 1, sizeof(bool));
    if (last >= first && !dependents(c, mem, nm, first, last, dep)) {
      mc_free(dep);
      continue;
    }
    Node *anchor = last < first ? g->nodes[first] : g->nodes[last];
    bool after = last >= first;
    for (int k = first; k <= last; k++)
      if (dep[k]) c->defer[k] = anchor;
    mc_free(dep);
    /* one exchange: (rows, offsets, more rows ...) -> (rows, [received offsets,] more ...) */
    Tensor **xin = mc_arena_alloc(&g->arena, sizeof(Tensor *) * (size_t)(nm + 1));
    xin[0] = a->in[0];
    xin[1] = a->in[1];
    for (int q = 1; q < nm; q++)
      xin[q + 1] = c->ins[mem[q]].node->in[0];
    Node *x = new_node_ia(c, a->op, nm + 1, xin, a->ia, a, anchor, after,
                          a->op == OP_ALL_TO_ALL ? "@groups" : "@batch");
    x->fa[0] = a->fa[0];
    for (int q = 0; q < nm; q++) {
      Node *b = c->ins[mem[q]].node;
      Tensor *y = x->out[q == 0 ? 0 : a->op == OP_ALL_TO_ALL ? q + 1 : q];
      y->name = b->out[0]->name;
      y->part = b->out[0]->part;
      for (int k = 0; k < n0; k++) /* b's readers (original nodes) read the piece */
        for (int s = 0; s < g->nodes[k]->nin; s++)
          if (g->nodes[k]->in[s] == b->out[0]) g->nodes[k]->in[s] = y;
      if (a->op == OP_ALL_TO_ALL) { /* the received offsets (the same for every piece) */
        if (q == 0) x->out[1]->name = b->out[1]->name;
        x->out[1]->part = b->out[1]->part;
        for (int k = 0; k < n0; k++)
          for (int s = 0; s < g->nodes[k]->nin; s++)
            if (g->nodes[k]->in[s] == b->out[1]) g->nodes[k]->in[s] = x->out[1];
      }
    }
    for (int q = nm - 1; q >= 0; q--) { /* drop the separate exchanges, keeping the order */
      c->ins[mem[q]].node->id = -1;     /* its outputs leave the graph (drop_orphans) */
      memmove(c->ins + mem[q], c->ins + mem[q] + 1, sizeof(Ins) * (size_t)(c->nins - mem[q] - 1));
      c->nins--;
    }
    i = -1; /* the list changed: look again from the start */
  }
}

/* Tensors of nodes pack_group_level dropped (id -1) leave the graph; ids in order. */
static void drop_orphans(Graph *g) {
  int nt = 0;
  for (int i = 0; i < g->ntensors; i++) {
    Tensor *t = g->tensors[i];
    if (t->producer && t->producer->id < 0) continue;
    t->id = nt;
    g->tensors[nt++] = t;
  }
  g->ntensors = nt;
}

/* all_reduce of t (PART_PARTIAL), right after its producer; every reader of t but the
 * new node reads the sum. Returns the sum. */
static Tensor *all_reduce(Comm *c, Tensor *t, const char *what) {
  Graph *g = c->g;
  Node *p = t->producer;
  int nd = ir_node_set_size(p, c->P);
  if (nd <= 1) {
    t->part = PART_REPLICATED;
    return t;
  }
  Tensor *in[1] = {t};
  Node *n = new_node(c, OP_ALL_REDUCE, 1, in, p, p, true, what);
  n->ia[0] = nd;
  n->device = p->device;
  n->devices = p->devices;
  n->ndevices = p->ndevices;
  Tensor *s = n->out[0];
  s->part = PART_REPLICATED;
  for (int k = 0; k < g->nnodes; k++)
    for (int i = 0; i < g->nodes[k]->nin; i++)
      if (g->nodes[k]->in[i] == t) g->nodes[k]->in[i] = s;
  for (int k = 0; k < g->nstates; k++)
    if (g->states[k].next == t) g->states[k].next = s;
  return s;
}

static bool in_layer(const Node *n, const char *layer) {
  return n->layer && !strcmp(n->layer, layer);
}

/* hmoe (appendix B): load_H[i,j] = Load_p(X)_i * Load_i(X^(i))_j / |X^(i)| is a product
 * of sums over the batch, so each factor is summed over the devices before the product:
 * Load_i (the per-group loads, div_group_rows' input), Load_p (row_scale's scale) and
 * the group row counts |X^(i)| (div_group_rows' offsets: the sum of every device's
 * offsets, prefix sums add, read only by div_group_rows and its gradient). The product
 * is then the global batch's, the same on every device. False for a moe layer. */
static bool hmoe_global_load(Comm *c, int moe) {
  Graph *g = c->g;
  const char *layer = g->moe_names[moe];
  Node *div = NULL, *rs = NULL;
  for (int k = 0; k < g->nnodes && !div; k++)
    if (!g->nodes[k]->backward && g->nodes[k]->op == OP_DIV_GROUP_ROWS &&
        in_layer(g->nodes[k], layer))
      div = g->nodes[k];
  if (!div) return false;
  for (int k = 0; k < g->nnodes && !rs; k++)
    if (!g->nodes[k]->backward && g->nodes[k]->op == OP_ROW_SCALE &&
        g->nodes[k]->in[0] == div->out[0])
      rs = g->nodes[k];
  MOEC_ASSERT(rs != NULL);
  Tensor *off = div->in[1], *in[1] = {off};
  if (off->part == PART_PARTIAL && ir_node_set_size(off->producer, c->P) > 1) {
    Node *n = new_node(c, OP_ALL_REDUCE, 1, in, off->producer, off->producer, true, "@sum");
    n->ia[0] = ir_node_set_size(off->producer, c->P);
    n->out[0]->part = PART_REPLICATED;
    for (int k = 0; k < g->nnodes; k++)
      if (g->nodes[k]->op == OP_DIV_GROUP_ROWS && g->nodes[k]->in[1] == off)
        g->nodes[k]->in[1] = n->out[0];
  }
  if (div->in[0]->part == PART_PARTIAL) all_reduce(c, div->in[0], "@sum");
  if (rs->in[1]->part == PART_PARTIAL) all_reduce(c, rs->in[1], "@sum");
  div->out[0]->part = rs->out[0]->part = PART_REPLICATED;
  g->moe_load[moe]->part = PART_REPLICATED; /* a reshape of rs's output */
  return true;
}

/* Batchwise gating (appendix F) over the global batch: every expert takes the top m =
 * floor(k*N*P/E) of all devices' rows. all_gather_topm, right before the route, finds
 * each expert's cut; the route keeps this device's candidates up to it. The threshold
 * loss is a mean over the global batch: divided by N*P here, all-reduced. */
static void batchwise_global(Comm *c, Node *route) {
  Graph *g = c->g;
  int nd = ir_node_set_size(route, c->P);
  if (nd <= 1 || route->nin != 2) return;
  Tensor *in[2] = {route->in[0], route->in[1]};
  int64_t ia[IR_MAX_ATTR] = {route->ia[0], nd};
  Node *n = new_node_ia(c, OP_ALL_GATHER_TOPM, 2, in, ia, route, route, false, "@cut");
  n->device = route->device;
  n->devices = route->devices;
  n->ndevices = route->ndevices;
  n->out[1]->name = mc_arena_printf(&g->arena, "%s@cut_row", in[0]->name);
  n->out[0]->part = n->out[1]->part = PART_REPLICATED;
  Tensor **rin = mc_arena_alloc(&g->arena, 4 * sizeof(Tensor *));
  rin[0] = in[0];
  rin[1] = in[1];
  rin[2] = n->out[0];
  rin[3] = n->out[1];
  route->in = rin;
  route->nin = 4;
  for (int k = 0; k < g->nnodes; k++) {
    Node *t = g->nodes[k];
    if (!in_layer(t, route->layer) ||
        (t->op != OP_THRESHOLD_LOSS && t->op != OP_THRESHOLD_LOSS_BWD))
      continue;
    t->ia[0] = nd;
    if (t->op == OP_THRESHOLD_LOSS && t->out[0]->part == PART_PARTIAL)
      all_reduce(c, t->out[0], "@sum");
  }
}

/* Capacity over the global batch: every device's routes gathered before the capacity op, so
 * that its drop decision is the one device's (docs/moe.md); the drop fractions it then
 * computes are the global batch's, the same on every device. */
static bool capacity_global(Comm *c, const PassCtx *ctx, Node *cap) {
  int nd = ir_node_set_size(cap, c->P);
  if (nd <= 1 || cap->nin != 1) return true;
  if (cap->device >= 0 || cap->ndevices > 0) {
    pass_error(ctx, cap->loc,
               "moe '%s': capacity= with the layer's gate on(...) a device subset is not "
               "supported",
               cap->layer ? cap->layer : "?");
    return false;
  }
  int64_t ia[IR_MAX_ATTR] = {nd};
  Node *n = new_node_ia(c, OP_ALL_GATHER_ROWS, 1, cap->in, ia, cap, cap, false, "@all");
  n->out[0]->part = cap->out[1]->part = PART_REPLICATED;
  Tensor **in = mc_arena_alloc(&c->g->arena, 2 * sizeof(Tensor *));
  in[0] = cap->in[0];
  in[1] = n->out[0];
  cap->in = in;
  cap->nin = 2;
  return true;
}

static void widen_rows(Tensor *t, int P) {
  for (int q = 0; q < t->ty.dim[0].b; q++)
    t->ty.dim[0].c *= P;
}

/* After the splice: a device may hold more than N*k of the global batch's E*m routes, so
 * the route's slot list gets N*k*P slots (ia[1]) and the shapes of the layer's nodes after
 * it are inferred again (gathered rows, the expert FFN under data_parallel, the combine
 * and their gradients). Expert-sharded nodes keep theirs: the runtime widens every
 * expert-row tensor by P (plan_widen_expert_rows), to the same N*k*P; all_to_all_back
 * brings them back into N*k*P rows. */
static void batchwise_widen(Graph *g, Node *route, int P) {
  route->ia[1] = P;
  for (int k = route->id; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (!in_layer(n, route->layer) || (n->nout > 0 && n->out[0]->part == PART_EXPERTS)) continue;
    const char *err = ir_ops[n->op].shape(g, n);
    if (err)
      mc_fatal("comm pass: node %d (%s) of batchwise layer '%s': %s", n->id, ir_ops[n->op].name,
               route->layer, err);
    if (n->op == OP_ALL_TO_ALL_BACK && n->in[1] == route->out[2]) widen_rows(n->out[0], P);
  }
}

/* Node n into out[*m], with the new nodes anchored before and after it. */
static void splice(const Comm *c, Node *n, Node **out, int *m) {
  for (int j = 0; j < c->nins; j++)
    if (c->ins[j].anchor == n && !c->ins[j].after) out[(*m)++] = c->ins[j].node;
  out[(*m)++] = n;
  for (int j = 0; j < c->nins; j++)
    if (c->ins[j].anchor == n && c->ins[j].after) out[(*m)++] = c->ins[j].node;
}

/* ------------------------------------------------- a sampled softmax's table sharded by rows */

/* plan.tables = sharded and p a sampled softmax's weight W[V,D], read only by its
 * sampled_xent and sampled_xent_bwd, its gradient their embedding_bwd(targets, dWt, cand,
 * dWs): the sampler becomes its own node (sample_log_uniform, the same draws), the targets'
 * and the candidates' rows come from their owners (two table_gathers), the loss and its
 * gradients read those rows (sampled_xent_rows, sampled_xent_rows_bwd; the loss's
 * evaluation reads this device's rows of W) and the rows' gradients go to their owners
 * (table_scatter of both pairs). The bias b[V] stays replicated: V elements, its
 * gradient's rows exchanged as any row-sparse gradient's (passes/sparse.c). */
static bool sampled_table(Comm *c, Tensor *p, const Config *cfg) {
  Graph *g = c->g;
  int P = c->P;
  if (!cfg || !cfg->tables_sharded || p->ty.rank != 2 || !dim_is_const(p->ty.dim[0]) ||
      p->ty.dim[0].c < P || !p->grad || !p->grad->producer)
    return false;
  Node *f = NULL, *bw = NULL, *e = p->grad->producer;
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    for (int i = 0; i < n->nin; i++) {
      if (n->in[i] != p) continue;
      if (n->op == OP_SAMPLED_XENT && i == 1 && !f)
        f = n;
      else if (n->op == OP_SAMPLED_XENT_BWD && i == 3 && !bw)
        bw = n;
      else
        return false;
    }
  }
  if (!f || !bw || ir_node_set_size(f, P) != P || ir_node_set_size(bw, P) != P ||
      ir_node_set_size(e, P) != P || e->op != OP_EMBEDDING_BWD || e->nin != 4 ||
      e->in[1] != bw->out[1] || e->in[3] != bw->out[3] || bw->in[5] != f->out[2])
    return false;
  int64_t V = p->ty.dim[0].c, S = f->ia[1];
  double remote = (double)(P - 1) / P; /* uniform ids: this share has another owner */
  Tensor *tg = f->in[3], *cand = f->out[2], *tries = f->out[3];
  /* the sampler, producing sampled_xent's samples and tries (its own two outputs dropped) */
  int64_t sia[IR_MAX_ATTR] = {f->ia[0], S, V}, tia[IR_MAX_ATTR] = {V, P};
  Node *sm = new_node_ia(c, OP_SAMPLE_LOG_UNIFORM, 1, &tg, sia, f, f, false, ".sampler");
  static Node dropped = {.id = -1};
  for (int j = 0; j < 2; j++)
    sm->out[j]->producer = &dropped;
  sm->out[0] = cand;
  sm->out[1] = tries;
  cand->producer = tries->producer = sm;
  cand->producer_slot = 0;
  tries->producer_slot = 1;
  Tensor *gi[2] = {tg, p}, *gc[2] = {cand, p};
  Node *gt = new_node_ia(c, OP_TABLE_GATHER, 2, gi, tia, f, f, false, "");
  Node *gs = new_node_ia(c, OP_TABLE_GATHER, 2, gc, tia, f, f, false, "");
  gt->fa[0] = gs->fa[0] = remote;
  gt->out[0]->name = mc_arena_printf(&g->arena, "%s@targets", p->name);
  gs->out[0]->name = mc_arena_printf(&g->arena, "%s@samples", p->name);
  /* the loss over the gathered rows */
  Tensor **fin = mc_arena_alloc(&g->arena, sizeof(Tensor *) * 8);
  Tensor *fi[8] = {f->in[0], gt->out[0], gs->out[0], f->in[2], tg, cand, tries, p};
  memcpy(fin, fi, sizeof fi);
  f->op = OP_SAMPLED_XENT_ROWS;
  f->in = fin;
  f->nin = 8;
  f->nout = 2;
  f->ia[2] = V;
  f->ia[3] = P;
  /* its gradients, W's rows from the gathered ones */
  Tensor **bin = mc_arena_alloc(&g->arena, sizeof(Tensor *) * 8);
  Tensor *bi[8] = {bw->in[0],  bw->in[1], bw->in[2], gt->out[0],
                   gs->out[0], bw->in[4], cand,      bw->in[6]};
  memcpy(bin, bi, sizeof bi);
  bw->op = OP_SAMPLED_XENT_ROWS_BWD;
  bw->in = bin;
  bw->nin = 8;
  bw->ia[2] = V;
  Node *re[2] = {f, bw};
  for (int i = 0; i < 2; i++) {
    const char *err = ir_ops[re[i]->op].shape(g, re[i]);
    if (err) mc_fatal("comm pass: layer '%s': %s", f->layer ? f->layer : "?", err);
  }
  /* W's gradient: the rows to their owners */
  e->op = OP_TABLE_SCATTER;
  e->ia[1] = P;
  e->fa[0] = remote;
  e->out[0]->name = mc_arena_printf(&g->arena, "%s.grad@rows", p->name);
  p->part = PART_ROWS;
  p->grad->part = PART_ROWS;
  return true;
}

void pass_comm(Graph *g, const PassCtx *ctx) {
  int P = ctx->devices;
  if (P <= 1 || !ctx->cfg || !g->moe_expert_dev) return; /* not placed: nothing moves */
  Comm c = {.g = g, .P = P};
  c.a2a = mc_calloc((size_t)g->ntensors + 1, sizeof(Tensor *));
  c.recv = mc_calloc((size_t)g->nmoe + 1, sizeof(Tensor *));
  c.off_g = mc_calloc((size_t)g->nmoe + 1, sizeof(Tensor *));
  c.off_x = mc_calloc((size_t)g->nmoe + 1, sizeof(Tensor *));
  c.defer = mc_calloc((size_t)g->nnodes + 1, sizeof(Node *));
  for (int i = 0; i < g->nmoe; i++) { /* before the rewiring changes the dispatch's inputs */
    Node *d2 =
        g->moe_ngroups && g->moe_ngroups[i] > 0 ? pass_group_dispatch(g, g->moe_names[i]) : NULL;
    if (!d2) continue;
    c.off_g[i] = d2->in[0]->producer->out[1];
    c.off_x[i] = d2->out[1];
  }
  int n0 = g->nnodes;
  /* 1. data between differently placed nodes; rows first, then offsets */
  for (int pass = 0; pass < 2; pass++)
    for (int k = 0; k < n0; k++) {
      Node *n = g->nodes[k];
      for (int i = 0; i < n->nin; i++) {
        bool off = n->in[i]->ty.dtype == DT_I32 && n->in[i]->ty.rank == 1;
        if (off == (pass == 1)) rewire(&c, n, i);
      }
    }
  pack_group_level(&c, n0);
  /* 2. importance and load over the global batch */
  for (int i = 0; i < g->nmoe; i++) {
    if (g->moe_importance[i] && g->moe_importance[i]->part == PART_PARTIAL)
      g->moe_importance[i] = all_reduce(&c, g->moe_importance[i], "@sum");
    if (hmoe_global_load(&c, i)) continue;
    if (g->moe_load[i] && g->moe_load[i]->part == PART_PARTIAL)
      g->moe_load[i] = all_reduce(&c, g->moe_load[i], "@sum");
  }
  /* the count of real target positions (padded targets): the loss is a global mean */
  if (g->xent_count && g->xent_count->part == PART_PARTIAL)
    g->xent_count = all_reduce(&c, g->xent_count, "@sum");
  /* batchwise gating: each expert's top rows over the global batch */
  for (int k = 0; k < n0; k++)
    if (g->nodes[k]->op == OP_BATCHWISE_ROUTE) batchwise_global(&c, g->nodes[k]);
  for (int k = 0; k < n0; k++) /* capacity: the drop decision on the global batch */
    if (g->nodes[k]->op == OP_CAPACITY && !capacity_global(&c, ctx, g->nodes[k])) break;
  /* 3. gradients of replicated parameters (expert gradients stay where they are) */
  for (int i = 0; i < g->nparams; i++) {
    Tensor *p = g->params[i];
    if (p->grad && p->part == PART_REPLICATED && p->grad->part == PART_PARTIAL) {
      if (sampled_table(&c, p, ctx->cfg)) continue;      /* each device its rows, sampled */
      if (pass_table_shard(g, p, P, ctx->cfg)) continue; /* each device its rows */
      if (pass_sparse_grad(g, p, P, ctx->cfg)) continue; /* only the touched rows travel */
      Tensor *s = all_reduce(&c, p->grad, "@sum");
      if (s != p->grad) s->name = mc_arena_printf(&g->arena, "%s.grad@sum", p->name);
      p->grad = s;
    }
  }
  /* 4. splice the new nodes in at their anchors (nodes pack_group_level deferred right
   * after theirs); ids in order */
  Node **out = mc_calloc((size_t)(n0 + c.nins), sizeof(Node *));
  bool *target = mc_calloc((size_t)n0 + 1, sizeof(bool));
  for (int k = 0; k < n0; k++)
    if (c.defer[k]) target[c.defer[k]->id] = true;
  int m = 0;
  for (int k = 0; k < n0; k++) {
    if (c.defer[k]) continue;
    splice(&c, g->nodes[k], out, &m);
    for (int j = 0; target[k] && j < n0; j++)
      if (c.defer[j] == g->nodes[k]) splice(&c, g->nodes[j], out, &m);
  }
  mc_free(target);
  MOEC_ASSERT(m == n0 + c.nins);
  for (int k = 0; k < m; k++) {
    if (k >= g->ncap) { /* ir_node grew the array when it appended */
      g->ncap = 2 * m;
      g->nodes = mc_realloc(g->nodes, sizeof(Node *) * (size_t)g->ncap);
    }
    g->nodes[k] = out[k];
    out[k]->id = k;
  }
  g->nnodes = m;
  mc_free(out);
  for (int k = 0; k < g->nnodes; k++)
    if (g->nodes[k]->op == OP_BATCHWISE_ROUTE && g->nodes[k]->nin == 4)
      batchwise_widen(g, g->nodes[k], (int)g->nodes[k]->in[2]->producer->ia[1]);
  drop_orphans(g);
  mc_free(c.ins);
  mc_free(c.a2a);
  mc_free(c.recv);
  mc_free(c.off_g);
  mc_free(c.off_x);
  mc_free(c.defer);
}
