/* rows.c: expert-row buffers sized per step (docs/memory.md, "Expert-row buffers"): a
 * device's rows of the MoE layers the bind pass marked (Tensor.rows_per_step) start in
 * their slots in the arena (the memory plan's: PLAN_ROWS_MARGIN x each exchange's fair
 * share, a layer's all-to-all or an hmoe's group-level and expert-level ones), bound to the
 * fair share; their rows grow (never shrink) when a step's counts need more, in place up to
 * the slots, and past them into a region of their own, laid out like the arena at the rows
 * each exchange brings. The region is the backend's memory (alloc, copy, release): on cuda
 * the copies run in stream order after the kernels that wrote them, and the old region's
 * release (cudaFree) waits for them. Prefix: rt_. */
#include <string.h>

#include "../passes/plan.h"
#include "runtime.h"

typedef struct RtStepRows RtStepRows;
struct RtStepRows {
  Program *p;
  int nl;           /* exchanges in the region: a MoE layer's, or an hmoe's two levels */
  int *moe, *level; /* [nl] the exchange's MoE layer and level (PlanRows) */
  int64_t *rows;    /* [nl] the rows it brings room for now */
  int64_t *bound;   /* [nl] the most a step can route to this device (PlanRows) */
  int64_t *slot;    /* [nl] the rows of its slots in the arena (plan_rows_slot_of) */
  bool in_arena;    /* in the slots (base: the program's block), not yet moved apart */
  int *layer;       /* by tensor id: its exchange in the region, -1 for the arena's */
  int64_t *per_row; /* by tensor id: its rows per row of the exchange (shape[0] / rows) */
  int64_t *row_b;   /* by tensor id: bytes per row */
  int64_t *off;    /* by tensor id: offset in the region */
  int *def, *last; /* by tensor id: lifetime in node indices (pass_memplan_rows) */
  char *base;
  size_t bytes, high; /* the region now; the most it has held */
  int grown;          /* times it grew */
};

static size_t elem_of(const Program *p, const Tensor *t) {
  return t->ty.dtype == DT_I32 ? sizeof(int32_t) : p->elem;
}

/* Lays the region out at r->rows into a fresh block; NULL when the backend has no room. */
static char *layout(RtStepRows *r, int64_t *off, size_t *bytes) {
  Graph *g = r->p->g;
  int64_t *nb = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
  for (int i = 0; i < g->ntensors; i++)
    if (r->layer[i] >= 0) nb[i] = r->rows[r->layer[i]] * r->per_row[i] * r->row_b[i];
  *bytes = (size_t)pass_memplan_rows(g, nb, off, r->def, r->last);
  mc_free(nb);
  return r->p->be->alloc(*bytes ? *bytes : 64);
}

/* Points every buffer and instruction operand of a region tensor at its place in base,
 * and binds the layers' shapes to their rows. The host program reads the operand arrays
 * (codegen/hostjit.c), and the fused kernels read their sizes (any_size), so nothing
 * compiled changes. */
static void point(RtStepRows *r) {
  Program *p = r->p;
  Graph *g = p->g;
  for (int i = 0; i < g->ntensors; i++) {
    if (r->layer[i] < 0) continue;
    Tensor *t = g->tensors[i];
    t->shape[0] = r->rows[r->layer[i]] * r->per_row[i];
    t->numel = 1;
    for (int d = 0; d < t->ty.rank; d++)
      t->numel *= t->shape[d];
    p->buf[i] = r->base + r->off[i];
  }
  for (int k = 0; k < p->ninstrs; k++) {
    Instr *ins = &p->instrs[k];
    for (int i = 0; i < ins->node->nin; i++)
      if (r->layer[ins->node->in[i]->id] >= 0) ins->in[i] = p->buf[ins->node->in[i]->id];
    for (int j = 0; j < ins->node->nout; j++)
      if (r->layer[ins->node->out[j]->id] >= 0) ins->out[j] = p->buf[ins->node->out[j]->id];
  }
}

