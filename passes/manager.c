/* manager.c: the ordered pass list and the pass manager. "build" (the graph as
 * ir_build made it) is a pseudo-pass before the first entry. Every pass is followed
 * by ir_verify (cheap), so a pass that breaks the graph is caught where it runs; a
 * pass that reports a user error (pass_error) ends the run. */
#include <stdarg.h>
#include <string.h>

#include "passes.h"
#include "fusion.h"
#include "plan.h"

static void run_verify(Graph *g, const PassCtx *ctx) {
  (void)ctx;
  ir_verify(g);
}

const Pass pass_list[] = {
    {"verify", "check the graph's invariants (producers before uses, arities, shapes)", run_verify},
    {"autodiff", "append the backward graph: d loss / d every param (training only)",
     pass_autodiff},
    {"placement", "place ops on devices: strategy, expert policy, place rules (devices > 1)",
     pass_placement},
    {"comm", "insert collectives: all_to_all at MoE layers, all_reduce of gradients (devices > 1)",
     pass_comm},
    {"recompute", "recompute = none|all|[layers]|auto: repeat forward nodes before their "
     "backward use", pass_recompute},
    {"fusion", "group elementwise chains and trees into one fused kernel each (fuse = true; "
     "LLVM JIT on cpu, NVRTC on cuda)", pass_fusion},
    {"shard", "keep one device's experts only (--device R of devices > 1)", pass_shard},
    {"bind", "bind B and T: the whole batch, or device R's rows (expert rows for every "
     "device's)", pass_bind},
    {"memplan", "memory plan: liveness, one arena of activations and gradients (at the "
     "bound shapes)", pass_memplan},
};
const int pass_count = (int)MC_ARRAY_LEN(pass_list);

static bool known_pass(const char *name) {
  if (!strcmp(name, "build")) return true;
  for (int i = 0; i < pass_count; i++)
    if (!strcmp(pass_list[i].name, name)) return true;
  return false;
}

void pass_error(const PassCtx *ctx, Loc loc, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (!ctx->diag) {
    if (loc.line > 0) mc_die("%d:%d: %s", loc.line, loc.col, msg);
    mc_die("%s", msg);
  }
  fe_error(ctx->diag, loc, "%s", msg);
}

void pass_note(const PassCtx *ctx, const char *fmt, ...) {
  if (!ctx->notes) return;
  va_list ap;
  va_start(ap, fmt);
  mc_buf_vprintf(ctx->notes, fmt, ap);
  va_end(ap);
}

bool pass_run_all(Graph *g, const PassCtx *ctx, const char *print_after, FILE *out) {
  if (print_after && !known_pass(print_after)) return false;
  int errors0 = ctx->diag ? ctx->diag->errors : 0;
  if (print_after && !strcmp(print_after, "build")) {
    ir_print(g, out);
    return true;
  }
  for (int i = 0; i < pass_count; i++) {
    const Pass *p = &pass_list[i];
    bool skip = !ctx->training && p->run == pass_autodiff;
    if (!skip) {
      p->run(g, ctx);
      if (ctx->diag && ctx->diag->errors > errors0) return false;
      if (p->run != run_verify) ir_verify(g); /* a pass must leave a valid graph */
    }
    if (print_after && !strcmp(print_after, p->name)) {
      ir_print(g, out);
      return true;
    }
  }
  return true;
}
