/* lower.c: a bound graph -> a program: one instruction per node this device runs, in
 * graph order, each with its kernel and buffer pointers; fused kernels and the host
 * program compiled here, so running compiles nothing.
 *
 * Buffers come from the memory plan (passes/memplan.c) for every graph the pass
 * pipeline planned: one allocation per program holds the persistent region (params,
 * inputs, state) and the arena where every activation and gradient lives at the
 * offset the plan gave it. CgOpts.no_memplan, and graphs built by hand without the
 * passes, keep one zeroed allocation per tensor (every buffer keeps its value after
 * the run: for debugging and tests that read every tensor). CgOpts.poison fills the
 * arena with NaN bytes before every run of the program (tests: nothing may read a
 * buffer its producer has not written this step). */
#include <string.h>

#include "../passes/passes.h"
#include "codegen.h"
#include "jit.h"
#include "nvrtc.h"

static size_t tensor_bytes(const Tensor *t, size_t elem) {
  return (size_t)t->numel * (t->ty.dtype == DT_I32 ? sizeof(int32_t) : elem);
}

static void alloc_per_tensor(Program *p) {
  Graph *g = p->g;
  size_t total = 0;
  for (int i = 0; i < g->ntensors; i++)
    total += tensor_bytes(g->tensors[i], p->elem);
  for (int i = 0; i < g->ntensors; i++) {
    size_t nb = tensor_bytes(g->tensors[i], p->elem);
    p->buf[i] = p->be->alloc(nb);
    if (!p->buf[i])
      mc_die("out of memory on the %s device: the program needs %.1f MiB for its tensors "
             "(tensor '%s' of %.1f MiB could not be allocated); reduce batch, unroll or model size",
             p->be->name, (double)total / 1048576.0, g->tensors[i]->name, (double)nb / 1048576.0);
  }
  p->bytes = total;
}

static void alloc_planned(Program *p) {
  Graph *g = p->g;
  MemFigures mf = g->mem;
  rt_rows_setup(p); /* expert rows sized per step: bound to their slots (runtime/rows.c) */
  if (mf.B != g->B || mf.T != g->T || mf.elem != (int64_t)p->elem)
    mf = pass_memplan_assign(g, p->elem); /* bound anew since the memplan pass */
  size_t total = (size_t)(mf.persist + mf.arena);
  p->base = p->be->alloc(total ? total : 64);
  if (!p->base) {
    const Tensor *big = NULL; /* named in the message: what to shrink first */
    for (int i = 0; i < g->ntensors; i++)
      if (!big || tensor_bytes(g->tensors[i], p->elem) > tensor_bytes(big, p->elem))
        big = g->tensors[i];
    mc_die("out of memory on the %s device: the program's memory plan needs %.1f MiB "
           "(%zu bytes: parameters, inputs and state %.1f MiB, activations and gradients "
           "%.1f MiB; the largest tensor is '%s', %.1f MiB); reduce batch, unroll or model "
           "size, or recompute activations (plan { recompute = all })",
           p->be->name, (double)total / 1048576.0, total, (double)mf.persist / 1048576.0,
           (double)mf.arena / 1048576.0, big ? big->name : "?",
           big ? (double)tensor_bytes(big, p->elem) / 1048576.0 : 0.0);
  }
  for (int i = 0; i < g->ntensors; i++)
    p->buf[i] = (char *)p->base + g->tensors[i]->mem_offset;
  rt_rows_in_arena(p); /* the per-step rows: bound to their rows of the slots */
  p->planned = true;
  p->persist_bytes = (size_t)mf.persist;
  p->arena_bytes = (size_t)mf.arena;
  p->bytes = total;
}

