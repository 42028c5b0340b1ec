/* recompute.c: recomputation scheduling (docs/memory.md).
 *
 * A segment is one layer of the model: the forward nodes whose ->layer is its name;
 * for a MoE layer only its experts (role "experts"), so the gate, the dispatch (and
 * any all_to_all the comm pass put around it) and the combine are never repeated:
 * the dispatched rows are kept and the expert hidden activations are dropped.
 *
 * In a recomputed segment a tensor is dropped when its producer is in the segment
 * and is not a dispatch or a collective, no forward node outside the segment reads
 * it (the segment's outputs are the checkpoints the next layers start from), and the
 * host does not read it after the step (loss, aux, MoE importance and load, the
 * state's next values). The dropped tensors the backward pass reads are made again
 * by copies of their producers (and of the producers of their dropped inputs),
 * inserted just before the first backward node that reads one of them; backward
 * readers are redirected to the copies, so the originals die in the forward pass.
 * A copy is the same op with the same attributes on the same inputs, so the same
 * kernel computes the same bits: dropout masks and gate noise are counter-based on
 * (seed, stream, step, element) and come out identical.
 *
 * Copies are marked ->backward (they run in the backward part of the program),
 * ->recompute_seg (the segment's number, also set on the segment's forward nodes)
 * and ->recompute_of (the node they repeat). Their outputs are named NAME.rc.
 *
 * recompute = all: every layer; [names]: those layers; auto: layers chosen to fit
 * memory_budget (params, inputs, state, the arena of activations and gradients, and
 * the optimizer's state, in f32, on one device's graph as the runtime binds it: on P
 * devices B/P rows (rounded up), expert-row tensors widened x P for every device's
 * rows, the parameters and optimizer state of its own experts only, on the device with
 * the most experts; runtime/train.c build_on, plan_cost's planned_bytes): the budget is
 * per device. Each layer alone is
 * scored by the bytes it saves (the planned memory with it, against without) per
 * recomputed FLOP; layers are added best score first until the plan fits, then any
 * whose removal still fits is removed (cheapest saving first). A budget that cannot be
 * met is a warning; the plan then recomputes every layer that saves memory. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fusion.h"
#include "passes.h"
#include "plan.h"

/* ---------------------------------------------------------------- FLOPs */

static int64_t numel_at(const Tensor *t, int64_t B, int64_t T) {
  int64_t n = 1;
  for (int d = 0; d < t->ty.rank; d++)
    n *= dim_eval(t->ty.dim[d], B, T);
  return n;
}

static int64_t last_dim(const Tensor *t, int64_t B, int64_t T) {
  return t->ty.rank ? dim_eval(t->ty.dim[t->ty.rank - 1], B, T) : 1;
}

double pass_node_flops(const Node *n, int64_t B, int64_t T) {
  double out = 0;
  for (int j = 0; j < n->nout; j++)
    out += (double)numel_at(n->out[j], B, T);
  switch (n->op) {
  case OP_MATMUL: {
    int64_t acols = last_dim(n->in[0], B, T), arows = numel_at(n->in[0], B, T) / acols;
    return 2.0 * (double)numel_at(n->out[0], B, T) * (double)(n->ia[0] ? arows : acols);
  }
  case OP_GROUPED_MATMUL:
    return 2.0 * (double)numel_at(n->out[0], B, T) * (double)last_dim(n->in[0], B, T);
  case OP_GROUPED_MATMUL_DW:
    return 2.0 * (double)numel_at(n->in[0], B, T) * (double)last_dim(n->in[1], B, T);
  case OP_GROUPED_MATMUL_RELU_BWD: /* the GEMM, then relu_bwd over its output */
    return (2.0 * (double)last_dim(n->in[1], B, T) + 1) * (double)numel_at(n->out[0], B, T);
  case OP_LSTM: /* h.W_hh per step, then the gates (and with W_p, m.W_p^T) */
    return (2.0 * (double)last_dim(n->in[1], B, T) + 10.0) * (double)numel_at(n->out[2], B, T) +
           (n->nin == 5
                ? 2.0 * (double)numel_at(n->out[0], B, T) * (double)last_dim(n->out[1], B, T)
                : 0);
  case OP_LSTM_BWD:
  case OP_LSTMP_BWD:
    return (4.0 * (double)last_dim(n->in[1], B, T) + 20.0) * (double)numel_at(n->in[6], B, T) +
           (n->nin == 8 ? 4.0 * (double)numel_at(n->in[0], B, T) * (double)last_dim(n->in[5], B, T)
                        : 0);
  case OP_SOFTMAX:
  case OP_SOFTMAX_BWD:
  case OP_XENT:
  case OP_XENT_BWD:
  case OP_XENT_BIAS_BWD:
    return 5.0 * (double)numel_at(n->in[0], B, T);
  default:
    return out; /* elementwise, copies, gathers: one per output element */
  }
}

