/* codegen.h: lowering a scheduled graph to a program.
 *
 *   lower.c : one instruction per node, in graph order, with its kernel and the
 *             buffers of its inputs and outputs, carved from one block by the
 *             memory plan (passes/memplan.c)
 *
 * Prefix: cg_.
 */
#ifndef MOEC_CODEGEN_H
#define MOEC_CODEGEN_H

#include "../runtime/runtime.h"

typedef struct Instr {
  KernelFn fn;
  const Node *node;
  void **in, **out;
} Instr;

typedef struct Program {
  Graph *g;
  const Backend *be; /* where the buffers live */
  void *dev;         /* the device context kernels run on (KernelCtx.dev; cuda: RtCudaDev*,
                        set by runtime/train_dev.c); NULL: the backend's default */
  Precision prec;
  size_t elem; /* bytes per float element: 4 or 8 */
  Instr *instrs; int ninstrs;
  int first_backward; /* index of the first backward instr (= ninstrs if none) */
  void **buf;  /* by tensor id: the tensor's storage */
  size_t bytes; /* total bytes allocated for tensors */
  /* the memory plan (passes/memplan.c): one block, persistent region then arena */
  bool planned; /* false under MOEC_NO_MEMPLAN=1: one allocation per tensor */
  void *base;   /* the block */
  size_t persist_bytes, arena_bytes;
  bool poison; /* MOEC_POISON_ARENA=1: rt_exec from 0 first fills the arena with NaN */
  /* the host JIT (codegen/hostjit.c): compiled at the first rt_exec, NULL = interpreter */
  struct HostJit *hostjit;
  bool hostjit_tried;
  /* device subsets (place ... : on(...)): some nodes run on part of the devices; rt_exec
   * then interprets, skipping them elsewhere (runtime/multidev.c). -1 = not looked yet */
  int subsets;
} Program;

/* Lowers a bound graph (ir_bind done). If the memplan pass ran on it (g->mem set),
 * plans memory again at the bound shapes (pass_memplan_assign: sets
 * every tensor's mem_offset) and allocates one zeroed block; a transient tensor's
 * buffer holds its value only from its producer to its last reader (the host may
 * read the loss, xent, aux, MoE importance/load, state's next values and param
 * gradients after the run; MOEC_NO_MEMPLAN=1: one buffer per tensor, all kept).
 * Dies with a clear message naming the total if memory runs out. Every node must
 * have a kernel. */
Program *cg_lower(Graph *g, Precision prec); /* on the cpu backend */
Program *cg_lower_on(Graph *g, Precision prec, const Backend *be);
void cg_program_free(Program *p);

/* Fills the arena with NaN bytes (the poison test of MOEC_POISON_ARENA). */
void cg_poison_arena(Program *p);
/* Runs instructions [from, to) (runtime/exec.c). */
void rt_exec(Program *p, const KernelCtx *ctx, int from, int to);
/* Copies each state's next value into the state (after a training step). */
void rt_carry_state(Program *p);

/* Direct host pointers: cpu backend only (MOEC_ASSERT'ed by callers that care). */
static inline float *cg_f32(Program *p, const Tensor *t) { return (float *)p->buf[t->id]; }
static inline double *cg_f64(Program *p, const Tensor *t) { return (double *)p->buf[t->id]; }
static inline int32_t *cg_i32(Program *p, const Tensor *t) { return (int32_t *)p->buf[t->id]; }

#endif
