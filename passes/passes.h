/* passes.h: graph passes and the pass manager; the pass context every pass reads.
 *
 *   manager.c   : the ordered pass list; runs it, prints the graph after any pass
 *   autodiff.c  : appends the backward graph (gradient rules from the op table)
 *   recompute.c, memplan.c: below; placement.c, comm.c, shard.c, bind.c: plan.h;
 *   fusion.c: fusion.h
 *
 * Prefix: pass_.
 */
#ifndef MOEC_PASSES_H
#define MOEC_PASSES_H

#include "../ir/ir.h"

struct PlanLoads;

/* What a compile asks of the passes. Zero fields mean: the global graph, f32, no
 * measured loads, notes dropped, errors fatal (tests build graphs by hand). */
typedef struct PassCtx {
  const Config *cfg;
  int devices;       /* P: devices the graph is placed on */
  bool training;     /* false: forward-only program (eval): no autodiff */
  bool device_graph; /* shard and bind for device `rank` (what it runs); false: the
                        global graph, bound at the whole batch (what a plan reports) */
  int rank;
  size_t elem;       /* bytes per float element the memory plan is made at; 0: 4 */
  const struct PlanLoads *loads; /* measured expert loads for experts = balanced */
  double zipf;       /* without loads for a layer: expert e gets 1/(e+1)^zipf (0: uniform) */
  McBuf *notes;      /* notes for the plan's reader (fallbacks, idle devices); NULL: none */
  Diag *diag;        /* user errors, at their .moe location; NULL: mc_die */
  bool fold_dw;      /* the gradients go to the host optimizer only (moec run's training):
                        fusion may fold expert weight gradients into it */
} PassCtx;

/* A user error found while compiling (a placement the file asks for and the devices
 * cannot give), at the layer or rule that caused it. The pass then stops. */