/* ---------------------------------------------------------------- segments */

typedef struct Seg {
  const char *layer;
  bool moe; /* only the experts are repeated */
} Seg;

static bool in_seg(const Node *n, const Seg *s) {
  return !n->backward && !n->recompute_of && n->layer && !strcmp(n->layer, s->layer) &&
         (!s->moe || (n->role && !strcmp(n->role, "experts")));
}

/* Every layer with forward nodes, in the order the forward pass reaches them. */
static Seg *find_segs(const Graph *g, int *nseg) {
  Seg *s = mc_calloc((size_t)g->nnodes + 1, sizeof(Seg));
  int n = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *x = g->nodes[k];
    if (x->backward || !x->layer) continue;
    int i = 0;
    while (i < n && strcmp(s[i].layer, x->layer))
      i++;
    if (i == n) s[n++].layer = x->layer;
    if (x->role && !strcmp(x->role, "experts")) s[i].moe = true;
  }
  *nseg = n;
  return s;
}

/* Ops whose outputs are always kept: repeating them would repeat communication. */
static bool keep_op(const Node *n) {
  return n->op == OP_DISPATCH || (ir_ops[n->op].flags & OPF_COLLECTIVE);
}

/* Tensors the host reads after the step. */
static bool *pinned_set(const Graph *g) {
  bool *p = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
#define PIN(t)                                                                                     \
  do {                                                                                             \
    if (t) p[(t)->id] = true;                                                                      \
  } while (0)
  PIN(g->loss);
  PIN(g->xent);
  PIN(g->aux);
  for (int i = 0; i < g->nmoe; i++) {
    if (g->moe_importance) PIN(g->moe_importance[i]);
    if (g->moe_load) PIN(g->moe_load[i]);
  }
  for (int i = 0; i < g->nstates; i++)
    PIN(g->states[i].next);
  for (int i = 0; i < g->nparams; i++)
    PIN(g->params[i]->grad);
#undef PIN
  return p;
}

static void renumber(Graph *g) {
  for (int k = 0; k < g->nnodes; k++)
    g->nodes[k]->id = k;
}

/* What apply() changed, so that undo() can restore the graph exactly. */
typedef struct Undo {
  int nnodes, ntensors;
  Node **nodes;
  Node **red;
  Tensor ***old_in;
  int nred;
  Node **marked;
  int nmarked;
} Undo;

static void undo(Graph *g, Undo *u) {
  for (int i = 0; i < u->nred; i++)
    u->red[i]->in = u->old_in[i];
  for (int i = 0; i < u->nmarked; i++)
    u->marked[i]->recompute_seg = -1;
  memcpy(g->nodes, u->nodes, (size_t)u->nnodes * sizeof(Node *));
  g->nnodes = u->nnodes;
  g->ntensors = u->ntensors;
  renumber(g);
  mc_free(u->nodes);
  mc_free(u->red);
  mc_free(u->old_in);
  mc_free(u->marked);
  memset(u, 0, sizeof *u);
}

/* Recomputes segment s as number `id`. Returns false (graph unchanged) when the
 * backward pass reads nothing the segment could drop. */
