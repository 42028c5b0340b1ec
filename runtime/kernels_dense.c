/* kernels_dense.c: CPU kernels of the dense ops in ops.def, in float32 and
 * float64. The bodies live once in kernels_dense.inc (the sequence ops', which
 * share its helpers, in kernels_seq.inc; the sampled softmax's in kernels_sampled.inc)
 * and are instantiated here twice (real = float / double); GEMMs go through OpenBLAS
 * (row-major, no copies). Every kernel is deterministic: fixed loop orders, reductions
 * in double, work split over threads by shape only (threads.c), so the same bits with
 * any thread count. Prefix: rt_. */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "runtime.h"
#include "split.h"

/* A token id or target outside [0, V): a user error (bad data), named by layer. */
_Noreturn static void rt_bad_id(const Node *n, const char *what, int32_t id, int64_t V) {
  if (n->layer)
    mc_die("layer '%s': %s %d is outside the vocabulary [0, %lld) (op %s)", n->layer, what, (int)id,
           (long long)V, ir_ops[n->op].name);
  mc_die("%s %d is outside the vocabulary [0, %lld) (op %s)", what, (int)id, (long long)V,
         ir_ops[n->op].name);
}

/* xent's normaliser: fa[0], or 1/(N * ndevices * accum) with N this device's rows when
 * fa[0] = 0: the mean over the step's whole batch, every device and micro-batch. */
static double xent_scale(const KernelCtx *ctx, const Node *n) {
  if (n->fa[0] != 0) return n->fa[0];
  bool fwd = n->op == OP_XENT || n->op == OP_SAMPLED_XENT ||
             n->op == OP_SAMPLED_XENT_ROWS; /* their rows: input 0 */
  int64_t rows = fwd ? n->in[0]->shape[0] : n->in[1]->shape[0];
  int nd = ctx->ndevices > 0 ? ctx->ndevices : 1;
  return 1.0 / ((double)rows * (double)nd * (double)MC_MAX(ctx->accum, 1));
}

/* ---------------------------------------------------------------- vectorised float32 math
 *
 * The float32 kernels' hot loops (exp in softmax / xent, the LSTM cell, activations)
 * are VEC functions: GCC compiles them for AVX2 and AVX-512 besides the baseline and
 * picks one at load time (target_clones). This file is compiled with no-trapping-math
 * (moec never reads floating-point exception flags; without it GCC keeps the clamps
 * below as branches and does not vectorise) and the dynamic cost model (-O2's
 * very-cheap one skips loops of unknown length). Results are the same bits in every
 * clone: no FMA contraction (fp-contract=off), and no reassociation. */
#include "vec.h"

#include "fastmath.h" /* rt_expf, rt_sigmoidf, rt_tanhf */

static inline double rt_sigmoid(double x) {
  return 1.0 / (1.0 + exp(-x));
}

/* ---------------------------------------------------------------- instances */

/* GEMM sizes: OpenBLAS takes 32-bit ints (rt_blas_int dies naming the layer past them);
 * checked before the tasks, which then cast */
#define BLAS_CHECK(v) (void)rt_blas_int((v), n)

#define real float
#define K(name) name##_f32
#define GEMM rt_sgemm
#define BLAS_GEMM cblas_sgemm
#define EXP rt_expf
#define LOG1P log1pf
#define TANH rt_tanhf
#define SIGMOID rt_sigmoidf
#define PACKED_GEMM 1 /* the LSTM's recurrent GEMMs on packed W_hh (gemm_pack.c) */
#include "kernels_dense.inc"
#include "kernels_seq.inc"
#include "kernels_sampled.inc"
#undef real
#undef K
#undef GEMM
#undef BLAS_GEMM
#undef EXP
#undef LOG1P
#undef TANH
#undef SIGMOID
#undef PACKED_GEMM

/* float64 is the reference precision (finite-difference checks): libm throughout */
#define real double
#define K(name) name##_f64
#define GEMM rt_dgemm
#define BLAS_GEMM cblas_dgemm
#define EXP exp
#define LOG1P log1p
#define TANH tanh
#define SIGMOID rt_sigmoid
#define PACKED_GEMM 0
#include "kernels_dense.inc"
#include "kernels_seq.inc"
#include "kernels_sampled.inc"
#undef real
#undef K
#undef GEMM
#undef BLAS_GEMM
#undef EXP
#undef LOG1P
#undef TANH
#undef SIGMOID
#undef PACKED_GEMM

void rt_kern_dense_register(KernelFn *f32, KernelFn *f64) {
  register_f32(f32);
  register_f64(f64);
  register_seq_f32(f32);
  register_seq_f64(f64);
  register_sampled_f32(f32);
  register_sampled_f64(f64);
}
