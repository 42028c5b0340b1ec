/* exec.c: the interpreter loop over a program's instructions (or, with the host
 * JIT, one native call per range: codegen/hostjit.c). */
#include <string.h>

#include "../codegen/codegen.h"
#include "../codegen/jit.h"
#include "multidev.h"

void rt_exec(Program *p, const KernelCtx *ctx, int from, int to) {
  MOEC_ASSERT(from >= 0 && to <= p->ninstrs);
  if (p->poison && from == 0) cg_poison_arena(p); /* tests: no read of last step's bytes */
  if (p->subsets < 0) p->subsets = rt_md_has_subsets(p->g, ctx->ndevices);
  if (p->subsets) { /* on(...): devices outside a node's set skip it (no host JIT) */
    for (int k = from; k < to; k++) {
      const Instr *ins = &p->instrs[k];
      if (!rt_md_runs(ins->node, ctx->device, ctx->ndevices)) continue;
      KernelCtx nc = rt_md_node_ctx(ctx, ins->node);
      ins->fn(&nc, ins->node, ins->in, ins->out);
    }
    return;
  }
  if (!p->hostjit_tried) { /* native code for the call list (MOEC_JIT=0: interpreter) */
    p->hostjit_tried = true;
    if (cg_hostjit_enabled()) p->hostjit = cg_hostjit_compile(p);
  }
  if (p->hostjit && cg_hostjit_run(p->hostjit, ctx, from, to)) return;
  for (int k = from; k < to; k++) {
    const Instr *ins = &p->instrs[k];
    ins->fn(ctx, ins->node, ins->in, ins->out);
  }
}

void rt_carry_state(Program *p) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state, *nx = g->states[i].next;
    MOEC_ASSERT(s->numel == nx->numel);
    p->be->copy(p->buf[s->id], p->buf[nx->id], (size_t)s->numel * p->elem);
  }
}
