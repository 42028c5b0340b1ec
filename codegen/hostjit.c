/* hostjit.c: the host program JIT. A program's ordered kernel calls become
 * native code: per range (forward [0, first_backward), backward
 * [first_backward, ninstrs)) one LLVM function
 *
 *   void moec_host_N(const KernelCtx *ctx) {
 *     fn_0(ctx, node_0, in_0, out_0);   // every pointer a constant
 *     fn_1(ctx, node_1, in_1, out_1);
 *     ...
 *   }
 *
 * compiled by the same LLJIT as the fused kernels (jit.c) when the program is
 * lowered. It replaces rt_exec's interpreter loop: no loads of the instruction
 * array, no indirect branch through a loaded pointer; each call is a direct call to
 * a constant address. The instruction arrays (in/out pointer lists) stay where
 * lowering put them; relowering needs a recompile (the Program owns its HostJit).
 * CgOpts.no_jit (--no-jit) keeps the interpreter.
 */
#include <stdlib.h>
#include <string.h>

#include "jit.h"

#ifdef MOEC_HAVE_LLVM
#include <llvm-c/Core.h>

typedef void (*HostFn)(const KernelCtx *ctx);

struct HostJit {
  int unused; /* the machine code stays in the JIT until exit */
};

static HostFn compile_range(const Program *p, int from, int to) {
  if (from >= to) return NULL;
  char fname[48];
  snprintf(fname, sizeof fname, "moec_host_%d", cg_jit_next_id());
  LLVMOrcThreadSafeContextRef ts = LLVMOrcCreateNewThreadSafeContext();
  LLVMContextRef c = LLVMOrcThreadSafeContextGetContext(ts);
  LLVMModuleRef m = LLVMModuleCreateWithNameInContext(fname, c);
  LLVMBuilderRef b = LLVMCreateBuilderInContext(c);
  LLVMTypeRef i8p = LLVMPointerType(LLVMInt8TypeInContext(c), 0);
  LLVMTypeRef i8pp = LLVMPointerType(i8p, 0);
  LLVMTypeRef i64 = LLVMInt64TypeInContext(c);
  LLVMTypeRef void_t = LLVMVoidTypeInContext(c);
  LLVMTypeRef kparams[4] = {i8p, i8p, i8pp, i8pp};
  LLVMTypeRef kty = LLVMFunctionType(void_t, kparams, 4, 0); /* KernelFn */
  LLVMTypeRef kptr = LLVMPointerType(kty, 0);
  LLVMValueRef f = LLVMAddFunction(m, fname, LLVMFunctionType(void_t, &i8p, 1, 0));
  /* optnone: the backend's fast path (no scheduling of 10^4 calls); nothing to optimise */
  const char *attrs[] = {"optnone", "noinline"};
  for (int i = 0; i < 2; i++)
    LLVMAddAttributeAtIndex(
        f, LLVMAttributeFunctionIndex,
        LLVMCreateEnumAttribute(c, LLVMGetEnumAttributeKindForName(attrs[i], strlen(attrs[i])), 0));
  LLVMPositionBuilderAtEnd(b, LLVMAppendBasicBlockInContext(c, f, "entry"));
  LLVMValueRef ctx = LLVMGetParam(f, 0);
#define KONST(ptr, ty)                                                                             \
  LLVMConstIntToPtr(LLVMConstInt(i64, (unsigned long long)(uintptr_t)(ptr), 0), ty)
  for (int k = from; k < to; k++) {
    if (k > from && (k - from) % 64 == 0) { /* short blocks: codegen time stays linear */
      LLVMBasicBlockRef nb = LLVMAppendBasicBlockInContext(c, f, "");
      LLVMBuildBr(b, nb);
      LLVMPositionBuilderAtEnd(b, nb);
    }
    const Instr *ins = &p->instrs[k];
    LLVMValueRef args[4] = {ctx, KONST(ins->node, i8p), KONST(ins->in, i8pp),
                            KONST(ins->out, i8pp)};
    LLVMBuildCall2(b, kty, KONST(ins->fn, kptr), args, 4, "");
  }
#undef KONST
  LLVMBuildRetVoid(b);
  LLVMDisposeBuilder(b);
  /* no IR passes: straight-line calls gain nothing from them, and O3 on 10^4 calls is slow */
  return (HostFn)cg_jit_compile_module(ts, m, fname, false);
}

void cg_hostjit_compile(Program *p) {
  cg_jit_lock();
  if (!cg_jit_init_locked()) {
    cg_jit_unlock();
    return;
  }
  p->hostjit = mc_calloc(1, sizeof(HostJit));
  p->host_fwd = compile_range(p, 0, p->first_backward);
  p->host_bwd = compile_range(p, p->first_backward, p->ninstrs);
  cg_jit_unlock();
}

/* The machine code stays in the JIT (freed at exit): programs are few per run. */
void cg_hostjit_free(HostJit *h) {
  mc_free(h);
}

#else

void cg_hostjit_compile(Program *p) {
  (void)p;
}
void cg_hostjit_free(HostJit *h) {
  (void)h;
}

#endif