static bool apply(Graph *g, const Seg *s, int id, Undo *u) {
  const int nn = g->nnodes, nt = g->ntensors;
  renumber(g);
  bool *pinned = pinned_set(g);
  bool *ins = mc_calloc((size_t)nn + 1, sizeof(bool));
  bool *drop = mc_calloc((size_t)nt + 1, sizeof(bool));
  bool *need = mc_calloc((size_t)nt + 1, sizeof(bool));
  bool *cl = mc_calloc((size_t)nn + 1, sizeof(bool));
  Tensor **map = mc_calloc((size_t)nt + 1, sizeof(Tensor *));
  for (int k = 0; k < nn; k++) {
    const Node *n = g->nodes[k];
    ins[k] = in_seg(n, s);
    for (int j = 0; j < n->nout && ins[k]; j++)
      drop[n->out[j]->id] = !keep_op(n) && !pinned[n->out[j]->id];
  }
  /* the segment's outputs: read by forward nodes outside it (or by other copies) */
  for (int k = 0; k < nn; k++) {
    const Node *n = g->nodes[k];
    if (ins[k] || (n->backward && !n->recompute_of)) continue;
    for (int i = 0; i < n->nin; i++)
      drop[n->in[i]->id] = false;
  }
  int first = nn;
  for (int k = 0; k < nn; k++) {
    const Node *n = g->nodes[k];
    if (!n->backward || n->recompute_of) continue;
    for (int i = 0; i < n->nin; i++)
      if (drop[n->in[i]->id]) {
        need[n->in[i]->id] = true;
        if (k < first) first = k;
      }
  }
  bool any = first < nn;
  if (any) {
    /* copies: producers of needed tensors, and of the dropped tensors they read */
    for (int k = nn - 1; k >= 0; k--) {
      const Node *n = g->nodes[k];
      if (!ins[k]) continue;
      for (int j = 0; j < n->nout; j++)
        cl[k] |= need[n->out[j]->id];
      if (!cl[k]) continue;
      for (int i = 0; i < n->nin; i++)
        if (drop[n->in[i]->id]) cl[n->in[i]->producer->id] = true;
    }
    u->nnodes = nn;
    u->ntensors = nt;
    u->nodes = mc_malloc((size_t)nn * sizeof(Node *));
    memcpy(u->nodes, g->nodes, (size_t)nn * sizeof(Node *));
    u->marked = mc_calloc((size_t)nn + 1, sizeof(Node *));
    u->red = mc_calloc((size_t)nn + 1, sizeof(Node *));
    u->old_in = mc_calloc((size_t)nn + 1, sizeof(Tensor **));
    ir_set_backward(g, true);
    Tensor *inb[64];
    for (int k = 0; k < nn; k++) {
      if (!ins[k]) continue;
      Node *n = g->nodes[k];
      n->recompute_seg = id;
      u->marked[u->nmarked++] = n;
      if (!cl[k]) continue;
      Tensor **in = n->nin <= 64 ? inb : mc_malloc((size_t)n->nin * sizeof(Tensor *));
      for (int i = 0; i < n->nin; i++) {
        in[i] = drop[n->in[i]->id] ? map[n->in[i]->id] : n->in[i];
        MOEC_ASSERT(in[i]);
      }
      ir_set_context(g, n->layer, n->role, n->loc);
      Node *c = ir_node(g, n->op, n->nin, in, n->ia, n->fa);
      if (in != inb) mc_free(in);
      c->device = n->device;
      c->recompute_seg = id;
      c->recompute_of = n;
      for (int j = 0; j < c->nout; j++) {
        Tensor *o = c->out[j];
        o->kind = TK_ACT;
        o->name = mc_arena_printf(&g->arena, "%s.rc", n->out[j]->name);
        o->part = n->out[j]->part;
        map[n->out[j]->id] = o;
      }
    }
    ir_set_backward(g, false);
    ir_set_context(g, NULL, NULL, (Loc){0});
    /* backward readers use the copies */
    for (int k = first; k < nn; k++) {
      Node *n = g->nodes[k];
      if (!n->backward || n->recompute_of) continue;
      bool hit = false;
      for (int i = 0; i < n->nin; i++)
        hit |= need[n->in[i]->id];
      if (!hit) continue;
      Tensor **in = mc_arena_alloc(&g->arena, (size_t)n->nin * sizeof(Tensor *));
      for (int i = 0; i < n->nin; i++)
        in[i] = need[n->in[i]->id] ? map[n->in[i]->id] : n->in[i];
      u->red[u->nred] = n;
      u->old_in[u->nred++] = n->in;
      n->in = in;
    }
    /* the copies run just before the first backward reader */
    int nc = g->nnodes - nn;
    Node **order = mc_malloc((size_t)g->nnodes * sizeof(Node *));
    memcpy(order, g->nodes, (size_t)first * sizeof(Node *));
    memcpy(order + first, g->nodes + nn, (size_t)nc * sizeof(Node *));
    memcpy(order + first + nc, g->nodes + first, (size_t)(nn - first) * sizeof(Node *));
    memcpy(g->nodes, order, (size_t)g->nnodes * sizeof(Node *));
    mc_free(order);
    renumber(g);
  }
  mc_free(pinned);
  mc_free(ins);
  mc_free(drop);
  mc_free(need);
  mc_free(cl);
  mc_free(map);
  return any;
}

/* ---------------------------------------------------------------- auto */

