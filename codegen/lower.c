/* lower.c: a bound graph -> a program: one instruction per node, in graph
 * order, each with its kernel and buffer pointers. Buffers: one per tensor for
 * now (the memory-planning pass will carve them from one arena). */
#include <string.h>

#include "codegen.h"

static size_t tensor_bytes(const Tensor *t, size_t elem) {
  return (size_t)t->numel * (t->ty.dtype == DT_I32 ? sizeof(int32_t) : elem);
}

Program *cg_lower(Graph *g, Precision prec) { return cg_lower_on(g, prec, &rt_backend_cpu); }

Program *cg_lower_on(Graph *g, Precision prec, const Backend *be) {
  MOEC_ASSERT(g->B > 0 && g->T > 0);
  const KernelFn *table = be->kernels(prec);
  Program *p = mc_calloc(1, sizeof(Program));
  p->g = g;
  p->be = be;
  p->prec = prec;
  p->elem = prec == PREC_F64 ? sizeof(double) : sizeof(float);
  p->buf = mc_calloc((size_t)g->ntensors, sizeof(void *));
  size_t total = 0;
  for (int i = 0; i < g->ntensors; i++) total += tensor_bytes(g->tensors[i], p->elem);
  for (int i = 0; i < g->ntensors; i++) {
    size_t nb = tensor_bytes(g->tensors[i], p->elem);
    p->buf[i] = be->alloc(nb);
    if (!p->buf[i])
      mc_die("out of memory on the %s device: the program needs %.1f MiB for its tensors "
             "(tensor '%s' of %.1f MiB could not be allocated); reduce batch, unroll or model size",
             be->name, (double)total / 1048576.0, g->tensors[i]->name, (double)nb / 1048576.0);
  }
  p->bytes = total;
  p->instrs = mc_calloc((size_t)g->nnodes, sizeof(Instr));
  p->ninstrs = g->nnodes;
  p->first_backward = g->nnodes;
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    Instr *ins = &p->instrs[k];
    ins->fn = table[n->op];
    if (!ins->fn) mc_fatal("no %s kernel for op '%s'", be->name, ir_ops[n->op].name);
    ins->node = n;
    ins->in = mc_calloc((size_t)n->nin, sizeof(void *));
    ins->out = mc_calloc((size_t)n->nout, sizeof(void *));
    for (int i = 0; i < n->nin; i++) ins->in[i] = p->buf[n->in[i]->id];
    for (int j = 0; j < n->nout; j++) ins->out[j] = p->buf[n->out[j]->id];
    if (n->backward && p->first_backward == g->nnodes) p->first_backward = k;
  }
  return p;
}

void cg_program_free(Program *p) {
  if (!p) return;
  for (int k = 0; k < p->ninstrs; k++) {
    mc_free(p->instrs[k].in);
    mc_free(p->instrs[k].out);
  }
  mc_free(p->instrs);
  for (int i = 0; i < p->g->ntensors; i++) p->be->release(p->buf[i]);
  mc_free(p->buf);
  mc_free(p);
}
