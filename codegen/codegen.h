/* codegen.h: lowering a bound, planned graph to the Program the runtime runs
 * (runtime/runtime.h): one kernel call per node this device runs, buffers carved from
 * one block by the memory plan, fused kernels and the host program compiled here, up
 * front (jit.h: LLVM on the cpu; nvrtc.h: NVRTC on cuda).
 *
 *   lower.c : the lowering
 *
 * Prefix: cg_.
 */
#ifndef MOEC_CODEGEN_H
#define MOEC_CODEGEN_H

#include "../runtime/runtime.h"

/* How to lower. NULL options: the defaults below (jit, memplan and nvrtc on). */
typedef struct CgOpts {
  bool no_jit;     /* the interpreter loop instead of the LLVM-compiled host program */
  bool no_memplan; /* one buffer per tensor, every value kept after a run (debugging) */
  bool poison;     /* fill the arena with NaN before every run: nothing may read a buffer
                      its producer has not written this step (tests) */
  bool no_nvrtc;   /* cuda: fused groups run the interpreter kernel, not NVRTC's */
  void *dev;       /* the device context kernels run on (Program.dev) */
} CgOpts;

/* Lowers g (bound: ir_bind done). Graphs the pass pipeline planned (g->mem set) get
 * one block per the plan (planned anew when g was bound again since at other shapes or
 * elem); graphs built by hand (kernel tests) one zeroed buffer per tensor. A transient
 * tensor's buffer holds its value only from its producer to its last reader (the host
 * may read the loss, xent, aux, MoE importance/load, states' next values and parameter
 * gradients after a run). Instructions of nodes this device does not run (on(...) sets
 * without g->rank) are left out. Dies with a clear message naming the bytes if memory
 * runs out. Every node must have a kernel. */
Program *cg_lower_on(Graph *g, Precision prec, const Backend *be, const CgOpts *o);
static inline Program *cg_lower(Graph *g, Precision prec) {
  return cg_lower_on(g, prec, &rt_backend_cpu, NULL);
}
/* Frees p (not its graph). */
void cg_program_free(Program *p);

#endif
