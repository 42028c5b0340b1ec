/* passes.h: graph passes and the pass manager.
 *
 *   manager.c   : the ordered pass list; runs it, prints the graph after any pass
 *   autodiff.c  : appends the backward graph (gradient rules from the op table)
 *   (later) placement.c, comm.c, fusion.c, recompute.c, memplan.c
 *
 * Prefix: pass_.
 */
#ifndef MOEC_PASSES_H
#define MOEC_PASSES_H

#include "../ir/ir.h"

typedef struct PassCtx {
  const Config *cfg;
  int devices;  /* from cfg or --devices */
  bool training; /* false: forward-only program (eval) */
} PassCtx;

typedef struct Pass {
  const char *name; /* as given to --after */
  const char *what; /* one line for --help */
  void (*run)(Graph *g, const PassCtx *ctx);
} Pass;

extern const Pass pass_list[];
extern const int pass_count;

/* Runs every pass in order (skipping autodiff when !ctx->training); after the
 * pass named print_after (NULL: none, "build": before any pass) prints the
 * graph to out and stops. Returns false if print_after names no pass. */
bool pass_run_all(Graph *g, const PassCtx *ctx, const char *print_after, FILE *out);

/* autodiff.c: d(g->loss)/d(every param) as ordinary backward nodes; sets each
 * param's ->grad. Gradients reaching a tensor from several consumers are summed
 * with OP_ADD in a fixed order (deterministic). */
void pass_autodiff(Graph *g, const PassCtx *ctx);

#endif
