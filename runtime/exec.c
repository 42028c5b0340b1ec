/* exec.c: the interpreter loop over a program's instructions. */
#include <string.h>

#include "../codegen/codegen.h"

void rt_exec(Program *p, const KernelCtx *ctx, int from, int to) {
  MOEC_ASSERT(from >= 0 && to <= p->ninstrs);
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
