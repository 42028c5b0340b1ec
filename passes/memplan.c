/* memplan.c: memory planning (docs/memory.md).
 *
 * Liveness over the graph's node order, which is the order the program runs:
 *
 *   persistent  params, inputs and state (tensors no node produces): a region of
 *               their own, laid one after the other; they live across steps. A tensor
 *               that no node produces or reads and that is none of these (a fused
 *               group's value kept in registers) gets no memory.
 *   transient   every produced tensor (activations, gradients, recompute copies):
 *               live from its producer's index to its last reader's. Pinned to the
 *               end of the program when the host reads it after the step (loss, xent,
 *               aux, MoE importance and load, the state's next values, the params'
 *               gradients: the optimizer runs after the program; a sampled softmax's
 *               samples: moec grad writes them; a decoding's encoder values and
 *               logits; a folded grouped_matmul_dw's inputs) or when nothing reads
 *               it (a graph's outputs; the unused outputs of recompute copies and the
 *               originals they replace excepted: those die where they are made).
 *
 * An expert-row tensor sized per step (Tensor.rows_per_step) is transient at its slot's
 * size: its exchange's fair share of the routes x PLAN_ROWS_MARGIN (plan_rows_slot_of);
 * runtime/rows.c moves them all to a region apart (pass_memplan_rows) if a step outgrows
 * that, so no view or in-place output joins one and another tensor.
 *
 * A slice0 whose source only slices read, in disjoint ranges, is a view of the source's
 * bytes (find_views): no bytes of its own, the source alive as long as its views.
 *
 * Lifetimes are closed intervals [def, last] of node indices, so a buffer whose last
 * reader is node k is never reused for node k's own outputs: a kernel's inputs and
 * outputs never alias, but for the views above and an OPF_INPLACE0 node's output, which
 * takes its input 0's bytes when that dies at it (find_views; in the per-step region too).
 * Transient tensors get offsets in one arena: each, in turn, at the best-fitting gap among the
 * tensors already placed whose lifetimes overlap its own; four orders are tried (largest first, by
 * birth, longest-lived first, largest bytes x lifetime first) and the smallest arena kept. Every
 * offset and size is a multiple of 64 bytes. The optimizer's state is optim.c's, not in the plan.
 *
 * The runtime allocates persistent + arena bytes in one block (codegen/lower.c). */
#include <stdlib.h>
#include <string.h>

#include "passes.h"
#include "plan.h"

#define MEM_ALIGN 64
#define MEMPLAN_MAX_BYTES ((int64_t)1 << 60)
/* Above this many transient tensors the four orders' quadratic search (place) gives
 * way to one O(m log m) pass in birth order (place_sweep): compile time stays
 * near-linear for huge graphs (hmoe with thousands of groups). */
#ifndef MEMPLAN_SEARCH_MAX
#define MEMPLAN_SEARCH_MAX 4096
#endif

typedef struct Live {
  int id;
  int def, last; /* node indices; PERSIST for persistent tensors, UNPLANNED when skipped,
                    VIEW for a slice that is a view of its source (find_views) */
  int64_t size;  /* bytes, rounded up to MEM_ALIGN */
  int64_t off;   /* in its region */
  bool host;     /* the host reads it after the program (pinned) */
  bool claimed;  /* persistent, in a concat0's chain: next (-1: the chain's end) follows it */
  bool head;     /* the chain starts here */
  int next;
  int src; /* VIEW: the source's id; its bytes start voff bytes into the source's */
  int64_t voff;
  int64_t rows; /* expert rows sized per step, in the arena: the rows of its slot; else -1 */
} Live;

enum { PERSIST = -1, UNPLANNED = -2, VIEW = -3 };

static int64_t align_up(int64_t x) {
  return (x + MEM_ALIGN - 1) / MEM_ALIGN * MEM_ALIGN;
}

/* t's bytes at (B, T), or for a graph that runs several batch shapes the most of any */
static int64_t tensor_bytes(const Graph *g, const Tensor *t, int64_t B, int64_t T, int64_t elem) {
  int64_t n;
  if (g->nshapes) {
    n = 0;
    for (int i = 0; i < g->nshapes; i++)
      n = MC_MAX(n, ir_numel_at(g, t, g->shapes[i]));
  } else {
    n = ir_numel_bt(t, B, T); /* < 2^51: dies past MOEC_MAX_NUMEL elements */
  }
  return n * (t->ty.dtype == DT_I32 ? 4 : elem);
}

/* A per-step expert-row tensor (Tensor.rows_per_step) in the arena: the rows of its slot,
 * PLAN_ROWS_MARGIN x its exchange's fair share (x per_row), at the bound graph's B, T. */
static int64_t slot_rows(const Graph *g, const Tensor *t) {
  PlanRows r = plan_rows_of(g, t, g->ndev, g->rank, g->B, g->T);
  return plan_rows_slot_of(&r) * r.per_row;
}

/* t's bytes in the arena plan: its type's, or for a per-step tensor its slot's */
static int64_t plan_bytes(const Graph *g, const Tensor *t, int64_t B, int64_t T, int64_t elem,
                          int flags, int64_t *rows) {
  *rows = -1;
  if (!t->rows_per_step || (flags & MEMPLAN_ROWS_PER_STEP) || t->shape[0] <= 0)
    return tensor_bytes(g, t, B, T, elem);
  *rows = slot_rows(g, t);
  return t->numel / t->shape[0] * *rows * (t->ty.dtype == DT_I32 ? 4 : elem);
}

