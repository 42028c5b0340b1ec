/* kernels.c: the CPU kernel tables, one per precision; the GEMMs they share, split
 * over the worker threads (threads.c). */
#include <cblas.h>

#include "runtime.h"

static KernelFn table_f32[OP_COUNT], table_f64[OP_COUNT];
static bool filled;

const KernelFn *rt_cpu_kernels(Precision p) {
  rt_threads(); /* OpenBLAS to one thread before any kernel runs */
  if (!filled) {
    rt_kern_dense_register(table_f32, table_f64);
    rt_kern_moe_register(table_f32, table_f64);
    rt_kern_comm_register(table_f32, table_f64);
    filled = true;
  }
  return p == PREC_F64 ? table_f64 : table_f32;
}

/* ---- GEMMs split over threads ---- */

#define GEMM_MAX_PIECES 16
#define GEMM_UNIT 16 /* piece edges at multiples of this (a vector of floats) */
/* Every piece packs the whole operand it does not split: a piece must do at least
 * GEMM_PACK_FLOPS flops per element of it (packing one costs about that many). */
#define GEMM_PACK_FLOPS 256.0
#define GEMM_MIN_FLOPS 2e6 /* below this a GEMM is one task */

typedef struct Gemm {
  bool dbl, ta, tb, by_cols;
  int64_t M, N, K, lda, ldb, ldc, pieces, units;
  double alpha, beta;
  const void *A, *B;
  void *C;
} Gemm;

/* Piece i of the GEMM: C's rows or columns [lo, hi) in units of GEMM_UNIT. */
static void gemm_piece(void *arg, int64_t i) {
  const Gemm *g = arg;
  int64_t dim = g->by_cols ? g->N : g->M;
  int64_t lo = MC_MIN(dim, rt_chunk_lo(g->units, g->pieces, i) * GEMM_UNIT);
  int64_t hi = MC_MIN(dim, rt_chunk_lo(g->units, g->pieces, i + 1) * GEMM_UNIT);
  if (hi <= lo) return;
  int64_t M = g->by_cols ? g->M : hi - lo, N = g->by_cols ? hi - lo : g->N;
  /* the piece's offsets into A (rows of op(A)) or B (columns of op(B)) and C */
  int64_t ao = g->by_cols ? 0 : (g->ta ? lo : lo * g->lda);
  int64_t bo = g->by_cols ? (g->tb ? lo * g->ldb : lo) : 0;
  int64_t co = g->by_cols ? lo : lo * g->ldc;
  CBLAS_TRANSPOSE TA = g->ta ? CblasTrans : CblasNoTrans, TB = g->tb ? CblasTrans : CblasNoTrans;
  if (g->dbl)
    cblas_dgemm(CblasRowMajor, TA, TB, (int)M, (int)N, (int)g->K, g->alpha,
                (const double *)g->A + ao, (int)g->lda, (const double *)g->B + bo, (int)g->ldb,
                g->beta, (double *)g->C + co, (int)g->ldc);
  else
    cblas_sgemm(CblasRowMajor, TA, TB, (int)M, (int)N, (int)g->K, (float)g->alpha,
                (const float *)g->A + ao, (int)g->lda, (const float *)g->B + bo, (int)g->ldb,
                (float)g->beta, (float *)g->C + co, (int)g->ldc);
}

/* Splits C into pieces along the side whose whole other operand is cheaper to pack
 * once per piece (columns: op(A) [M,K]; rows: op(B) [K,N]), as many as that packing
 * pays for, at least two for a GEMM worth splitting. The pieces depend on the shape
 * only, so the result does not depend on the thread count. */
static void gemm_run(Gemm *g) {
  if (g->M <= 0 || g->N <= 0) return;
  g->by_cols = g->N >= g->M;
  int64_t dim = g->by_cols ? g->N : g->M;
  g->units = (dim + GEMM_UNIT - 1) / GEMM_UNIT;
  double flops = 2.0 * (double)g->M * (double)g->N * (double)MC_MAX(g->K, 1);
  double packed = (double)(g->by_cols ? g->M : g->N) * (double)MC_MAX(g->K, 1);
  int64_t p = (int64_t)(flops / (GEMM_PACK_FLOPS * packed));
  if (flops >= 8 * GEMM_MIN_FLOPS) p = MC_MAX(p, 2);
  if (flops < GEMM_MIN_FLOPS) p = 1;
  g->pieces = MC_MAX(1, MC_MIN(MC_MIN(g->units, GEMM_MAX_PIECES), p));
  rt_parallel(g->pieces, gemm_piece, g);
}

void rt_sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  Gemm g = {false, ta, tb, false, M, N, K, lda, ldb, ldc, 0, 0, alpha, beta, A, B, C};
  gemm_run(&g);
}

void rt_dgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
              int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
  Gemm g = {true, ta, tb, false, M, N, K, lda, ldb, ldc, 0, 0, alpha, beta, A, B, C};
  gemm_run(&g);
}

int64_t rt_chunks(int64_t R, int64_t cost) {
  if (R <= 1) return 1;
  int64_t per = MC_MAX(1, (RT_GRAIN + MC_MAX(cost, 1) - 1) / MC_MAX(cost, 1)); /* rows per task */
  return MC_MAX(1, MC_MIN(MC_MIN(R, RT_MAX_TASKS), R / per));
}

/* ---- the cpu backend: host memory ---- */
#include <stdlib.h>
#include <string.h>

static void *cpu_alloc(size_t n) {
  return calloc(1, n ? n : 1);
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
