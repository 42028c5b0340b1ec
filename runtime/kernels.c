/* kernels.c: the CPU kernel tables, one per precision; the GEMMs they share, split
 * over the worker threads (threads.c). */
#include <cblas.h>

#include "runtime.h"
#include "split.h"

static KernelFn table_f32[OP_COUNT], table_f64[OP_COUNT];
static bool filled;

const KernelFn *rt_cpu_kernels(Precision p) {
  rt_threads(); /* OpenBLAS to one thread before any kernel runs */
  if (!filled) {
    rt_kern_dense_register(table_f32, table_f64);
    rt_kern_moe_register(table_f32, table_f64);
    rt_kern_comm_register(table_f32, table_f64);
    rt_kern_rows_register(table_f32, table_f64);
    filled = true;
  }
  return p == PREC_F64 ? table_f64 : table_f32;
}

int rt_blas_int(int64_t v, const Node *n) {
  if (v > 2147483647)
    mc_die("%d:%d: %s'%s': a matrix dimension of %lld exceeds 2147483647 (2^31 - 1), the most "
           "OpenBLAS takes",
           n->loc.line, n->loc.col, n->layer ? "layer " : "op ",
           n->layer ? n->layer : ir_ops[n->op].name, (long long)v);
  return (int)v;
}

/* ---- GEMMs split over threads ----
 *
 * A GEMM splits into 2 or 4 pieces (by its flops) along C's rows (M), or along the
 * contraction (K) when K dwarfs M and N (each piece then writes a partial C, added in
 * piece order), or along C's columns (N) when there are too few rows or N dwarfs M.
 * Measured on OpenBLAS 0.3.21 (one thread a piece): more pieces repeat more packing and
 * lose more than they balance; every piece packs the whole of the operand it does not
 * split, so a wide C ([640, 10000] = [640, 256] . [256, 10000], the softmax's logits)
 * splits by columns (5% less CPU time than by rows). The pieces depend on the shape
 * alone: the result is the same for any thread count. */

/* the split rules and their constants: split.h (shared with the cost model) */

typedef struct Gemm {
  bool dbl, ta, tb;
  GemmSplit split;
  int64_t M, N, K, lda, ldb, ldc, pieces, units;
  double alpha, beta;
  const void *A, *B;
  void *C;
  void *part; /* SPLIT_K: pieces 1.. write [M, N] partials here */
} Gemm;

static void gemm_call(const Gemm *g, int64_t M, int64_t N, int64_t K, size_t ao, size_t bo, void *C,
                      int64_t ldc, double beta) {
  CBLAS_TRANSPOSE TA = g->ta ? CblasTrans : CblasNoTrans, TB = g->tb ? CblasTrans : CblasNoTrans;
  if (g->dbl)
    cblas_dgemm(CblasRowMajor, TA, TB, (int)M, (int)N, (int)K, g->alpha, (const double *)g->A + ao,
                (int)g->lda, (const double *)g->B + bo, (int)g->ldb, beta, C, (int)ldc);
  else
    cblas_sgemm(CblasRowMajor, TA, TB, (int)M, (int)N, (int)K, (float)g->alpha,
                (const float *)g->A + ao, (int)g->lda, (const float *)g->B + bo, (int)g->ldb,
                (float)beta, C, (int)ldc);
}