void rt_rows_setup(Program *p) {
  Graph *g = p->g;
  bool any = false;
  for (int i = 0; i < g->ntensors && !any; i++)
    any = g->tensors[i]->rows_per_step;
  if (!any) return;
  RtStepRows *r = mc_calloc(1, sizeof(RtStepRows));
  r->p = p;
  int nt = g->ntensors;
  int ns = 2 * g->nmoe + 1; /* an hmoe: two exchanges */
  r->moe = mc_calloc((size_t)ns, sizeof(int));
  r->level = mc_calloc((size_t)ns, sizeof(int));
  r->rows = mc_calloc((size_t)ns, sizeof(int64_t));
  r->bound = mc_calloc((size_t)ns, sizeof(int64_t));
  r->slot = mc_calloc((size_t)ns, sizeof(int64_t));
  r->layer = mc_calloc((size_t)nt + 1, sizeof(int));
  r->per_row = mc_calloc((size_t)nt + 1, sizeof(int64_t));
  r->row_b = mc_calloc((size_t)nt + 1, sizeof(int64_t));
  r->off = mc_calloc((size_t)nt + 1, sizeof(int64_t));
  r->def = mc_calloc((size_t)nt + 1, sizeof(int));
  r->last = mc_calloc((size_t)nt + 1, sizeof(int));
  for (int i = 0; i < nt; i++)
    r->layer[i] = -1;
  for (int i = 0; i < nt; i++) {
    Tensor *t = g->tensors[i];
    if (!t->rows_per_step) continue;
    PlanRows pr = plan_rows_of(g, t, g->ndev, g->rank, g->B, g->T);
    int l = 0;
    while (l < r->nl && (r->moe[l] != pr.moe || r->level[l] != pr.level))
      l++;
    if (l == r->nl) {
      MOEC_ASSERT(l < ns);
      r->nl++;
      r->moe[l] = pr.moe;
      r->level[l] = pr.level;
      r->bound[l] = pr.bound;
      r->slot[l] = plan_rows_slot_of(&pr);
      r->rows[l] = pr.fair;
    }
    MOEC_ASSERT(pr.per_row > 0 && t->shape[0] == pr.worst * pr.per_row); /* bind.c */
    r->layer[i] = l;
    r->per_row[i] = pr.per_row;
    r->row_b[i] = t->numel / t->shape[0] * (int64_t)elem_of(p, t);
  }
  /* the lifetimes a move apart copies by (the offsets are the arena's until then) */
  int64_t *nb = mc_calloc((size_t)nt + 1, sizeof(int64_t));
  pass_memplan_rows(g, nb, r->off, r->def, r->last);
  mc_free(nb);
  r->in_arena = true;
  g->step_rows = r;
}

void rt_rows_in_arena(Program *p) {
  RtStepRows *r = p->g->step_rows;
  if (!r || r->p != p) return;
  MOEC_ASSERT(r->in_arena && p->base);
  r->base = p->base;
  for (int i = 0; i < p->g->ntensors; i++)
    if (r->layer[i] >= 0) r->off[i] = p->g->tensors[i]->mem_offset;
  point(r);
}

static void log_growth(const KernelCtx *ctx, const RtStepRows *r, int l, int64_t total,
                       const char *where) {
  const Graph *g = r->p->g;
  char when[48];
  snprintf(when, sizeof when, ctx->training ? "step %llu" : "an evaluation",
           (unsigned long long)ctx->step);
  fprintf(stderr,
          "moec: device %d, MoE layer '%s'%s: %lld rows arrived at %s; its expert-row "
          "buffers now hold %lld rows (%s)\n",
          g->rank, g->moe_names[r->moe[l]],
          r->level[l] == 1   ? " (group level)"
          : r->level[l] == 2 ? " (expert level)"
                             : "",
          (long long)total, when, (long long)r->rows[l], where);
}