/* What a reader sees: the tensor, or (planning as if there were no recompute) the
 * original output that a recompute copy's output repeats. */
static const Tensor *seen(const Tensor *t, int flags) {
  if ((flags & MEMPLAN_AS_IF_NO_RECOMPUTE) && t->producer && t->producer->recompute_of)
    return t->producer->recompute_of->out[t->producer_slot];
  return t;
}

static void pin(Live *L, const Tensor *t, int end) {
  if (t && L[t->id].def >= 0) L[t->id].last = end, L[t->id].host = true;
}

static bool is_bridge(const Graph *g, const Tensor *t) {
  for (int i = 0; i < g->nbridge; i++)
    if (g->bridge[i] == t) return true;
  return false;
}

/* ---- slices as views ----
 * A slice0 of rows [lo, lo + len) of a tensor with constant dims is a contiguous byte
 * range of it, so its output can be those bytes (no copy, no bytes of its own) where:
 * every reader of the source is such a slice, their ranges are disjoint, the host does not
 * read the source, both live in the arena, and the range starts MEM_ALIGN-aligned. The
 * source then lives as long as its longest-lived view. Nothing writes either meanwhile: a
 * node writes only its outputs, and the host (the optimizer, all-reduces of gradients)
 * writes only views' bytes, which no other reader shares. The slice's kernel finds its
 * rows in place and copies nothing (runtime/kernels_moe.inc). An hmoe's expert weight
 * gradients are such slices of the grouped_matmul_dw output (ir/grads_moe.c grad_concat0). */
typedef struct Slice {
  int src, k;     /* the source tensor's id, the slice's node */
  int64_t lo, hi; /* its bytes in the source */
} Slice;

static int by_src(const void *a, const void *b) {
  const Slice *x = a, *y = b;
  if (x->src != y->src) return x->src < y->src ? -1 : 1;
  if (x->lo != y->lo) return x->lo < y->lo ? -1 : 1;
  return (x->hi > y->hi) - (x->hi < y->hi);
}

static void find_views(const Graph *g, int64_t B, int64_t T, int64_t elem, int flags,
                       const int *pos, Live *L) {
  const bool as_if = flags & MEMPLAN_AS_IF_NO_RECOMPUTE;
  const bool rows = flags & MEMPLAN_ROWS_PER_STEP; /* slices: in the arena only */
  int *readers = mc_calloc((size_t)g->ntensors + 1, sizeof(int));
  Slice *s = mc_malloc((size_t)(g->nnodes + 1) * sizeof(Slice));
  int ns = 0;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->recompute_of && as_if) continue;
    for (int i = 0; i < n->nin; i++)
      readers[seen(n->in[i], flags)->id]++;
    if (n->op != OP_SLICE0 || n->recompute_of || rows) continue;
    const Tensor *x = seen(n->in[0], flags), *v = n->out[0];
    if (L[x->id].def < 0 || L[v->id].def < 0 || L[x->id].host || !x->producer ||
        x->producer->op == OP_SLICE0 ||       /* a view of a view: left a copy */
        x->rows_per_step || v->rows_per_step) /* their slots may move apart (rows.c) */
      continue;
    bool fixed = x->ty.rank >= 1 && x->ty.dim[0].c > 0;
    for (int d = 0; d < x->ty.rank && fixed; d++)
      fixed = dim_is_const(x->ty.dim[d]);
    if (!fixed) continue;
    int64_t row = tensor_bytes(g, x, B, T, elem) / x->ty.dim[0].c;
    if (n->ia[0] * row % MEM_ALIGN) continue;
    s[ns++] = (Slice){x->id, k, n->ia[0] * row, (n->ia[0] + n->ia[1]) * row};
  }
  qsort(s, (size_t)ns, sizeof(Slice), by_src);
  for (int i = 0, j; i < ns; i = j) {
    bool ok = true;
    for (j = i + 1; j < ns && s[j].src == s[i].src; j++)
      ok &= s[j].lo >= s[j - 1].hi;
    if (!ok || readers[s[i].src] != j - i) continue;
    Live *x = &L[s[i].src];
    for (int a = i; a < j; a++) {
      Live *v = &L[g->nodes[s[a].k]->out[0]->id];
      x->last = MC_MAX(x->last, v->last);
      v->def = v->last = VIEW;
      v->src = s[a].src;
      v->voff = s[a].lo;
    }
  }
  mc_free(s);
  mc_free(readers);
  /* in place: an OPF_INPLACE0 node's output takes its input 0's bytes when that dies at
   * the node (an activation's backward over the incoming gradient); the input then lives
   * as long as the output. Not over a view, nor in a fused group (its own kernel). */
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (!(ir_ops[n->op].flags & OPF_INPLACE0) || n->recompute_of) continue;
    const Tensor *x = seen(n->in[0], flags), *y = n->out[0];
    Live *lx = &L[x->id], *ly = &L[y->id];
    if (lx->def < 0 || ly->def < 0 || lx->last != pos[k] || lx->host ||
        x->rows_per_step != y->rows_per_step || /* both in one region (rows.c) */
        x->ty.dtype != y->ty.dtype || x->ty.rank != y->ty.rank)
      continue;
    bool same = true;
    for (int d = 0; d < x->ty.rank; d++)
      same &= dim_eq(x->ty.dim[d], y->ty.dim[d]);
    if (!same) continue;
    lx->last = ly->last;
    ly->def = ly->last = VIEW;
    ly->src = x->id;
    ly->voff = 0;
  }
}

