/* lower.c: a bound graph -> a program: one instruction per node, in graph
 * order, each with its kernel and buffer pointers.
 *
 * Buffers come from the memory plan (passes/memplan.c) for every graph the pass
 * pipeline planned (g->mem set by the memplan pass): one allocation per program
 * holds the persistent region (params, inputs, state) and the arena where every
 * activation and gradient lives at the offset the plan gave it. MOEC_NO_MEMPLAN=1,
 * and graphs built by hand without the passes, keep one zeroed allocation per
 * tensor (every buffer keeps its value after the run: for debugging and tests that
 * read every tensor). MOEC_POISON_ARENA=1 fills the arena with NaN bytes before
 * every run of the program (tests: nothing may read a buffer its producer has not
 * written this step). */
#include <stdlib.h>
#include <string.h>

#include "../passes/passes.h"
#include "codegen.h"
#include "jit.h"

static size_t tensor_bytes(const Tensor *t, size_t elem) {
  return (size_t)t->numel * (t->ty.dtype == DT_I32 ? sizeof(int32_t) : elem);
}

static bool env_on(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}

Program *cg_lower(Graph *g, Precision prec) {
  return cg_lower_on(g, prec, &rt_backend_cpu);
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
  MemFigures mf = pass_memplan_assign(g, p->elem);
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
  p->planned = true;
  p->persist_bytes = (size_t)mf.persist;
  p->arena_bytes = (size_t)mf.arena;
  p->bytes = total;
  p->poison = env_on("MOEC_POISON_ARENA");
}

void cg_poison_arena(Program *p) {
  if (!p->planned || !p->arena_bytes) return;
  size_t chunk = MC_MIN(p->arena_bytes, (size_t)1 << 20);
  unsigned char *nan = mc_malloc(chunk);
  memset(nan, 0xff, chunk); /* a NaN in f32 and f64, -1 in i32 */
  char *a = (char *)p->base + p->persist_bytes;
  for (size_t o = 0; o < p->arena_bytes; o += chunk)
    p->be->upload(a + o, nan, MC_MIN(chunk, p->arena_bytes - o));
  mc_free(nan);
}

Program *cg_lower_on(Graph *g, Precision prec, const Backend *be) {
  MOEC_ASSERT(g->B > 0 && g->T > 0);
  const KernelFn *table = be->kernels(prec);
  Program *p = mc_calloc(1, sizeof(Program));
  p->g = g;
  p->be = be;
  p->prec = prec;
  p->elem = prec == PREC_F64 ? sizeof(double) : sizeof(float);
  p->buf = mc_calloc((size_t)g->ntensors, sizeof(void *));
  p->subsets = -1;
  /* Graphs that went through the pass pipeline (its memplan pass set g->mem) get the
   * plan; graphs built by hand (kernel tests, gradcheck: they read every tensor after
   * the run) keep one buffer per tensor. */
  if (env_on("MOEC_NO_MEMPLAN") || g->mem.B == 0)
    alloc_per_tensor(p);
  else
    alloc_planned(p);
  p->instrs = mc_calloc((size_t)g->nnodes, sizeof(Instr));
  p->ninstrs = g->nnodes;
  p->first_backward = g->nnodes;
  for (int k = 0; k < g->nnodes; k++) {
    Node *n = g->nodes[k];
    Instr *ins = &p->instrs[k];
    ins->fn = table[n->op];
    if (n->op == OP_FUSED && be == &rt_backend_cpu) /* cpu: JIT-compiled (codegen/jit.c); */
      ins->fn = cg_jit_fused(n, prec); /* cuda: its table's kernel interprets the program */
    if (!ins->fn) mc_fatal("no %s kernel for op '%s'", be->name, ir_ops[n->op].name);
    ins->node = n;
    ins->in = mc_calloc((size_t)n->nin, sizeof(void *));
    ins->out = mc_calloc((size_t)n->nout, sizeof(void *));
    for (int i = 0; i < n->nin; i++)
      ins->in[i] = p->buf[n->in[i]->id];
    for (int j = 0; j < n->nout; j++)
      ins->out[j] = p->buf[n->out[j]->id];
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
  cg_hostjit_free(p->hostjit);
  mc_free(p->instrs);
  if (p->planned)
    p->be->release(p->base);
  else
    for (int i = 0; i < p->g->ntensors; i++)
      p->be->release(p->buf[i]);
  mc_free(p->buf);
  mc_free(p);
}
