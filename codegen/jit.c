/* jit.c: fused elementwise kernels compiled with LLVM's ORC JIT (LLJIT, C API).
 *
 * An OP_FUSED node's program (passes/fusion.h) becomes one function with the
 * KernelFn signature whose body is a loop over the node's N elements (N is
 * known after binding and baked in): load each input at i (or once, for a
 * broadcast scalar), evaluate the program in registers, store each
 * materialised output at i. Every op emits exactly the float operations of its
 * unfused kernel (runtime/kernels_dense.c/.inc) in the same order: the
 * float32 exp/tanh/sigmoid are the kernels' own polynomials (rt_expf,
 * rt_tanhf), float64 and log1p call the same libm functions. No fast-math
 * flags and no fmuladd are emitted, so the O3 pipeline may vectorise (the
 * host's AVX-512/AVX2 via the target machine) but never reassociate or
 * contract: results are bit-identical to the unfused kernels.
 *
 * Compiled kernels are cached by their text key (program, N, broadcast slots,
 * precision; looked up through a 64-bit hash), so the same group in the train
 * and eval programs, or in a second run, compiles once.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../passes/fusion.h"
#include "jit.h"

#ifdef MOEC_HAVE_LLVM
#include <llvm-c/Analysis.h>
#include <llvm-c/Core.h>
#include <llvm-c/Error.h>
#include <llvm-c/LLJIT.h>
#include <llvm-c/Orc.h>
#include <llvm-c/Target.h>
#include <llvm-c/TargetMachine.h>
#include <llvm-c/Transforms/PassBuilder.h>

/* ---------------------------------------------------------------- the one LLJIT */

static pthread_mutex_t jit_mu = PTHREAD_MUTEX_INITIALIZER;
static bool jit_tried, jit_ok;
static LLVMOrcLLJITRef jit;
static LLVMTargetMachineRef opt_tm; /* host cpu and features: what O3 vectorises for */
static int jit_counter;
static int n_compiled, n_hits;

static void jit_fail(LLVMErrorRef err, const char *what) {
  char *msg = LLVMGetErrorMessage(err);
  mc_fatal("LLVM JIT: %s: %s", what, msg);
}

static LLVMTargetMachineRef host_tm(void) {
  char *triple = LLVMGetDefaultTargetTriple();
  char *cpu = LLVMGetHostCPUName();
  char *feat = LLVMGetHostCPUFeatures();
  LLVMTargetRef target;
  char *err = NULL;
  if (LLVMGetTargetFromTriple(triple, &target, &err)) mc_fatal("LLVM JIT: %s", err);
  LLVMTargetMachineRef tm =
      LLVMCreateTargetMachine(target, triple, cpu, feat, LLVMCodeGenLevelAggressive,
                              LLVMRelocDefault, LLVMCodeModelJITDefault);
  LLVMDisposeMessage(triple);
  LLVMDisposeMessage(cpu);
  LLVMDisposeMessage(feat);
  return tm;
}

/* Initialises LLVM and the JIT once; false when the native target is missing. */
static bool jit_init_locked(void) {
  if (jit_tried) return jit_ok;
  jit_tried = true;
  if (LLVMInitializeNativeTarget() || LLVMInitializeNativeAsmPrinter()) return false;
  opt_tm = host_tm();
  /* the JIT's own target machine: the same host cpu and features */
  LLVMOrcJITTargetMachineBuilderRef jtmb =
      LLVMOrcJITTargetMachineBuilderCreateFromTargetMachine(host_tm());
  LLVMOrcLLJITBuilderRef builder = LLVMOrcCreateLLJITBuilder();
  LLVMOrcLLJITBuilderSetJITTargetMachineBuilder(builder, jtmb);
  LLVMErrorRef e = LLVMOrcCreateLLJIT(&jit, builder);
  if (e) jit_fail(e, "cannot create LLJIT");
  /* generated code calls libm (tanh, exp, log1p, log1pf): resolve from the process */
  LLVMOrcDefinitionGeneratorRef gen;
  e = LLVMOrcCreateDynamicLibrarySearchGeneratorForProcess(&gen, LLVMOrcLLJITGetGlobalPrefix(jit),
                                                           NULL, NULL);
  if (e) jit_fail(e, "cannot search the process for symbols");
  LLVMOrcJITDylibAddGenerator(LLVMOrcLLJITGetMainJITDylib(jit), gen);
  jit_ok = true;
  return true;
}

