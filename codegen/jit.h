/* jit.h: LLVM ORC JIT for the CPU side of codegen.
 *
 *   jit.c     : fused elementwise kernels: an OP_FUSED node's expression
 *               program (passes/fusion.h) -> LLVM IR for one loop over its
 *               elements, optimised at O3 for the host (AVX-512/AVX2 via the
 *               loop vectoriser, no fast-math: the same bits as the unfused
 *               kernels), compiled by LLJIT, cached by content hash
 *   hostjit.c : the host program: a program's ordered kernel calls -> one
 *               native function per instruction range (Program.host_fwd, host_bwd)
 *
 * Without LLVM (MOEC_HAVE_LLVM undefined) every entry point reports "no JIT":
 * fusion stays off and the interpreter runs. Prefix: cg_.
 */
#ifndef MOEC_JIT_H
#define MOEC_JIT_H

#include "codegen.h"

/* True when moec was built with LLVM (and the native target initialises). */
bool cg_jit_available(void);
/* The kernel of a bound OP_FUSED node on the cpu backend, compiled on first
 * use and cached by (program, element count, broadcast slots, precision). */
KernelFn cg_jit_fused(const Node *n, Precision prec);
/* Kernels compiled and cache hits so far (tests, --json). */
void cg_jit_stats(int *compiled, int *hits);

/* hostjit.c: host program JIT: sets p->host_fwd ([0, first_backward)) and
 * p->host_bwd ([first_backward, ninstrs)) to native functions making p's kernel calls
 * with its buffers baked in; leaves them NULL when LLVM is absent. */
typedef struct HostJit HostJit;
void cg_hostjit_compile(Program *p);
void cg_hostjit_free(HostJit *h);

#ifdef MOEC_HAVE_LLVM
/* jit.c internals shared with hostjit.c (one LLJIT per process). */
#include <llvm-c/Orc.h>
void cg_jit_lock(void);
void cg_jit_unlock(void);
bool cg_jit_init_locked(void); /* false: no native target */
int cg_jit_next_id(void);      /* unique function names */
/* Adds module m (in ts's context; owns both) to the JIT, after the O3 pipeline
 * when optimise; returns fn's address. Call with the lock held. */
void *cg_jit_compile_module(LLVMOrcThreadSafeContextRef ts, LLVMModuleRef m, const char *fn,
                            bool optimise);
#endif

#endif