/* Concatenated parameters: a concat0 of persistent tensors (an hmoe's groups' expert
 * weights, stacked) is a view of them where the persistent region lays them one after
 * the other (a chain: pass_memplan_plan follows Live.next), each but the last a multiple
 * of MEM_ALIGN bytes. A tensor in two concats keeps the first's chain; the second is a
 * view only if its list runs along that chain (a recompute copy's does). Nothing writes
 * them while the program runs (parameters change after it, in the optimizer; inputs and
 * state before it), and nothing writes the view (in-place nodes take no view's bytes). */
static void find_concat_views(const Graph *g, int64_t B, int64_t T, int64_t elem, int flags,
                              Live *L) {
  if (flags & MEMPLAN_ROWS_PER_STEP) return;
  int *mark = mc_calloc((size_t)g->ntensors + 1, sizeof(int));
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op != OP_CONCAT0 || (n->recompute_of && (flags & MEMPLAN_AS_IF_NO_RECOMPUTE))) continue;
    Live *ly = &L[n->out[0]->id];
    if (ly->def < 0 || ly->host || n->out[0]->rows_per_step) continue;
    bool ok = true, fresh = true, along = true;
    for (int i = 0; i < n->nin && ok; i++) {
      const Tensor *x = n->in[i];
      const Live *lx = &L[x->id];
      ok = lx->def == PERSIST && mark[x->id] != k + 1 && x->ty.dtype == n->out[0]->ty.dtype &&
           (i == n->nin - 1 || tensor_bytes(g, x, B, T, elem) == lx->size);
      mark[x->id] = k + 1; /* twice in one list: no view */
      fresh &= !lx->claimed;
      along &= lx->claimed && (i == n->nin - 1 || lx->next == n->in[i + 1]->id);
    }
    if (!ok || (!fresh && !along)) continue;
    if (fresh) {
      for (int i = 0; i < n->nin; i++) {
        L[n->in[i]->id].claimed = true;
        L[n->in[i]->id].next = i + 1 < n->nin ? n->in[i + 1]->id : -1;
      }
      L[n->in[0]->id].head = true;
    }
    ly->def = ly->last = VIEW;
    ly->src = n->in[0]->id;
    ly->voff = 0;
  }
  mc_free(mark);
}

static int view_root(const Live *L, int i) {
  while (L[i].def == VIEW)
    i = L[i].src;
  return i;
}

/* A view's offset in its region: its source's (itself perhaps a view) plus its own. */
static int64_t view_off(const Live *L, int i) {
  int64_t off = 0;
  for (; L[i].def == VIEW; i = L[i].src)
    off += L[i].voff;
  return off + L[i].off;
}

/* Fills L (g->ntensors entries) with every tensor's lifetime and aligned size. */
static void lifetimes(const Graph *g, int64_t B, int64_t T, int64_t elem, int flags, Live *L) {
  const bool as_if = flags & MEMPLAN_AS_IF_NO_RECOMPUTE;
  /* node k's index in the program planned: as if there were no recompute, the copies
   * are not counted, so the lifetimes (and the plan) are those of recompute = none */
  int *pos = mc_calloc((size_t)g->nnodes + 1, sizeof(int)), end = 0;
  for (int k = 0; k < g->nnodes; k++)
    pos[k] = end, end += !(as_if && g->nodes[k]->recompute_of);
  bool *read = mc_calloc((size_t)g->ntensors + 1, sizeof(bool));
  bool *repeated = mc_calloc((size_t)g->ntensors + 1, sizeof(bool)); /* has a recompute copy */
  int64_t total = 0; /* every offset and sum below is at most this */
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    int c = t->producer ? UNPLANNED : PERSIST;
    int64_t rows, bytes = plan_bytes(g, t, B, T, elem, flags, &rows);
    L[i] = (Live){.id = i,
                  .def = c,
                  .last = c,
                  .size = align_up(bytes),
                  .off = -1,
                  .src = -1,
                  .next = -1,
                  .rows = rows};
    if (!mc_add_ok(total, L[i].size, &total) || total > MEMPLAN_MAX_BYTES)
      mc_die("the model is too large to plan: its tensors hold more than %lld bytes (2^60) with "
             "B = %lld, T = %lld",
             (long long)MEMPLAN_MAX_BYTES, (long long)B, (long long)T);
  }
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->recompute_of && as_if) continue;
    for (int j = 0; j < n->nout; j++)
      L[n->out[j]->id].def = L[n->out[j]->id].last = pos[k];
    if (n->recompute_of)
      for (int j = 0; j < n->nout; j++)
        repeated[n->recompute_of->out[j]->id] = true;
    for (int i = 0; i < n->nin; i++) {
      const Tensor *t = seen(n->in[i], flags);
      read[t->id] = true;
      if (L[t->id].def >= 0 && L[t->id].last < pos[k]) L[t->id].last = pos[k];
    }
  }
  for (int i = 0; i < g->ntensors; i++) {
    const Tensor *t = g->tensors[i];
    if (L[i].def >= 0 && !read[i] && !t->producer->recompute_of && !repeated[i])
      L[i].last = end; /* an output of the graph */
    /* a value a fused group keeps in registers (or a fold left unused): produced and read
     * by no node, and not a parameter, input or state, it needs no memory */
    if (!t->producer && !read[i] && t->kind != TK_PARAM && t->kind != TK_INPUT &&
        t->kind != TK_STATE && !is_bridge(g, t))
      L[i].def = L[i].last = UNPLANNED;
  }
  /* the per-step region's plan (runtime/rows.c, when they outgrow their slots): those only;
   * or the arena without them */
  for (int i = 0; i < g->ntensors && (flags & (MEMPLAN_ROWS_PER_STEP | MEMPLAN_ROWS_APART)); i++)
    if (g->tensors[i]->rows_per_step != !!(flags & MEMPLAN_ROWS_PER_STEP))
      L[i].def = L[i].def == PERSIST ? PERSIST : UNPLANNED;
  pin(L, g->loss, end);
  pin(L, g->xent, end);
  pin(L, g->aux, end);
  for (int i = 0; i < g->nmoe; i++) {
    pin(L, g->moe_importance ? g->moe_importance[i] : NULL, end);
    pin(L, g->moe_load ? g->moe_load[i] : NULL, end);
  }
  for (int i = 0; i < g->nstates; i++)
    pin(L, g->states[i].next, end);
  for (int i = 0; i < g->nparams; i++)
    pin(L, g->params[i]->grad, end);
  for (int i = 0; i < g->nbridge; i++) /* decoding: the encoder's values, the logits */
    pin(L, g->bridge[i], end);
  pin(L, g->logits, end);
  for (int k = 0; k < g->nnodes; k++) /* a sampled softmax's samples: moec grad writes them */
    if (g->nodes[k]->op == OP_SAMPLED_XENT && !g->nodes[k]->recompute_of)
      for (int j = 2; j < 4; j++)
        pin(L, g->nodes[k]->out[j], end);
  for (int k = 0; k < g->nnodes; k++) /* a folded dW's xs, g and offsets: the optimizer's */
    if (g->nodes[k]->op == OP_GROUPED_MATMUL_DW && g->nodes[k]->ia[0])
      for (int j = 0; j < 3; j++)
        pin(L, seen(g->nodes[k]->in[j], flags), end);
  find_views(g, B, T, elem, flags, pos, L);
  find_concat_views(g, B, T, elem, flags, L);
  mc_free(pos);
  mc_free(read);
  mc_free(repeated);
}