bool cg_jit_available(void) {
  pthread_mutex_lock(&jit_mu);
  bool ok = jit_init_locked();
  pthread_mutex_unlock(&jit_mu);
  return ok;
}

/* Adds module m (built in ts's context) to the JIT, optionally after the O3
 * pipeline, and returns the address of function fn. Takes ownership of m and
 * disposes of the ts handle. Call with jit_mu held (hostjit.c: via cg_jit_lock). */
void *cg_jit_compile_module(LLVMOrcThreadSafeContextRef ts, LLVMModuleRef m, const char *fn,
                            bool optimise) {
  char *triple = LLVMGetTargetMachineTriple(opt_tm);
  LLVMSetTarget(m, triple);
  LLVMDisposeMessage(triple);
  LLVMSetDataLayout(m, LLVMOrcLLJITGetDataLayoutStr(jit));
  char *verr = NULL;
  if (LLVMVerifyModule(m, LLVMReturnStatusAction, &verr))
    mc_fatal("LLVM JIT: bad module: %s", verr);
  LLVMDisposeMessage(verr);
  if (optimise) {
    LLVMPassBuilderOptionsRef po = LLVMCreatePassBuilderOptions();
    LLVMPassBuilderOptionsSetLoopVectorization(po, 1);
    LLVMPassBuilderOptionsSetSLPVectorization(po, 1);
    LLVMPassBuilderOptionsSetLoopInterleaving(po, 1);
    LLVMPassBuilderOptionsSetLoopUnrolling(po, 1);
    LLVMErrorRef e = LLVMRunPasses(m, "default<O3>", opt_tm, po);
    if (e) jit_fail(e, "optimisation failed");
    LLVMDisposePassBuilderOptions(po);
  }
  if (mc_debug.jit) LLVMDumpModule(m); /* debugging: the IR after O3 */
  LLVMOrcThreadSafeModuleRef tsm = LLVMOrcCreateNewThreadSafeModule(m, ts);
  LLVMOrcDisposeThreadSafeContext(ts);
  LLVMErrorRef e = LLVMOrcLLJITAddLLVMIRModule(jit, LLVMOrcLLJITGetMainJITDylib(jit), tsm);
  if (e) jit_fail(e, "cannot add a module");
  LLVMOrcExecutorAddress addr = 0;
  e = LLVMOrcLLJITLookup(jit, &addr, fn);
  if (e) jit_fail(e, "cannot compile");
  return (void *)(uintptr_t)addr;
}

void cg_jit_lock(void) {
  pthread_mutex_lock(&jit_mu);
}
void cg_jit_unlock(void) {
  pthread_mutex_unlock(&jit_mu);
}
bool cg_jit_init_locked(void) {
  return jit_init_locked();
}
int cg_jit_next_id(void) {
  return jit_counter++;
}

/* ---------------------------------------------------------------- code generation */

typedef struct Gen {
  LLVMContextRef c;
  LLVMModuleRef m;
  LLVMBuilderRef b;
  LLVMTypeRef rt; /* float or double */
  bool f64;
} Gen;

/* A float32 constant given as a C float (so it is the literal's own rounding). */
static LLVMValueRef kf(Gen *G, float v) {
  return LLVMConstReal(G->rt, (double)v);
}
/* A constant of the working precision: (real)v, as the kernels cast their attributes. */
static LLVMValueRef kr(Gen *G, double v) {
  return G->f64 ? LLVMConstReal(G->rt, v) : kf(G, (float)v);
}