/* Bytes of the optimizer's state (runtime/optim.c): Adam keeps m and v; the factored
 * optimizer a row and a column vector per matrix, v for the others. */
static double optim_bytes(const Graph *g, const Config *cfg) {
  double b = 0;
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    double n = (double)numel_at(t, 1, 1);
    if (cfg->optimizer == OPT_FACTORED && t->ty.rank >= 2) {
      double rows = (double)dim_eval(t->ty.dim[t->ty.rank - 2], 1, 1);
      double cols = (double)dim_eval(t->ty.dim[t->ty.rank - 1], 1, 1);
      if (rows * cols > 0) b += 4.0 * n / (rows * cols) * (rows + cols); /* E_r = 0: none */
    } else {
      b += 4.0 * n * (cfg->optimizer == OPT_ADAM ? 2 : 1);
    }
  }
  return b;
}

typedef struct Auto {
  Graph *g;
  const Config *cfg;
  Seg *segs;
  int nseg;
  Undo *stack;
  int depth;
  int P;        /* devices */
  int dev;      /* the device planned: the one holding the most experts */
  int64_t rows; /* one device's batch rows: ceil(batch / P) */
  bool fold_dw; /* the fusion pass will fold the few-row experts' dW (PassCtx.fold_dw) */
} Auto;

static void undo_all(Auto *a) {
  while (a->depth > 0)
    undo(a->g, &a->stack[--a->depth]);
}

/* The plan of the graph as the later passes will leave it: the fusion pass (it runs
 * after this one) moves lifetimes (a group runs at its last member, its inputs live
 * until then, register-only values need no memory), by about 1% either way on the
 * example models. So it is run here on the graph and undone: the node list and every
 * tensor's producer restored (the fused nodes stay in the graph's arena, unused). */
static MemFigures plan_after_fusion(Auto *a) {
  Graph *g = a->g;
  PassCtx pc = {.cfg = a->cfg, .devices = a->P, .training = true, .fold_dw = a->fold_dw};
  if (!pass_fusion_enabled(a->cfg))
    return pass_memplan_plan(g, a->rows, a->cfg->unroll, sizeof(float), 0, NULL);
  int nn = g->nnodes;
  Node **nodes = mc_malloc(sizeof(Node *) * (size_t)(nn + 1));
  memcpy(nodes, g->nodes, sizeof(Node *) * (size_t)nn);
  int64_t *fold = mc_malloc(sizeof(int64_t) * (size_t)(nn + 1)); /* the fold marks, in place */
  for (int k = 0; k < nn; k++)
    fold[k] = nodes[k]->ia[0];
  Node **prod = mc_malloc(sizeof(Node *) * (size_t)(g->ntensors + 1));
  int *slot = mc_malloc(sizeof(int) * (size_t)(g->ntensors + 1));
  for (int i = 0; i < g->ntensors; i++) {
    prod[i] = g->tensors[i]->producer;
    slot[i] = g->tensors[i]->producer_slot;
  }
  pass_fusion(g, &pc);
  MemFigures mf = pass_memplan_plan(g, a->rows, a->cfg->unroll, sizeof(float), 0, NULL);
  memcpy(g->nodes, nodes, sizeof(Node *) * (size_t)nn);
  g->nnodes = nn;
  for (int k = 0; k < nn; k++)
    if (nodes[k]->op == OP_GROUPED_MATMUL_DW) nodes[k]->ia[0] = fold[k];
  for (int i = 0; i < g->ntensors; i++) {
    g->tensors[i]->producer = prod[i];
    g->tensors[i]->producer_slot = slot[i];
  }
  mc_free(fold);
  mc_free(nodes);
  mc_free(prod);
  mc_free(slot);
  return mf;
}

/* Applies the selected segments in model order; returns the planned bytes of one
 * device (its rows, expert-row tensors widened x P), after fusion. */
static double apply_set(Auto *a, const bool *sel) {
  undo_all(a);
  for (int i = 0; i < a->nseg; i++)
    if (sel[i] && apply(a->g, &a->segs[i], a->depth, &a->stack[a->depth])) a->depth++;
  int nt = a->g->ntensors;
  a->g->expert_headroom = a->cfg->expert_headroom; /* as bind sets it: the rows sized alike */
  Type *save = plan_device_shapes(a->g, a->dev, a->P, a->cfg->batch, a->cfg->unroll); /* its shapes, as the runtime binds */
  double optim = optim_bytes(a->g, a->cfg);
  MemFigures mf = plan_after_fusion(a);
  MOEC_ASSERT(a->g->ntensors == nt);
  plan_restore_shapes(a->g, save);
  return (double)(mf.persist + mf.arena) + optim;
}

