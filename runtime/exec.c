/* exec.c: running a program: its host function where the compiler made one
 * (codegen/hostjit.c), else the interpreter loop over its instructions; a traced step
 * runs trace.c's timed loop. */
#include <string.h>

#include "trace.h"

void rt_poison_arena(Program *p) {
  if (!p->planned || !p->arena_bytes) return;
  size_t chunk = MC_MIN(p->arena_bytes, (size_t)1 << 20);
  unsigned char *nan = mc_malloc(chunk);
  memset(nan, 0xff, chunk); /* a NaN in f32 and f64, -1 in i32 */
  char *a = (char *)p->base + p->persist_bytes;
  for (size_t o = 0; o < p->arena_bytes; o += chunk)
    p->be->upload(a + o, nan, MC_MIN(chunk, p->arena_bytes - o));
  rt_rows_poison(p, nan, chunk); /* the expert rows sized per step */
  mc_free(nan);
}

void rt_program_bind(Program *p, BatchShape s) {
  Graph *g = p->g;
  const int64_t P = g->ndev > 0 ? g->ndev : 1;
  if (!p->var || !ir_shape_fits(g, s) || s.B % P)
    mc_fatal("batch [B=%lld, T=%lld, S=%lld] is not among the shapes program '%s' was compiled "
             "for",
             (long long)s.B, (long long)s.T, (long long)s.S, g->name);
  g->B_global = s.B;
  g->B = s.B / P; /* every layer runs on every device: each holds B / P rows */
  g->T = s.T;
  g->S = s.S;
  for (int i = 0; i < p->nvar; i++) {
    Tensor *t = p->var[i];
    t->numel = 1;
    for (int d = 0; d < t->ty.rank; d++) {
      t->shape[d] = dim_eval3(t->ty.dim[d], g->B, s.T, s.S);
      MOEC_ASSERT(t->shape[d] > 0); /* below the largest shape, which the compiler bound */
      t->numel *= t->shape[d];
    }
  }
}

void rt_exec(Program *p, const KernelCtx *ctx, int from, int to) {
  MOEC_ASSERT(from >= 0 && to <= p->ninstrs);
  if (p->poison && from == 0) rt_poison_arena(p); /* tests: no read of last step's bytes */
  if (ctx->trace) { /* a traced step: the interpreter loop, timed (trace.c) */
    rt_trace_exec(p, ctx, from, to);
    return;
  }
  const int fb = p->first_backward, n = p->ninstrs;
  if (p->host_fwd || p->host_bwd) { /* the two compiled ranges and their union */
    bool fwd = from == 0 && (to == fb || to == n), bwd = (from == fb || fwd) && to == n;
    if (fwd || bwd) {
      if (fwd && p->host_fwd) p->host_fwd(ctx);
      if (bwd && p->host_bwd) p->host_bwd(ctx);
      return;
    }
  }
  for (int k = from; k < to; k++) {
    const Instr *ins = &p->instrs[k];
    if (!ins->on_subset) {
      ins->fn(ctx, ins->node, ins->in, ins->out);
      continue;
    }
    KernelCtx c = *ctx; /* the node's rows of the batch split over its device set */
    c.batch0 = ins->sub.batch0 + ctx->micro_row0;
    c.batch_local = ins->sub.batch_local;
    c.device = ins->sub.device;
    c.ndevices = ins->sub.ndevices;
    ins->fn(&c, ins->node, ins->in, ins->out);
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