static LLVMValueRef jadd(Gen *G, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFAdd(G->b, a, b, "");
}
static LLVMValueRef jsub(Gen *G, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFSub(G->b, a, b, "");
}
static LLVMValueRef jmul(Gen *G, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFMul(G->b, a, b, "");
}
static LLVMValueRef jdiv(Gen *G, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildFDiv(G->b, a, b, "");
}
static LLVMValueRef jneg(Gen *G, LLVMValueRef a) {
  return LLVMBuildFNeg(G->b, a, "");
}
/* c ? x : y with c an ordered comparison, as C's < and > are */
static LLVMValueRef sel(Gen *G, LLVMRealPredicate p, LLVMValueRef l, LLVMValueRef r, LLVMValueRef x,
                        LLVMValueRef y) {
  return LLVMBuildSelect(G->b, LLVMBuildFCmp(G->b, p, l, r, ""), x, y, "");
}

/* A call to a libm function real(real). */
static LLVMValueRef libm(Gen *G, const char *name, LLVMValueRef x) {
  LLVMTypeRef fty = LLVMFunctionType(G->rt, &G->rt, 1, 0);
  LLVMValueRef f = LLVMGetNamedFunction(G->m, name);
  if (!f) f = LLVMAddFunction(G->m, name, fty);
  return LLVMBuildCall2(G->b, fty, f, &x, 1, "");
}

/* rt_expf (kernels_dense.c), operation for operation */
static LLVMValueRef gen_expf(Gen *G, LLVMValueRef x) {
  x = sel(G, LLVMRealOLT, x, kf(G, -87.0f), kf(G, -87.0f), x);
  x = sel(G, LLVMRealOGT, x, kf(G, 88.0f), kf(G, 88.0f), x);
  LLVMValueRef nf = jsub(G, jadd(G, jmul(G, x, kf(G, 1.44269504088896341f)), kf(G, 12582912.0f)),
                         kf(G, 12582912.0f));
  LLVMValueRef r = jsub(G, x, jmul(G, nf, kf(G, 0.693359375f)));
  r = jsub(G, r, jmul(G, nf, kf(G, -2.12194440e-4f)));
  LLVMValueRef p = kf(G, 1.9875691500e-4f);
  p = jadd(G, jmul(G, p, r), kf(G, 1.3981999507e-3f));
  p = jadd(G, jmul(G, p, r), kf(G, 8.3334519073e-3f));
  p = jadd(G, jmul(G, p, r), kf(G, 4.1665795894e-2f));
  p = jadd(G, jmul(G, p, r), kf(G, 1.6666665459e-1f));
  p = jadd(G, jmul(G, p, r), kf(G, 5.0000001201e-1f));
  p = jadd(G, jadd(G, jmul(G, jmul(G, p, r), r), r), kf(G, 1.0f));
  LLVMTypeRef i32 = LLVMInt32TypeInContext(G->c);
  LLVMValueRef bits = LLVMBuildFPToSI(G->b, nf, i32, "");
  bits = LLVMBuildAdd(G->b, bits, LLVMConstInt(i32, 127, 0), "");
  bits = LLVMBuildShl(G->b, bits, LLVMConstInt(i32, 23, 0), "");
  LLVMValueRef scale = LLVMBuildBitCast(G->b, bits, G->rt, "");
  return jmul(G, p, scale);
}

static LLVMValueRef gen_exp(Gen *G, LLVMValueRef x) {
  return G->f64 ? libm(G, "exp", x) : gen_expf(G, x);
}

/* SIGMOID: rt_sigmoidf / rt_sigmoid = 1 / (1 + EXP(-x)) */
static LLVMValueRef gen_sigmoid(Gen *G, LLVMValueRef x) {
  return jdiv(G, kr(G, 1.0), jadd(G, kr(G, 1.0), gen_exp(G, jneg(G, x))));
}