/* Piece i: rows, columns or contraction indices [lo, hi), edges at GEMM_UNIT multiples. */
static void gemm_piece(void *arg, int64_t i) {
  const Gemm *g = arg;
  int64_t len = g->split == SPLIT_M ? g->M : g->split == SPLIT_N ? g->N : g->K;
  int64_t lo = MC_MIN(len, rt_chunk_lo(g->units, g->pieces, i) * GEMM_UNIT);
  int64_t hi = MC_MIN(len, rt_chunk_lo(g->units, g->pieces, i + 1) * GEMM_UNIT);
  size_t es = g->dbl ? sizeof(double) : sizeof(float);
  if (g->split == SPLIT_M) /* rows of op(A) and C */
    gemm_call(g, hi - lo, g->N, g->K, (size_t)(g->ta ? lo : lo * g->lda), 0,
              (char *)g->C + (size_t)(lo * g->ldc) * es, g->ldc, g->beta);
  else if (g->split == SPLIT_N) /* columns of op(B) and C */
    gemm_call(g, g->M, hi - lo, g->K, 0, (size_t)(g->tb ? lo * g->ldb : lo),
              (char *)g->C + (size_t)lo * es, g->ldc, g->beta);
  else if (i == 0) /* columns [lo, hi) of op(A), rows of op(B); piece 0 into C */
    gemm_call(g, g->M, g->N, hi - lo, 0, 0, g->C, g->ldc, g->beta);
  else
    gemm_call(g, g->M, g->N, hi - lo, (size_t)(g->ta ? lo * g->lda : lo),
              (size_t)(g->tb ? lo : lo * g->ldb),
              (char *)g->part + (size_t)((i - 1) * g->M * g->N) * es, g->N, 0.0);
}

/* SPLIT_K: rows [lo, hi) of C += the partials, in piece order */
static void gemm_sum_rows(void *arg, int64_t lo, int64_t hi) {
  const Gemm *g = arg;
  for (int64_t r = lo; r < hi; r++)
    for (int64_t i = 1; i < g->pieces; i++) {
      size_t at = (size_t)((i - 1) * g->M * g->N + r * g->N);
      if (g->dbl) {
        double *c = (double *)g->C + r * g->ldc;
        const double *q = (const double *)g->part + at;
        for (int64_t j = 0; j < g->N; j++)
          c[j] += q[j];
      } else {
        float *c = (float *)g->C + r * g->ldc;
        const float *q = (const float *)g->part + at;
        for (int64_t j = 0; j < g->N; j++)
          c[j] += q[j];
      }
    }
}

static void gemm_run(Gemm *g) {
  if (g->M <= 0 || g->N <= 0) return;
  int64_t len, p = rt_gemm_shape(g->M, g->N, g->K, &g->split, &len);
  g->units = (len + GEMM_UNIT - 1) / GEMM_UNIT;
  g->pieces = p;
  if (p == 1) g->split = SPLIT_M;
  size_t es = g->dbl ? sizeof(double) : sizeof(float);
  g->part = g->split == SPLIT_K ? mc_malloc((size_t)((p - 1) * g->M * g->N) * es) : NULL;
  rt_parallel(p, gemm_piece, g);
  if (g->split == SPLIT_K) rt_parallel_rows(g->M, g->N * (p - 1), gemm_sum_rows, g);
  mc_free(g->part);
}

void rt_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  Gemm g = {.ta = ta,
            .tb = tb,
            .M = M,
            .N = N,
            .K = K,
            .lda = lda,
            .ldb = ldb,
            .ldc = ldc,
            .alpha = alpha,
            .beta = beta,
            .A = A,
            .B = B,
            .C = C};
  gemm_run(&g);
}

void rt_dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
              int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
  Gemm g = {.dbl = true,
            .ta = ta,
            .tb = tb,
            .M = M,
            .N = N,
            .K = K,
            .lda = lda,
            .ldb = ldb,
            .ldc = ldc,
            .alpha = alpha,
            .beta = beta,
            .A = A,
            .B = B,
            .C = C};
  gemm_run(&g);
}

/* ---- the cpu backend: host memory ---- */
#include <stdlib.h>
#include <string.h>

/* The program's buffers (parameters, gradients, arena, expert-row region): huge pages
 * from 2 MiB on (mc_try_calloc_big). */
static void *cpu_alloc(size_t n) {
  return mc_try_calloc_big(n);
}
static void cpu_release(void *p) {
  free(p);
}
static void cpu_copy(void *dst, const void *src, size_t n) {
  memcpy(dst, src, n);
}
static void cpu_sync(void) {}

const Backend rt_backend_cpu = {"cpu",    rt_cpu_kernels, cpu_alloc, cpu_release,
                                cpu_copy, cpu_copy,       cpu_copy,  cpu_sync};

#ifndef MOEC_HAVE_CUDA
const Backend *rt_backend_cuda(void) {
  return NULL;
}
#endif