void rt_rows_need(const KernelCtx *ctx, const Node *n, int64_t total) {
  RtStepRows *r = ctx->graph ? ctx->graph->step_rows : NULL;
  if (!r || n->backward || !n->out[0]->rows_per_step) return;
  int l = r->layer[n->out[0]->id];
  if (l < 0 || total <= r->rows[l] || total > r->bound[l]) return; /* the recv check says why */
  Program *p = r->p;
  Graph *g = p->g;
  int at = 0; /* n's index: the tensors alive across it keep their bytes */
  while (at < g->nnodes && g->nodes[at] != n)
    at++;
  MOEC_ASSERT(at < g->nnodes); /* the program's node, not a copy: its lifetimes are by index */
  int64_t old_rows = r->rows[l];
  /* an eighth more than asked: routing drifts by a few rows from step to step */
  r->rows[l] = MC_MIN(MC_MAX(total, old_rows + old_rows / 8), r->bound[l]);
  if (r->in_arena && total <= r->slot[l]) { /* in its slots: the same bytes, more rows */
    r->rows[l] = MC_MIN(r->rows[l], r->slot[l]);
    point(r);
    log_growth(ctx, r, l, total, "in its slots in the arena");
    return;
  }
  int64_t *off = mc_calloc((size_t)g->ntensors + 1, sizeof(int64_t));
  size_t bytes;
  char *base = layout(r, off, &bytes);
  if (!base) {
    const Tensor *big = NULL;
    for (int i = 0; i < g->ntensors; i++)
      if (r->layer[i] == l && (!big || r->per_row[i] * r->row_b[i] >
                                           r->per_row[big->id] * r->row_b[big->id]))
        big = g->tensors[i];
    mc_die("out of memory on the %s device: MoE layer '%s' routes %lld rows to this device's "
           "experts and its expert-row buffers need %.1f MiB (tensor '%s': %.1f MiB); bound "
           "them with moe(..., capacity=) or plan.expert_headroom, or balance the routing "
           "(w_load)",
           p->be->name, g->moe_names[r->moe[l]], (long long)total, (double)bytes / 1048576.0,
           big ? big->name : "?",
           big ? (double)(r->rows[l] * r->per_row[big->id] * r->row_b[big->id]) / 1048576.0 : 0.0);
  }
  for (int i = 0; i < g->ntensors; i++) /* written before n and read after it */
    if (r->layer[i] >= 0 && r->def[i] >= 0 && r->def[i] < at && r->last[i] >= at) {
      int64_t was = r->layer[i] == l ? old_rows : r->rows[r->layer[i]];
      p->be->copy(base + off[i], r->base + r->off[i], (size_t)(was * r->per_row[i] * r->row_b[i]));
    }
  if (!r->in_arena) p->be->release(r->base); /* the slots stay the arena's */
  r->in_arena = false;
  mc_free(r->off);
  r->off = off;
  r->base = base;
  r->bytes = bytes;
  r->high = MC_MAX(r->high, bytes);
  r->grown++;
  point(r);
  char where[96];
  snprintf(where, sizeof where, "%.2f MiB for every layer's, apart from the arena",
           (double)bytes / 1048576.0);
  log_growth(ctx, r, l, total, where);
}

size_t rt_rows_bytes(const Program *p, bool high) {
  const RtStepRows *r = p->g ? p->g->step_rows : NULL;
  return !r || r->p != p ? 0 : high ? r->high : r->bytes;
}

void rt_rows_poison(Program *p, const void *nan, size_t chunk) {
  RtStepRows *r = p->g ? p->g->step_rows : NULL;
  for (size_t o = 0; r && r->p == p && o < r->bytes; o += chunk)
    p->be->upload(r->base + o, nan, MC_MIN(chunk, r->bytes - o));
}

void rt_rows_free(Program *p) {
  RtStepRows *r = p->g ? p->g->step_rows : NULL;
  if (!r || r->p != p) return;
  if (!r->in_arena) p->be->release(r->base);
  mc_free(r->moe);
  mc_free(r->level);
  mc_free(r->slot);
  mc_free(r->per_row);
  mc_free(r->rows);
  mc_free(r->bound);
  mc_free(r->layer);
  mc_free(r->row_b);
  mc_free(r->off);
  mc_free(r->def);
  mc_free(r->last);
  mc_free(r);
  p->g->step_rows = NULL;
}