/* TANH: libm tanh in float64; rt_tanhf in float32 */
static LLVMValueRef gen_tanh(Gen *G, LLVMValueRef x) {
  if (G->f64) return libm(G, "tanh", x);
  LLVMValueRef z = jmul(G, x, x);
  LLVMValueRef p = kf(G, -5.70498872745e-3f);
  p = jadd(G, jmul(G, p, z), kf(G, 2.06390887954e-2f));
  p = jsub(G, jmul(G, p, z), kf(G, 5.37397155531e-2f));
  p = jadd(G, jmul(G, p, z), kf(G, 1.33314422036e-1f));
  p = jsub(G, jmul(G, p, z), kf(G, 3.33332819422e-1f));
  LLVMValueRef small = jadd(G, x, jmul(G, jmul(G, x, z), p));
  LLVMValueRef big =
      jsub(G, kf(G, 1.0f),
           jdiv(G, kf(G, 2.0f), jadd(G, gen_expf(G, jmul(G, kf(G, 2.0f), x)), kf(G, 1.0f))));
  return sel(G, LLVMRealOLT, z, kf(G, 0.390625f), small, big);
}

/* One instruction: the expression of its op's kernel (kernels_dense.inc). */
static LLVMValueRef gen_op(Gen *G, const FusedInstr *fi, LLVMValueRef a, LLVMValueRef b) {
  LLVMValueRef zero = kr(G, 0.0), one = kr(G, 1.0);
  switch (fi->op) {
  case OP_ADD:
    return jadd(G, a, b);
  case OP_SUB:
    return jsub(G, a, b);
  case OP_MUL:
    return jmul(G, a, b);
  case OP_SCALE:
    return jadd(G, jmul(G, a, kr(G, fi->f0)), kr(G, fi->f1)); /* v*s0 + s1 */
  case OP_RELU:
    return sel(G, LLVMRealOGT, a, zero, a, zero);
  case OP_TANH:
    return gen_tanh(G, a);
  case OP_SIGMOID:
    return gen_sigmoid(G, a);
  case OP_SOFTPLUS: { /* (v > 0 ? v : 0) + LOG1P(EXP(-(v > 0 ? v : -v))) */
    LLVMValueRef pos = sel(G, LLVMRealOGT, a, zero, a, zero);
    LLVMValueRef abs = sel(G, LLVMRealOGT, a, zero, a, jneg(G, a));
    return jadd(G, pos, libm(G, G->f64 ? "log1p" : "log1pf", gen_exp(G, jneg(G, abs))));
  }
  case OP_RELU_BWD:
    return sel(G, LLVMRealOGT, b, zero, a, zero); /* v > 0 ? g : 0 */
  case OP_TANH_BWD:
    return jmul(G, a, jsub(G, one, jmul(G, b, b))); /* g * (1 - v*v) */
  case OP_SIGMOID_BWD:
    return jmul(G, jmul(G, a, b), jsub(G, one, b)); /* g * v * (1 - v) */
  case OP_SOFTPLUS_BWD:
    return jmul(G, a, gen_sigmoid(G, b)); /* g * SIGMOID(v) */
  default:
    mc_fatal("fused program: op '%s' is not fusable", ir_ops[fi->op].name);
  }
}

/* The whole kernel: void f(ctx, node, in, out) loads the buffer pointers and calls
 * body(in_0.., out_0..), the loop over N elements. body's pointers are noalias: the
 * memory plan never lets a fused node's outputs share memory with each other or with
 * its inputs (OP_FUSED is not in-place), and without it the vectoriser needs a
 * run-time overlap check per pair of pointers and gives up past a few of them. */