static double budget_of(const Config *cfg) {
  if (cfg->memory_budget > 0) return cfg->memory_budget;
  long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
  return pages > 0 && size > 0 ? (double)pages * (double)size : 1e300;
}

static double clone_flops(const Graph *g, int64_t B, int64_t T) {
  double f = 0;
  for (int k = 0; k < g->nnodes; k++)
    if (g->nodes[k]->recompute_of) f += pass_node_flops(g->nodes[k], B, T);
  return f;
}

/* Chooses the layers of recompute = auto (sel[i]); leaves the graph unchanged. */
static void choose_auto(Auto *a, bool *sel) {
  const double budget = budget_of(a->cfg);
  const int64_t B = a->rows, T = a->cfg->unroll;
  double base = apply_set(a, sel); /* nothing selected */
  if (base <= budget) return;
  double *score = mc_calloc((size_t)a->nseg + 1, sizeof(double));
  int *order = mc_calloc((size_t)a->nseg + 1, sizeof(int));
  int nc = 0;
  for (int i = 0; i < a->nseg; i++) {
    sel[i] = true;
    double with = apply_set(a, sel), flops = clone_flops(a->g, B, T);
    sel[i] = false;
    if (with >= base) continue;
    score[i] = (base - with) / (flops > 0 ? flops : 1);
    int j = nc++;
    while (j > 0 && score[order[j - 1]] < score[i]) { /* insertion: best first, stable */
      order[j] = order[j - 1];
      j--;
    }
    order[j] = i;
  }
  int taken = 0;
  double cost = base;
  while (taken < nc && cost > budget) {
    sel[order[taken++]] = true;
    cost = apply_set(a, sel);
  }
  if (cost > budget) {
    fprintf(stderr,
            "moec: warning: recompute = auto: the plan needs %.1f MiB%s with every layer "
            "that saves memory recomputed, more than memory_budget (%.1f MiB)\n",
            cost / 1048576.0, a->P > 1 ? " per device" : "", budget / 1048576.0);
  } else {
    for (int t = taken - 1; t >= 0; t--) { /* drop what the budget no longer needs */
      sel[order[t]] = false;
      if (apply_set(a, sel) > budget) sel[order[t]] = true;
    }
  }
  undo_all(a);
  mc_free(score);
  mc_free(order);
}

/* ---------------------------------------------------------------- the pass */

void pass_recompute(Graph *g, const PassCtx *ctx) {
  const Config *cfg = ctx->cfg;
  if (!cfg || cfg->recompute == RC_NONE || !g->has_backward) return;
  int nseg = 0;
  Seg *segs = find_segs(g, &nseg);
  bool *sel = mc_calloc((size_t)nseg + 1, sizeof(bool));
  if (cfg->recompute == RC_ALL) {
    for (int i = 0; i < nseg; i++)
      sel[i] = true;
  } else if (cfg->recompute == RC_LIST) {
    for (int i = 0; i < nseg; i++)
      for (int j = 0; j < cfg->n_recompute; j++)
        sel[i] |= !strcmp(segs[i].layer, cfg->recompute_names[j]);
  } else if (cfg->batch > 0 && cfg->unroll > 0) {
    int P = ctx->devices > 1 ? ctx->devices : 1, dev = 0;
    for (int d = 0, most = -1; d < P && g->moe_expert_dev; d++) {
      int n = 0;
      for (int m = 0; m < g->nmoe; m++)
        for (int e = 0; e < g->moe_nexperts[m]; e++)
          n += g->moe_expert_dev[m][e] == d;
      if (n > most) {
        most = n;
        dev = d;
      }
    }
    Auto a = {g,
              cfg,
              segs,
              nseg,
              mc_calloc((size_t)nseg + 1, sizeof(Undo)),
              0,
              P,
              dev,
              (cfg->batch + P - 1) / P,
              ctx->fold_dw};
    choose_auto(&a, sel);
    mc_free(a.stack);
  }
  int id = 0;
  for (int i = 0; i < nseg; i++) {
    Undo u = {0};
    if (sel[i] && apply(g, &segs[i], id, &u)) id++;
    mc_free(u.nodes); /* kept: nothing to undo */
    mc_free(u.red);
    mc_free(u.old_in);
    mc_free(u.marked);
  }
  mc_free(sel);
  mc_free(segs);
}

/* ---------------------------------------------------------------- report */