/* The kernel of node n: the backend's, or one compiled for this node (fused groups). */
static KernelFn kernel_of(const Node *n, const KernelFn *table, Precision prec, const Backend *be,
                          const CgOpts *o) {
  if (n->op == OP_FUSED && be == &rt_backend_cpu)
    return o->any_size ? cg_jit_fused_any_size(n, prec) : cg_jit_fused(n, prec);
  if (n->op == OP_FUSED && !o->no_nvrtc) return cg_nvrtc_fused(n, prec, o->dev, table[n->op]);
  return table[n->op];
}

Program *cg_lower_on(Graph *g, Precision prec, const Backend *be, const CgOpts *opts) {
  MOEC_ASSERT(g->B > 0 && g->T > 0);
  CgOpts o = opts ? *opts : (CgOpts){0};
  o.any_size = g->nshapes > 0; /* bound anew for each batch: kernels read their sizes */
  const KernelFn *table = be->kernels(prec);
  Program *p = mc_calloc(1, sizeof(Program));
  p->g = g;
  p->be = be;
  p->dev = o.dev;
  p->prec = prec;
  p->elem = prec == PREC_F64 ? sizeof(double) : sizeof(float);
  p->buf = mc_calloc((size_t)g->ntensors + 1, sizeof(void *));
  /* Graphs that went through the pass pipeline (its memplan pass set g->mem) get the
   * plan; graphs built by hand (kernel tests, gradcheck: they read every tensor after
   * the run) keep one buffer per tensor. */
  if (o.no_memplan || g->mem.B == 0)
    alloc_per_tensor(p);
  else
    alloc_planned(p);
  p->poison = o.poison && p->planned;
  o.any_size |= g->step_rows != NULL; /* the expert rows' shapes change when their region grows */
  const int P = g->ndev > 0 ? g->ndev : 1, rank = g->rank;
  p->instrs = mc_calloc((size_t)g->nnodes + 1, sizeof(Instr));
  p->first_backward = -1;
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    if (P > 1 && !ir_runs_on(n, rank, P)) continue; /* another device's node */
    Instr *ins = &p->instrs[p->ninstrs++];
    ins->fn = kernel_of(n, table, prec, be, &o);
    if (!ins->fn) mc_fatal("no %s kernel for op '%s'", be->name, ir_ops[n->op].name);
    ins->node = n;
    ins->in = mc_calloc((size_t)n->nin + 1, sizeof(void *));
    ins->out = mc_calloc((size_t)n->nout + 1, sizeof(void *));
    for (int i = 0; i < n->nin; i++)
      ins->in[i] = p->buf[n->in[i]->id];
    for (int j = 0; j < n->nout; j++)
      ins->out[j] = p->buf[n->out[j]->id];
    if (P > 1 && ir_node_mask(n, P) != ir_all_mask(P)) {
      ins->on_subset = true;
      ins->sub = ir_node_subctx(n, rank, P, g->B_global);
    }
    if (n->backward && p->first_backward < 0) p->first_backward = p->ninstrs - 1;
  }
  if (p->first_backward < 0) p->first_backward = p->ninstrs;
  bool subsets = false;
  for (int k = 0; k < p->ninstrs; k++)
    subsets |= p->instrs[k].on_subset;
  if (!o.no_jit && !subsets) cg_hostjit_compile(p); /* sets host_fwd, host_bwd */
  return p;
}

void cg_program_free(Program *p) {
  if (!p) return;
  for (int k = 0; k < p->ninstrs; k++) {
    mc_free(p->instrs[k].in);
    mc_free(p->instrs[k].out);
  }
  cg_hostjit_free(p->hostjit);
  mc_free(p->instrs);
  rt_rows_free(p);
  if (p->planned)
    p->be->release(p->base);
  else
    for (int i = 0; i < p->g->ntensors; i++)
      p->be->release(p->buf[i]);
  mc_free(p->buf);
  if (p->rows)
    for (int i = 0; i < p->g->nparams; i++) {
      mc_free((void *)p->rows[i].list);
      mc_free((void *)p->rows[i].owner);
    }
  mc_free(p->rows);
  mc_free(p->param_set);
  mc_free(p->var);
  mc_free(p);
}