static void gen_kernel(Gen *G, const char *fname, const FusedProg *pr, int64_t N,
                       const bool *bcast) {
  LLVMContextRef c = G->c;
  LLVMTypeRef i8p = LLVMPointerType(LLVMInt8TypeInContext(c), 0);
  LLVMTypeRef i8pp = LLVMPointerType(i8p, 0);
  LLVMTypeRef rp = LLVMPointerType(G->rt, 0);
  LLVMTypeRef i64 = LLVMInt64TypeInContext(c);
  LLVMTypeRef void_t = LLVMVoidTypeInContext(c);
  int np = pr->nin + pr->nout;
  LLVMTypeRef *bparams = mc_calloc((size_t)np, sizeof(LLVMTypeRef));
  for (int k = 0; k < np; k++)
    bparams[k] = rp;
  LLVMTypeRef bty = LLVMFunctionType(void_t, bparams, (unsigned)np, 0);
  char bname[64];
  snprintf(bname, sizeof bname, "%s_body", fname);
  LLVMValueRef body = LLVMAddFunction(G->m, bname, bty);
  LLVMSetLinkage(body, LLVMInternalLinkage);
  unsigned noalias = LLVMGetEnumAttributeKindForName("noalias", 7);
  for (int k = 0; k < np; k++)
    LLVMAddAttributeAtIndex(body, (unsigned)k + 1, LLVMCreateEnumAttribute(c, noalias, 0));

  /* the KernelFn: pointers out of in[] and out[], one call */
  LLVMTypeRef params[4] = {i8p, i8p, i8pp, i8pp};
  LLVMValueRef f = LLVMAddFunction(G->m, fname, LLVMFunctionType(void_t, params, 4, 0));
  LLVMPositionBuilderAtEnd(G->b, LLVMAppendBasicBlockInContext(c, f, "entry"));
  LLVMValueRef *args = mc_calloc((size_t)np, sizeof(LLVMValueRef));
  for (int k = 0; k < np; k++) {
    bool in = k < pr->nin;
    LLVMValueRef idx = LLVMConstInt(i64, (unsigned long long)(in ? k : k - pr->nin), 0);
    LLVMValueRef pp = LLVMBuildGEP2(G->b, i8p, LLVMGetParam(f, in ? 2 : 3), &idx, 1, "");
    args[k] = LLVMBuildBitCast(G->b, LLVMBuildLoad2(G->b, i8p, pp, ""), rp, "");
  }
  LLVMBuildCall2(G->b, bty, body, args, (unsigned)np, "");
  LLVMBuildRetVoid(G->b);

  /* body: the loop */
  LLVMBasicBlockRef entry = LLVMAppendBasicBlockInContext(c, body, "entry");
  LLVMBasicBlockRef loop = LLVMAppendBasicBlockInContext(c, body, "loop");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c, body, "done");
  LLVMPositionBuilderAtEnd(G->b, entry);
  LLVMValueRef *slot = mc_calloc((size_t)(pr->nin + pr->nops), sizeof(LLVMValueRef));
  for (int s = 0; s < pr->nin; s++)
    if (bcast[s])
      slot[s] = LLVMBuildLoad2(G->b, G->rt, LLVMGetParam(body, (unsigned)s), ""); /* once */
  LLVMBuildBr(G->b, loop);
  LLVMPositionBuilderAtEnd(G->b, loop);
  LLVMValueRef i = LLVMBuildPhi(G->b, i64, "i");
  for (int s = 0; s < pr->nin; s++)
    if (!bcast[s])
      slot[s] = LLVMBuildLoad2(
          G->b, G->rt, LLVMBuildGEP2(G->b, G->rt, LLVMGetParam(body, (unsigned)s), &i, 1, ""), "");
  for (int k = 0; k < pr->nops; k++) {
    const FusedInstr *fi = &pr->ops[k];
    slot[pr->nin + k] = gen_op(G, fi, slot[fi->a], fi->b >= 0 ? slot[fi->b] : NULL);
  }
  for (int j = 0; j < pr->nout; j++)
    LLVMBuildStore(
        G->b, slot[pr->outs[j]],
        LLVMBuildGEP2(G->b, G->rt, LLVMGetParam(body, (unsigned)(pr->nin + j)), &i, 1, ""));
  LLVMValueRef next = LLVMBuildAdd(G->b, i, LLVMConstInt(i64, 1, 0), "");
  LLVMValueRef more =
      LLVMBuildICmp(G->b, LLVMIntSLT, next, LLVMConstInt(i64, (unsigned long long)N, 0), "");
  LLVMBuildCondBr(G->b, more, loop, done);
  LLVMValueRef zero64 = LLVMConstInt(i64, 0, 0);
  LLVMAddIncoming(i, &zero64, &entry, 1);
  LLVMAddIncoming(i, &next, &loop, 1);
  LLVMPositionBuilderAtEnd(G->b, done);
  LLVMBuildRetVoid(G->b);
  mc_free(bparams);
  mc_free(args);
  mc_free(slot);
}

/* ---------------------------------------------------------------- the cache */