static int64_t bytes_at(const Tensor *t, int64_t B, int64_t T, size_t elem) {
  return numel_at(t, B, T) * (t->ty.dtype == DT_I32 ? 4 : (int64_t)elem);
}

/* dropped[t] for every original tensor whose copy a (non-copy) backward node reads. */
bool *pass_recompute_dropped(const Graph *g) {
  bool *d = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (!n->backward || n->recompute_of) continue;
    for (int i = 0; i < n->nin; i++) {
      const Tensor *t = n->in[i];
      if (t->producer && t->producer->recompute_of)
        d[t->producer->recompute_of->out[t->producer_slot]->id] = true;
    }
  }
  return d;
}

RecomputeSummary pass_recompute_summary(const Graph *g, int64_t B, int64_t T, size_t elem) {
  RecomputeSummary s = {0};
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->recompute_of) {
      s.nclones++;
      s.flops += pass_node_flops(n, B, T);
      if (n->recompute_seg + 1 > s.nseg) s.nseg = n->recompute_seg + 1;
    } else if (!n->backward) {
      s.fwd_flops += pass_node_flops(n, B, T);
    }
  }
  bool *d = pass_recompute_dropped(g);
  for (int i = 0; i < g->ntensors; i++)
    if (d[i]) s.dropped += bytes_at(g->tensors[i], B, T, elem);
  mc_free(d);
  s.with = pass_memplan_plan(g, B, T, elem, 0, NULL);
  s.without = pass_memplan_plan(g, B, T, elem, MEMPLAN_AS_IF_NO_RECOMPUTE, NULL);
  return s;
}

void pass_recompute_report(const Graph *g, int64_t B, int64_t T, size_t elem, FILE *out) {
  RecomputeSummary s = pass_recompute_summary(g, B, T, elem);
  const double MiB = 1048576.0;
  fprintf(out, "recompute (B=%lld, T=%lld, %s): ", (long long)B, (long long)T,
          elem == 8 ? "f64" : "f32");
  if (!s.nseg) {
    fprintf(out, "nothing; activation arena %.3f MiB\n", (double)s.with.arena / MiB);
    return;
  }
  fprintf(out, "%d segments, %d forward nodes repeated in the backward pass\n", s.nseg, s.nclones);
  bool *d = pass_recompute_dropped(g);
  for (int seg = 0; seg < s.nseg; seg++) {
    const char *layer = "?";
    double fl = 0;
    int nodes = 0;
    int64_t bytes = 0;
    for (int k = 0; k < g->nnodes; k++) {
      const Node *n = g->nodes[k];
      if (!n->recompute_of || n->recompute_seg != seg) continue;
      layer = n->layer ? n->layer : "?";
      fl += pass_node_flops(n, B, T);
      nodes++;
    }
    fprintf(out, "  segment %d  %s: repeats", seg, layer);
    for (int k = 0; k < g->nnodes; k++) {
      const Node *n = g->nodes[k];
      if (n->recompute_of && n->recompute_seg == seg) fprintf(out, " %s", ir_ops[n->op].name);
    }
    fprintf(out, "; drops");
    for (int k = 0; k < g->nnodes; k++) {
      const Node *n = g->nodes[k];
      if (n->backward || n->recompute_seg != seg) continue;
      for (int j = 0; j < n->nout; j++)
        if (d[n->out[j]->id]) {
          fprintf(out, " %s", n->out[j]->name);
          bytes += bytes_at(n->out[j], B, T, elem);
        }
    }
    fprintf(out, " (%.3f MiB); %d nodes, %.4g MFLOP\n", (double)bytes / MiB, nodes, fl / 1e6);
  }
  mc_free(d);
  int64_t saved = s.without.arena - s.with.arena;
  fprintf(out,
          "  kept from forward to backward: %.3f MiB less; activation arena %.3f MiB -> %.3f "
          "MiB (saves %lld bytes, %.3f MiB); peak live %.3f -> %.3f MiB\n",
          (double)s.dropped / MiB, (double)s.without.arena / MiB, (double)s.with.arena / MiB,
          (long long)saved, (double)saved / MiB, (double)s.without.live_max / MiB,
          (double)s.with.live_max / MiB);
  fprintf(out, "  recomputed: %.4g MFLOP a step (%.1f%% of the forward pass's %.4g MFLOP)\n",
          s.flops / 1e6, s.fwd_flops > 0 ? 100.0 * s.flops / s.fwd_flops : 0.0, s.fwd_flops / 1e6);
}