static int by_size(const void *a, const void *b) {
  const Live *x = a, *y = b;
  if (x->size != y->size) return x->size > y->size ? -1 : 1;
  if (x->def != y->def) return x->def < y->def ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

static int by_birth(const void *a, const void *b) {
  const Live *x = a, *y = b;
  if (x->def != y->def) return x->def < y->def ? -1 : 1;
  if (x->size != y->size) return x->size > y->size ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* longest-lived first, then largest: the long-lived tensors settle at the bottom */
static int by_length(const void *a, const void *b) {
  const Live *x = a, *y = b;
  int lx = x->last - x->def, ly = y->last - y->def;
  if (lx != ly) return lx > ly ? -1 : 1;
  return by_size(a, b);
}

/* largest bytes x lifetime first */
static int by_area(const void *a, const void *b) {
  const Live *x = a, *y = b;
  double ax = (double)x->size * (x->last - x->def + 1),
         ay = (double)y->size * (y->last - y->def + 1);
  if (ax != ay) return ax > ay ? -1 : 1;
  return by_size(a, b);
}

static bool overlap_in_time(const Live *a, const Live *b) {
  return a->def <= b->last && b->def <= a->last;
}

/* The bytes alive at each node as a difference array over the planned tensors' lifetimes
 * (delta[k]: what comes alive at node k less what died at k - 1; nnodes + 2 entries). */
static int64_t *live_deltas(const Graph *g, const Live *L) {
  int64_t *delta = mc_calloc((size_t)g->nnodes + 2, sizeof(int64_t));
  for (int i = 0; i < g->ntensors; i++)
    if (L[i].def >= 0) {
      delta[L[i].def] += L[i].size;
      delta[L[i].last + 1] -= L[i].size;
    }
  return delta;
}

/* The first node where the most bytes are alive (nnodes: the end), those bytes in *most. */
static int live_peak(const Graph *g, const int64_t *delta, int64_t *most) {
  int64_t live = 0;
  int at = 0;
  *most = -1;
  for (int k = 0; k <= g->nnodes; k++) {
    live += delta[k];
    if (live > *most) {
      *most = live;
      at = k;
    }
  }
  return at;
}

/* MOEC_DEBUG=memplan: the node where the most bytes are alive, and what they are. */
static void trace(const Graph *g, const Live *L, const int64_t *delta, int flags) {
  int64_t best;
  int at = live_peak(g, delta, &best);
  fprintf(stderr, "memplan%s: %lld bytes alive at node %d (%s)\n",
          flags & MEMPLAN_AS_IF_NO_RECOMPUTE ? " (as if no recompute)" : "", (long long)best, at,
          flags & MEMPLAN_AS_IF_NO_RECOMPUTE ? "counting no copies"
          : at < g->nnodes                   ? ir_ops[g->nodes[at]->op].name
                                             : "end");
  bool all = mc_debug.memplan_all;
  for (int i = 0; i < g->ntensors; i++)
    if (all || (L[i].def >= 0 && L[i].def <= at && at <= L[i].last))
      fprintf(stderr, "  %-32s %10lld  [%d, %d]\n", g->tensors[i]->name, (long long)L[i].size,
              L[i].def, L[i].last);
}

/* Places the m tensors in order (sorted by cmp), each at the best-fitting gap among
 * the already placed ones alive at the same time; returns the arena's size. The placed
 * ones are kept by offset (ties: placed first, first) in byoff[m], so each step is one
 * scan over them, O(m) with no sort: O(m^2) in all. */
static int64_t place(Live *order, int m, int (*cmp)(const void *, const void *), int *byoff) {
  int64_t arena = 0;
  qsort(order, (size_t)m, sizeof(Live), cmp);
  for (int i = 0; i < m; i++) {
    Live *t = &order[i];
    int64_t cur = 0, best = -1, best_gap = INT64_MAX;
    for (int j = 0; j < i; j++) {
      const Live *u = &order[byoff[j]];
      if (!overlap_in_time(t, u)) continue;
      int64_t gap = u->off - cur;
      if (gap >= t->size && gap < best_gap) {
        best = cur;
        best_gap = gap;
      }
      if (u->off + u->size > cur) cur = u->off + u->size;
    }
    t->off = best >= 0 ? best : cur;
    if (t->off + t->size > arena) arena = t->off + t->size;
    int at = i; /* after every placed one at an offset <= t's */
    while (at > 0 && order[byoff[at - 1]].off > t->off)
      at--;
    memmove(byoff + at + 1, byoff + at, sizeof(int) * (size_t)(i - at));
    byoff[at] = i;
  }
  return arena;
}

/* ---- ordered sets for large graphs: a treap keyed by (a, b), in one array ----
 * Priorities hash the node's index, so plans are deterministic. */
typedef struct TNode {
  int64_t a, b;
  int l, r;
  uint64_t pri;
} TNode;

typedef struct Treap {
  TNode *n;
  int root, used, cap;
  int *free; /* erased nodes, reused */
  int nfree;
} Treap;

static bool key_lt(int64_t a1, int64_t b1, int64_t a2, int64_t b2) {
  return a1 < a2 || (a1 == a2 && b1 < b2);
}

/* t split into < (a, b) and >= (a, b) */
static void tr_split(Treap *T, int t, int64_t a, int64_t b, int *lo, int *hi) {
  if (t < 0) {
    *lo = *hi = -1;
    return;
  }
  if (key_lt(T->n[t].a, T->n[t].b, a, b)) {
    tr_split(T, T->n[t].r, a, b, &T->n[t].r, hi);
    *lo = t;
  } else {
    tr_split(T, T->n[t].l, a, b, lo, &T->n[t].l);
    *hi = t;
  }
}

static int tr_merge(Treap *T, int x, int y) {
  if (x < 0) return y;
  if (y < 0) return x;
  if (T->n[x].pri > T->n[y].pri) {
    T->n[x].r = tr_merge(T, T->n[x].r, y);
    return x;
  }
  T->n[y].l = tr_merge(T, x, T->n[y].l);
  return y;
}

static void tr_insert(Treap *T, int64_t a, int64_t b) {
  int k;
  if (T->nfree) {
    k = T->free[--T->nfree];
  } else {
    if (T->used == T->cap) {
      T->cap = T->cap ? 2 * T->cap : 256;
      T->n = mc_realloc(T->n, (size_t)T->cap * sizeof(TNode));
      T->free = mc_realloc(T->free, (size_t)T->cap * sizeof(int));
    }
    k = T->used++;
  }
  T->n[k] = (TNode){a, b, -1, -1, mc_hash64((uint64_t)k)};
  int lo, hi;
  tr_split(T, T->root, a, b, &lo, &hi);
  T->root = tr_merge(T, tr_merge(T, lo, k), hi);
}

static void tr_erase(Treap *T, int64_t a, int64_t b) {
  int lo, mid, hi;
  tr_split(T, T->root, a, b, &lo, &hi);
  tr_split(T, hi, a, b + 1, &mid, &hi); /* mid: the node (a, b) */
  MOEC_ASSERT(mid >= 0 && T->n[mid].l < 0 && T->n[mid].r < 0);
  T->free[T->nfree++] = mid;
  T->root = tr_merge(T, lo, hi);
}

/* The node with the smallest key >= (a, b) (ge) or > (a, b) (!ge), or the largest
 * key < (a, b) (below); -1 if none. */
static int tr_above(const Treap *T, int64_t a, int64_t b, bool ge) {
  int best = -1;
  for (int t = T->root; t >= 0;) {
    bool ok = ge ? !key_lt(T->n[t].a, T->n[t].b, a, b) : key_lt(a, b, T->n[t].a, T->n[t].b);
    if (ok)
      best = t, t = T->n[t].l;
    else
      t = T->n[t].r;
  }
  return best;
}

static int tr_below(const Treap *T, int64_t a, int64_t b) {
  int best = -1;
  for (int t = T->root; t >= 0;) {
    if (key_lt(T->n[t].a, T->n[t].b, a, b))
      best = t, t = T->n[t].r;
    else
      t = T->n[t].l;
  }
  return best;
}

static int tr_last(const Treap *T) {
  int t = T->root;
  while (t >= 0 && T->n[t].r >= 0)
    t = T->n[t].r;
  return t;
}

static void tr_free(Treap *T) {
  mc_free(T->n);
  mc_free(T->free);
}

/* Min-heap of order[] indices by last use: the live tensors, to expire in time. */
static void heap_push(int *h, int *n, const Live *o, int x) {
  int i = (*n)++;
  h[i] = x;
  while (i > 0 && o[h[(i - 1) / 2]].last > o[h[i]].last) {
    int p = (i - 1) / 2, t = h[p];
    h[p] = h[i];
    h[i] = t;
    i = p;
  }
}

static int heap_pop(int *h, int *n, const Live *o) {
  int top = h[0];
  h[0] = h[--*n];
  for (int i = 0;;) {
    int l = 2 * i + 1, r = l + 1, m = i;
    if (l < *n && o[h[l]].last < o[h[m]].last) m = l;
    if (r < *n && o[h[r]].last < o[h[m]].last) m = r;
    if (m == i) break;
    int t = h[m];
    h[m] = h[i];
    h[i] = t;
    i = m;
  }
  return top;
}

/* place() in birth order in O(m log m), for graphs too large for place()'s
 * quadratic search: in that order the tensors that overlap t in time and are
 * placed already are exactly those alive at t's birth, so this is an allocator run
 * over time: the live blocks by offset (blocks), the holes between them by (size,
 * offset) (gaps), best fit = the smallest hole that holds t, lowest first, else the
 * top. The same offsets as place(order, m, by_birth) for tensors of non-zero size;
 * zero-size tensors (a device's empty expert shard) take offset 0. */
static int64_t place_sweep(Live *order, int m) {
  qsort(order, (size_t)m, sizeof(Live), by_birth);
  Treap blocks = {.root = -1}, gaps = {.root = -1};
  int *heap = mc_malloc((size_t)(m + 1) * sizeof(int)), nh = 0;
  int64_t arena = 0;
  for (int i = 0; i < m; i++) {
    Live *t = &order[i];
    while (nh && order[heap[0]].last < t->def) { /* free what died before t is born */
      int k = heap_pop(heap, &nh, order);
      const Live *d = &order[k];
      int p = tr_below(&blocks, d->off, k), q = tr_above(&blocks, d->off, k, false);
      int64_t phi = p >= 0 ? blocks.n[p].a + order[blocks.n[p].b].size : 0;
      int64_t dhi = d->off + d->size;
      if (d->off > phi) tr_erase(&gaps, d->off - phi, phi);
      if (q >= 0) {
        int64_t qlo = blocks.n[q].a;
        if (qlo > dhi) tr_erase(&gaps, qlo - dhi, dhi);
        tr_insert(&gaps, qlo - phi, phi);
      }
      tr_erase(&blocks, d->off, k);
    }
    if (t->size == 0) {
      t->off = 0;
      continue;
    }
    int g = tr_above(&gaps, t->size, INT64_MIN, true);
    if (g >= 0) { /* the best-fitting hole [a, a + len): t at its start */
      int64_t len = gaps.n[g].a, a = gaps.n[g].b;
      tr_erase(&gaps, len, a);
      if (len > t->size) tr_insert(&gaps, len - t->size, a + t->size);
      t->off = a;
    } else { /* the top: above every live block */
      int top = tr_last(&blocks);
      t->off = top >= 0 ? blocks.n[top].a + order[blocks.n[top].b].size : 0;
    }
    /* blocks hold (offset, index in order); ids are unique, and so are offsets of
     * live non-empty blocks, so the index can stand in for the id in the key */
    tr_insert(&blocks, t->off, i);
    heap_push(heap, &nh, order, i);
    if (t->off + t->size > arena) arena = t->off + t->size;
  }
  mc_free(heap);
  tr_free(&blocks);
  tr_free(&gaps);
  return arena;
}

/* The smallest of the four orders' arenas (or the sweep's, for huge graphs); the
 * offsets in order[] are that plan's. */
static int64_t place_best(Live *order, int m, int *sp) {
  int (*const cmps[])(const void *, const void *) = {by_size, by_birth, by_length, by_area};
  int best = 0;
  int64_t arena[4];
  const char *env = getenv("MOEC_MEMPLAN_SEARCH_MAX"); /* tests: compare the two */
  if (m > (env ? atoi(env) : MEMPLAN_SEARCH_MAX)) return place_sweep(order, m);
  for (int c = 0; c < 4; c++) {
    arena[c] = place(order, m, cmps[c], sp);
    if (arena[c] < arena[best]) best = c;
  }
  return best == 3 ? arena[3] : place(order, m, cmps[best], sp); /* the last one stands */
}

MemFigures pass_memplan_plan(const Graph *g, int64_t B, int64_t T, size_t elem, int flags,
                             int64_t *offsets) {
  MOEC_ASSERT(B > 0 && T > 0 && (elem == 4 || elem == 8));
  MemFigures mf = {.B = B, .T = T, .elem = (int64_t)elem};
  int nt = g->ntensors;
  Live *L = mc_calloc((size_t)nt + 1, sizeof(Live));
  lifetimes(g, B, T, (int64_t)elem, flags, L);
  /* persistent region, in tensor order */
  for (int i = 0; i < nt && !(flags & MEMPLAN_ROWS_PER_STEP); i++)
    if (L[i].def == PERSIST && L[i].off < 0 && (!L[i].claimed || L[i].head))
      for (int j = i; j >= 0; j = L[j].claimed ? L[j].next : -1) { /* a concat's chain */
        L[j].off = mf.persist;
        mf.persist += L[j].size;
      }
  /* the arena: two greedy orders, keep the smaller */
  Live *order = mc_calloc((size_t)nt + 1, sizeof(Live));
  int *sp = mc_calloc((size_t)nt + 1, sizeof(int));
  int m = 0;
  for (int i = 0; i < nt; i++)
    if (L[i].def >= 0) order[m++] = L[i];
  mf.arena = place_best(order, m, sp);
  for (int i = 0; i < m; i++)
    L[order[i].id].off = order[i].off;
  for (int i = 0; i < nt; i++)
    if (L[i].def == VIEW) L[i].off = view_off(L, i);
  /* the lower bound: most bytes alive at one node */
  int64_t *delta = live_deltas(g, L);
  live_peak(g, delta, &mf.live_max);
  if (mc_debug.memplan) trace(g, L, delta, flags);
  if (offsets)
    for (int i = 0; i < nt; i++)
      offsets[i] = L[i].def == PERSIST || (L[i].def == VIEW && L[view_root(L, i)].def == PERSIST)
                       ? L[i].off
                   : L[i].def >= 0 || L[i].def == VIEW ? mf.persist + L[i].off
                                                       : -1;
  mc_free(delta);
  mc_free(sp);
  mc_free(order);
  mc_free(L);
  return mf;
}

/* The largest tensors alive at the arena's peak (moec plan --memory): one line each, largest
 * first, with what makes it (op, layer), its shape and its lifetime in node indices. */
static int by_size_desc(const void *a, const void *b) {
  const Live *x = a, *y = b;
  if (x->size != y->size) return x->size > y->size ? -1 : 1;
  return (x->id > y->id) - (x->id < y->id);
}

int64_t pass_memplan_top(const Graph *g, int top, FILE *out) {
  MOEC_ASSERT(g->B > 0 && g->T > 0);
  int nt = g->ntensors;
  Live *L = mc_calloc((size_t)nt + 1, sizeof(Live));
  lifetimes(g, g->B, g->T, sizeof(float), 0, L);
  int64_t *delta = live_deltas(g, L), best;
  int at = live_peak(g, delta, &best), n = 0;
  Live *alive = mc_malloc((size_t)(nt + 1) * sizeof(Live));
  for (int i = 0; i < nt; i++)
    if (L[i].def >= 0 && L[i].def <= at && at <= L[i].last) alive[n++] = L[i];
  qsort(alive, (size_t)n, sizeof(Live), by_size_desc);
  const Node *pk = at < g->nnodes ? g->nodes[at] : NULL;
  fprintf(out, "  at node %d (%s%s%s) %.3f MiB are alive in %d tensors; the largest %d:\n", at,
          pk ? ir_ops[pk->op].name : "the end", pk && pk->layer ? ", layer " : "",
          pk && pk->layer ? pk->layer : "", (double)best / 1048576.0, n, MC_MIN(top, n));
  fprintf(out, "    %-34s %-22s %-24s %11s  %s\n", "tensor", "made by", "shape", "MiB", "nodes");
  for (int i = 0; i < n && i < top; i++) {
    const Tensor *t = g->tensors[alive[i].id];
    char shape[96];
    int w = snprintf(shape, sizeof shape, "[");
    for (int d = 0; d < t->ty.rank && w < (int)sizeof shape - 24; d++)
      w += snprintf(shape + w, sizeof shape - (size_t)w, "%s%lld", d ? "," : "",
                    (long long)(alive[i].rows >= 0 && d == 0 ? alive[i].rows : t->shape[d]));
    snprintf(shape + w, sizeof shape - (size_t)w, "]%s", alive[i].rows >= 0 ? " rows" : "");
    fprintf(out, "    %-34s %-22s %-24s %11.3f  %d..%d\n", t->name,
            t->producer ? ir_ops[t->producer->op].name : "-", shape,
            (double)alive[i].size / 1048576.0, alive[i].def, alive[i].last);
  }
  mc_free(alive);
  mc_free(delta);
  mc_free(L);
  return best;
}

static int by_offset(const void *a, const void *b) {
  const Live *x = a, *y = b;
  return x->off < y->off ? -1 : x->off > y->off ? 1 : (x->id > y->id) - (x->id < y->id);
}

long pass_memplan_validate(const Graph *g) {
  const MemFigures *mf = &g->mem;
  MOEC_ASSERT(mf->B > 0 && mf->T > 0);
  int nt = g->ntensors;
  Live *L = mc_calloc((size_t)nt + 1, sizeof(Live));
  lifetimes(g, mf->B, mf->T, mf->elem, 0, L);
  /* every tensor in its region; L[].off and .size: its exact bytes [off, off + size) */
  Live *per = mc_malloc((size_t)(nt + 1) * sizeof(Live)),
       *tr = mc_malloc((size_t)(nt + 1) * sizeof(Live));
  int np = 0, ntr = 0;
  for (int i = 0; i < nt; i++) {
    const Tensor *a = g->tensors[i];
    if (L[i].def == UNPLANNED) continue; /* no memory */
    if (L[i].def == VIEW) { /* its source's bytes, checked with the source's lifetime */
      if (a->mem_offset != g->tensors[L[i].src]->mem_offset + L[i].voff)
        mc_fatal("memory plan: '%s' is not at its bytes of '%s', which it is a view of", a->name,
                 g->tensors[L[i].src]->name);
      continue;
    }
    int64_t rows, lo = a->mem_offset, hi = lo + plan_bytes(g, a, mf->B, mf->T, mf->elem, 0, &rows);
    bool persist = L[i].def == PERSIST;
    if (lo < 0 || lo % MEM_ALIGN != 0 || (persist ? hi > mf->persist : lo < mf->persist) ||
        hi > mf->persist + mf->arena)
      mc_fatal("memory plan: tensor '%s' at [%lld, %lld) lies outside its region (persistent "
               "%lld bytes, arena %lld) or is not aligned",
               a->name, (long long)lo, (long long)hi, (long long)mf->persist, (long long)mf->arena);
    L[i].off = lo;
    L[i].size = hi - lo;
    if (persist)
      per[np++] = L[i];
    else
      tr[ntr++] = L[i];
  }
  /* persistent tensors all live at once: sorted by offset, each ends before the next */
  long pairs = (long)np * (np - 1) / 2;
  qsort(per, (size_t)np, sizeof(Live), by_offset);
  int64_t end = 0;
  const Live *last = NULL;
  for (int i = 0; i < np; i++) {
    if (per[i].size == 0) continue;
    if (last && per[i].off < end)
      mc_fatal("memory plan: '%s' and '%s' (persistent) share memory", g->tensors[last->id]->name,
               g->tensors[per[i].id]->name);
    end = per[i].off + per[i].size;
    last = &per[i];
  }
  /* transient ones over time (birth order): live blocks by offset; a newborn block
   * must not reach into its neighbours. pairs: the tensors alive at each birth. */
  qsort(tr, (size_t)ntr, sizeof(Live), by_birth);
  Treap blocks = {.root = -1};
  int *heap = mc_malloc((size_t)(ntr + 1) * sizeof(int)), nh = 0, live = 0;
  for (int i = 0; i < ntr; i++) {
    const Live *t = &tr[i];
    while (nh && tr[heap[0]].last < t->def) {
      int k = heap_pop(heap, &nh, tr);
      live--;
      if (tr[k].size) tr_erase(&blocks, tr[k].off, k);
    }
    pairs += live;
    live++;
    heap_push(heap, &nh, tr, i);
    if (t->size == 0) continue;
    int p = tr_below(&blocks, t->off, i), q = tr_above(&blocks, t->off, i, false);
    int bad = p >= 0 && tr[blocks.n[p].b].off + tr[blocks.n[p].b].size > t->off ? blocks.n[p].b
              : q >= 0 && blocks.n[q].a < t->off + t->size                      ? blocks.n[q].b
                                                                                : -1;
    if (bad >= 0) {
      const Live *o = &tr[bad];
      mc_fatal("memory plan: '%s' [%lld, %lld) (nodes %d..%d) and '%s' [%lld, %lld) (nodes "
               "%d..%d) are alive at once and share memory",
               g->tensors[o->id]->name, (long long)o->off, (long long)(o->off + o->size), o->def,
               o->last, g->tensors[t->id]->name, (long long)t->off, (long long)(t->off + t->size),
               t->def, t->last);
    }
    tr_insert(&blocks, t->off, i);
  }
  mc_free(heap);
  tr_free(&blocks);
  mc_free(per);
  mc_free(tr);
  mc_free(L);
  return pairs;
}

bool pass_memplan_view(const Graph *g, const Node *n) {
  if (g->mem.elem <= 0 || (n->op != OP_SLICE0 && n->op != OP_CONCAT0) || n->nin < 1 ||
      n->nout < 1)
    return false;
  const Tensor *x = n->in[0], *y = n->out[0];
  if (x->mem_offset < 0 || y->mem_offset < 0 || x->rows_per_step || y->rows_per_step)
    return false;
  if (n->op == OP_CONCAT0) return y->mem_offset == x->mem_offset; /* find_concat_views */
  int64_t row = x->ty.rank >= 1 && x->shape[0] > 0 ? x->numel / x->shape[0] : 0;
  return y->numel > 0 && y->mem_offset == x->mem_offset + n->ia[0] * row * g->mem.elem;
}

static MemFigures assign(Graph *g, int64_t B, int64_t T, size_t elem) {
  int64_t *off = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
  g->mem = pass_memplan_plan(g, B, T, elem, 0, off);
  for (int i = 0; i < g->ntensors; i++)
    g->tensors[i]->mem_offset = off[i];
  mc_free(off);
#ifndef NDEBUG
  pass_memplan_validate(g); /* always on outside release builds: O(tensors log tensors) */
#endif
  return g->mem;
}

MemFigures pass_memplan_assign(Graph *g, size_t elem) {
  MOEC_ASSERT(g->B > 0 && g->T > 0);
  return assign(g, g->B, g->T, elem);
}

void pass_memplan(Graph *g, const PassCtx *ctx) {
  MOEC_ASSERT(g->B > 0 && g->T > 0); /* after the bind pass */
  assign(g, g->B, g->T, ctx->elem ? ctx->elem : sizeof(float));
}

int64_t pass_memplan_rows(const Graph *g, const int64_t *bytes, int64_t *offsets, int *def,
                          int *last) {
  int nt = g->ntensors, m = 0;
  Live *L = mc_calloc((size_t)nt + 1, sizeof(Live));
  lifetimes(g, g->B > 0 ? g->B : 1, g->T > 0 ? g->T : 1, sizeof(float), MEMPLAN_ROWS_PER_STEP, L);
  Live *order = mc_calloc((size_t)nt + 1, sizeof(Live));
  int *sp = mc_calloc((size_t)nt + 1, sizeof(int));
  for (int i = 0; i < nt; i++)
    if (L[i].def >= 0) {
      L[i].size = align_up(bytes[i]);
      order[m++] = L[i];
    }
  int64_t region = place_best(order, m, sp);
  for (int i = 0; i < nt; i++) {
    offsets[i] = -1;
    if (def) def[i] = L[i].def, last[i] = L[i].last;
  }
  for (int i = 0; i < m; i++)
    offsets[order[i].id] = L[order[i].id].off = order[i].off;
  for (int i = 0; i < nt; i++)
    if (L[i].def == VIEW) offsets[i] = view_off(L, i);
  mc_free(sp);
  mc_free(order);
  mc_free(L);
  return region;
}