typedef struct CacheEntry {
  uint64_t hash;
  char *key;
  KernelFn fn;
} CacheEntry;
static CacheEntry *cache;
static int ncache, cap_cache;

static void key_append(McBuf *b, const FusedProg *pr, int64_t N, const bool *bcast,
                       Precision prec) {
  mc_buf_printf(b, "%s n=%lld in=%d:", prec == PREC_F64 ? "f64" : "f32", (long long)N, pr->nin);
  for (int s = 0; s < pr->nin; s++)
    mc_buf_printf(b, "%c", bcast[s] ? 's' : 'v');
  for (int k = 0; k < pr->nops; k++)
    mc_buf_printf(b, ";%d(%d,%d,%a,%a)", (int)pr->ops[k].op, pr->ops[k].a, pr->ops[k].b,
                  pr->ops[k].f0, pr->ops[k].f1);
  mc_buf_printf(b, "->");
  for (int j = 0; j < pr->nout; j++)
    mc_buf_printf(b, "%d,", pr->outs[j]);
}

static uint64_t str_hash(const char *s) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

KernelFn cg_jit_fused(const Node *n, Precision prec) {
  const FusedProg *pr = ir_fused_prog(n);
  if (!pr) mc_fatal("node %d: fused op without a program (made outside the fusion pass?)", n->id);
  int64_t N = n->out[0]->numel;
  MOEC_ASSERT(N > 0);
  bool *bcast = mc_calloc((size_t)pr->nin + 1, sizeof(bool));
  for (int s = 0; s < pr->nin; s++)
    bcast[s] = n->in[s]->numel == 1 && N != 1;
  McBuf key = {0};
  key_append(&key, pr, N, bcast, prec);
  uint64_t h = str_hash(key.data);
  pthread_mutex_lock(&jit_mu);
  if (!jit_init_locked()) mc_fatal("fused op: the LLVM native target is not available");
  KernelFn fn = NULL;
  for (int i = 0; i < ncache && !fn; i++)
    if (cache[i].hash == h && !strcmp(cache[i].key, key.data)) fn = cache[i].fn;
  if (fn) {
    n_hits++;
  } else {
    char fname[48];
    snprintf(fname, sizeof fname, "moec_fused_%d", jit_counter++);
    LLVMOrcThreadSafeContextRef ts = LLVMOrcCreateNewThreadSafeContext();
    Gen G = {0};
    G.c = LLVMOrcThreadSafeContextGetContext(ts);
    G.m = LLVMModuleCreateWithNameInContext(fname, G.c);
    G.b = LLVMCreateBuilderInContext(G.c);
    G.f64 = prec == PREC_F64;
    G.rt = G.f64 ? LLVMDoubleTypeInContext(G.c) : LLVMFloatTypeInContext(G.c);
    gen_kernel(&G, fname, pr, N, bcast);
    LLVMDisposeBuilder(G.b);
    fn = (KernelFn)cg_jit_compile_module(ts, G.m, fname, true);
    if (ncache == cap_cache) {
      cap_cache = cap_cache ? 2 * cap_cache : 32;
      cache = mc_realloc(cache, (size_t)cap_cache * sizeof *cache);
    }
    cache[ncache++] = (CacheEntry){h, key.data, fn}; /* the cache keeps the key */
    key = (McBuf){0};
    n_compiled++;
  }
  pthread_mutex_unlock(&jit_mu);
  mc_buf_free(&key);
  mc_free(bcast);
  return fn;
}

void cg_jit_stats(int *compiled, int *hits) {
  if (compiled) *compiled = n_compiled;
  if (hits) *hits = n_hits;
}

#else /* no LLVM: fusion never runs (pass_fusion_enabled), so no fused node reaches here */

bool cg_jit_available(void) {
  return false;
}
KernelFn cg_jit_fused(const Node *n, Precision prec) {
  (void)prec;
  mc_fatal("node %d: fused op, but moec was built without LLVM (MOEC_LLVM=OFF)", n->id);
}
void cg_jit_stats(int *compiled, int *hits) {
  if (compiled) *compiled = 0;
  if (hits) *hits = 0;
}

#endif
