/* kernels_moe.c: CPU kernels of the MoE ops in ops.def (gating, load and
 * importance, dispatch/combine, grouped expert GEMMs, hmoe helpers), in float32
 * and float64. The bodies live once in kernels_moe.inc and are instantiated here
 * twice (real = float / double). Precision-independent helpers (the normal
 * distribution, index checks) are here. Prefix: rt_. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"

/* ---------------------------------------------------------------- helpers */

static double moe_softplus(double x) {
  return (x > 0 ? x : 0) + log1p(exp(-fabs(x)));
}
static double moe_sigmoid(double x) {
  return 1.0 / (1.0 + exp(-x));
}
/* standard normal cdf and density */
static double moe_phi(double z) {
  return 0.5 * erfc(-z * 0.70710678118654752440);
}
static double moe_pdf(double z) {
  return 0.39894228040143267794 * exp(-0.5 * z * z);
}

_Noreturn static void moe_bad(const Node *n, const char *what, long long v, long long lim) {
  mc_die("layer '%s': op %s: %s %lld is outside [0, %lld)", n->layer ? n->layer : "?",
         ir_ops[n->op].name, what, v, lim);
}

/* An expert / row index read from an i32 tensor, checked to lie in [0, lim). */
static inline int32_t moe_check_idx(const Node *n, int32_t i, int64_t lim) {
  if (i < 0 || i >= lim) moe_bad(n, "index", i, lim);
  return i;
}

/* Offsets i32[E+1]: 0 = off[0] <= ... <= off[E] <= R; rows past off[E] are padding
 * (batchwise gating's unused slots; a dispatch fills all R). */
static void moe_check_offsets(const Node *n, const int32_t *off, int64_t E, int64_t R) {
  if (off[0] != 0 || off[E] > R) moe_bad(n, "offsets end", off[E], R + 1);
  for (int64_t e = 0; e < E; e++)
    if (off[e + 1] < off[e]) moe_bad(n, "offsets step", off[e + 1] - off[e], R + 1);
}

static int moe_cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

static void moe_check_range(const Node *n, int64_t r0, int64_t r1, int64_t R) {
  if (r0 < 0 || r1 > R || r1 < r0) moe_bad(n, "group rows end", r1, R + 1);
}

/* GEMM sizes: OpenBLAS takes 32-bit ints (rt_blas_int dies naming the layer past them) */
#define BI(v) rt_blas_int((v), n)

/* ---------------------------------------------------------------- instances */

#define real float
#define K(name) name##_f32
#define GEMM cblas_sgemm
#include "kernels_moe.inc"
#undef real
#undef K
#undef GEMM

#define real double
#define K(name) name##_f64
#define GEMM cblas_dgemm
#include "kernels_moe.inc"
#undef real
#undef K
#undef GEMM

void rt_kern_moe_register(KernelFn *f32, KernelFn *f64) {
  register_f32(f32);
  register_f64(f64);
}