void pass_error(const PassCtx *ctx, Loc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* A note for the plan's reader. */
void pass_note(const PassCtx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct Pass {
  const char *name; /* as given to --after */
  const char *what; /* one line for --help */
  void (*run)(Graph *g, const PassCtx *ctx);
} Pass;

extern const Pass pass_list[];
extern const int pass_count;

/* Runs every pass in order (skipping autodiff when !ctx->training); after the
 * pass named print_after (NULL: none, "build": before any pass) prints the
 * graph to out and stops. Returns false if print_after names no pass, or after the
 * first pass that reported an error (ctx->diag). */
bool pass_run_all(Graph *g, const PassCtx *ctx, const char *print_after, FILE *out);

/* autodiff.c: d(g->loss)/d(every param) as ordinary backward nodes; sets each
 * param's ->grad. Gradients reaching a tensor from several consumers are summed
 * with OP_ADD in a fixed order (deterministic). */
void pass_autodiff(Graph *g, const PassCtx *ctx);

/* memplan.c: liveness over the node order and one arena for every transient tensor
 * (docs/memory.md). The plan of g at (B, T) with elem bytes per float element; with
 * offsets (by tensor id, g->ntensors of them) each tensor's byte offset in one block:
 * the persistent region [0, persist) then the arena [persist, persist + arena). Flags: */
enum {
  MEMPLAN_AS_IF_NO_RECOMPUTE = 1, /* plan the graph as it was before the recompute pass */
  MEMPLAN_ROWS_PER_STEP = 2,      /* internal: plan the per-step expert rows only */
  MEMPLAN_ROWS_APART = 4,         /* the arena without the per-step rows (tests: their
                                     slots in it against a region apart) */
};
MemFigures pass_memplan_plan(const Graph *g, int64_t B, int64_t T, size_t elem, int flags,
                             int64_t *offsets);
/* Plans g at its bound B, T, sets every tensor's mem_offset and g->mem; checks the
 * result (pass_memplan_validate) unless NDEBUG. Returns g->mem. */
MemFigures pass_memplan_assign(Graph *g, size_t elem);
/* Checks the offsets against g->mem's plan: dies naming the two tensors if two whose
 * lifetimes overlap share a byte, or if a tensor lies outside its region or is not
 * 64-byte aligned. Returns the number of overlapping-lifetime pairs checked. */
long pass_memplan_validate(const Graph *g);
/* The region of the expert rows sized per step (Tensor.rows_per_step; runtime/rows.c)
 * once a step outgrows their slots in the arena: those tensors at bytes[id] each, laid
 * out with the arena's liveness and orders; offsets[id] (-1 for the others) and, when def
 * is not NULL, every tensor's lifetime [def, last] in node indices (negative: not in the
 * region). Returns its bytes. */
int64_t pass_memplan_rows(const Graph *g, const int64_t *bytes, int64_t *offsets, int *def,
                          int *last);
/* moec plan --memory: prints to out the node of g's arena peak (bound, f32) and the top
 * largest tensors alive there (op, shape, MiB, lifetime); returns the bytes alive there
 * (the plan's live_max). */
int64_t pass_memplan_top(const Graph *g, int top, FILE *out);
/* Whether n (a slice0 or concat0) is a view in g's plan (pass_memplan_assign's offsets):
 * its output at its input's bytes, so the runtime copies nothing (the kernels check the
 * same pointers). False for any other node and on a graph not planned. */
bool pass_memplan_view(const Graph *g, const Node *n);
/* The pass: plans the bound graph at ctx->elem (the last pass: the figures `moec plan`
 * prints are the runtime's allocation); lowering uses the plan, or plans again when the
 * graph was bound anew since. */
void pass_memplan(Graph *g, const PassCtx *ctx);

/* recompute.c: `recompute = none | all | [layers] | auto` (docs/memory.md). The forward
 * nodes of a segment (a layer; a MoE layer's experts only: dispatch is never repeated)
 * whose outputs the backward pass reads are repeated just before their first backward
 * use; backward readers use the copies, so the originals die in the forward pass. */
void pass_recompute(Graph *g, const PassCtx *ctx);
typedef struct RecomputeSummary {
  int nseg, nclones;        /* segments recomputed, forward nodes repeated */
  double flops;             /* recomputed FLOPs per step */
  double fwd_flops;         /* FLOPs of the forward pass, for scale */
  int64_t dropped;          /* bytes no longer kept from the forward to the backward pass */
  MemFigures with, without; /* the plan with recomputation and as if there were none */
} RecomputeSummary;
RecomputeSummary pass_recompute_summary(const Graph *g, int64_t B, int64_t T, size_t elem);
/* What is recomputed and what it trades: per segment the layer, nodes repeated, bytes
 * dropped and FLOPs; the arena with and without (for moec plan). */
void pass_recompute_report(const Graph *g, int64_t B, int64_t T, size_t elem, FILE *out);
/* FLOPs of one node at (B, T) (multiply-adds count 2; elementwise ops one per output). */
double pass_node_flops(const Node *n, int64_t B, int64_t T);
/* The forward outputs the recompute pass drops (a backward node reads their copy
 * instead), by tensor id; the caller frees it. */
bool *pass_recompute_dropped(const Graph *g);

/* sparse.c (called by the comm pass): parameter p's gradient (PART_PARTIAL on P devices)
 * is a sum of row scatters (embedding_bwd: the embedding's, the sampled softmax's) and
 * exchanging each device's (id, row) pairs moves fewer bytes than a ring all_reduce of
 * the dense gradient at the config's batch: each scatter becomes a sparse_all_reduce and
 * the gradient is replicated. Returns whether it did. */
bool pass_sparse_grad(Graph *g, Tensor *p, int P, const Config *cfg);
/* sparse.c (called by the comm pass), plan.tables = sharded: parameter p is an embedding's
 * table on all P devices: its embeddings become table_gather, its gradient's scatters
 * table_scatter, p and its gradient PART_ROWS (the shard pass keeps a device's rows).
 * Returns whether it did. */
bool pass_table_shard(Graph *g, Tensor *p, int P, const Config *cfg);

/* capacity.c: the rows an expert-side tensor t (part experts, rows in dim 0) needs when its
 * moe layer has capacity=: this graph's experts of the layer (its rank's once sharded)
 * times each expert's capacity, at most every route of the global batch of B x T rows;
 * -1 when the layer has no capacity (the worst case applies). */
int64_t pass_capacity_rows(const Graph *g, const Tensor *t, int64_t B, int64_t T);

#endif
