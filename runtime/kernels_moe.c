/* kernels_moe.c: CPU kernels of the MoE ops in ops.def (gating, load and
 * importance, dispatch/combine, grouped expert GEMMs, hmoe helpers), in float32
 * and float64. The bodies live once in kernels_moe.inc and are instantiated here
 * twice (real = float / double). Precision-independent helpers (the normal
 * distribution, index checks, the task lists of the grouped GEMMs) are here. Work is
 * split over threads by shape and routing only (threads.c). Prefix: rt_. */
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

void rt_moe_check_offsets(const Node *n, const int32_t *off, int64_t E, int64_t R) {
  moe_check_offsets(n, off, E, R);
}

static int moe_cmp_i32(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  return (x > y) - (x < y);
}

static void moe_check_range(const Node *n, int64_t r0, int64_t r1, int64_t R) {
  if (r0 < 0 || r1 > R || r1 < r0) moe_bad(n, "group rows end", r1, R + 1);
}

/* A task of a grouped GEMM: expert e's output columns, piece `piece` of `pieces`. */
typedef struct MoeTask {
  int32_t e, piece, pieces;
  double flops;
} MoeTask;

#define MOE_PIECE_FLOPS 32e6 /* an expert's GEMM splits into pieces of at least this */
#define MOE_MAX_PIECES 8

static int moe_task_cmp(const void *a, const void *b) {
  const MoeTask *x = a, *y = b;
  if (x->flops != y->flops) return x->flops > y->flops ? -1 : 1;
  if (x->e != y->e) return x->e < y->e ? -1 : 1;
  return (x->piece > y->piece) - (x->piece < y->piece);
}

/* The tasks of a grouped GEMM over experts with rows off[e]..off[e+1]: expert e's
 * output ([rows, cols], or [K, cols] for dW) in column pieces fixed by its flops
 * (2 * rows * K * cols) alone, largest first for balance. keep_empty: experts
 * without rows get a task too (dW: zeros). Returns the count; *out: mc_free. */
static int64_t moe_tasks(const int32_t *off, int64_t E, int64_t Kd, int64_t cols, bool keep_empty,
                         MoeTask **out) {
  int64_t units = MC_MAX(1, (cols + 15) / 16), n = 0;
  MoeTask *t = mc_malloc((size_t)MC_MAX(1, E * MOE_MAX_PIECES) * sizeof(MoeTask));
  for (int64_t e = 0; e < E; e++) {
    int64_t rows = off[e + 1] - off[e];
    if (rows == 0 && !keep_empty) continue;
    double f = 2.0 * (double)rows * (double)Kd * (double)cols;
    int64_t p = MC_MAX(1, MC_MIN(MC_MIN(units, MOE_MAX_PIECES), (int64_t)(f / MOE_PIECE_FLOPS)));
    for (int64_t i = 0; i < p; i++)
      t[n++] = (MoeTask){(int32_t)e, (int32_t)i, (int32_t)p, f / (double)p};
  }
  qsort(t, (size_t)n, sizeof *t, moe_task_cmp);
  *out = t;
  return n;
}

/* Columns [*c0, *c1) of a task's piece over cols columns. */
static void moe_piece_cols(const MoeTask *t, int64_t cols, int64_t *c0, int64_t *c1) {
  int64_t units = MC_MAX(1, (cols + 15) / 16);
  *c0 = MC_MIN(cols, rt_chunk_lo(units, t->pieces, t->piece) * 16);
  *c1 = MC_MIN(cols, rt_chunk_lo(units, t->pieces, t->piece + 1) * 16);
}

/* The expert of row r: the e with off[e] <= r < off[e+1] (the last such for empty runs). */
static int64_t moe_expert_of(const int32_t *off, int64_t E, int64_t r) {
  int64_t lo = 0, hi = E; /* off[lo] <= r < off[hi] */
  while (hi - lo > 1) {
    int64_t mid = (lo + hi) / 2;
    if (off[mid] <= r)
      lo = mid;
    else
      hi = mid;
  }
  return lo;
}

/* The few-row expert kernel's loops are VEC functions (vec.h), as kernels_dense.c's. */
#include "vec.h"

/* ---------------------------------------------------------------- instances */

/* GEMM sizes: OpenBLAS takes 32-bit ints (rt_blas_int dies naming the layer past them);
 * checked before the tasks, which then cast */
#define BLAS_CHECK(v) (void)rt_blas_int((v), n)

#define real float
#define K(name) name##_f32
#define GEMM cblas_sgemm
#define GEMM_SPLIT rt_sgemm
#include "kernels_moe.inc"
#undef real
#undef K
#undef GEMM
#undef GEMM_SPLIT

#define real double
#define K(name) name##_f64
#define GEMM cblas_dgemm
#define GEMM_SPLIT rt_dgemm
#include "kernels_moe.inc"
#undef real
#undef K
#undef GEMM
#undef GEMM_SPLIT

void rt_fold_dw(const FoldDW *f, size_t elem, int64_t a, int64_t b, void *out) {
  MOEC_ASSERT(a >= 0 && a <= b && b <= f->E * f->K * f->M);
  if (elem == sizeof(double))
    fold_dw_f64(f, a, b, out);
  else
    fold_dw_f32(f, a, b, out);
}

void rt_kern_moe_register(KernelFn *f32, KernelFn *f64) {
  register_f32(f32);
  register_f64(f64);
}
