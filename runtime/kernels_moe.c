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
#include "split.h"

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
  int64_t n = 0;
  MoeTask *t = mc_malloc((size_t)MC_MAX(1, E * MOE_MAX_PIECES) * sizeof(MoeTask));
  for (int64_t e = 0; e < E; e++) {
    int64_t rows = off[e + 1] - off[e];
    if (rows == 0 && !keep_empty) continue;
    double f = 2.0 * (double)rows * (double)Kd * (double)cols;
    int64_t p = rt_moe_pieces(f, cols);
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

/* ---------------------------------------------------------------- gate noise */

#include "fastmath.h" /* rt_noise_*, rt_softplusf, rt_sigmoidf */

/* The draws of pairs p0 .. p0+np-1 (fastmath.h): z[2j], z[2j+1] = pair p0+j's two
 * normals. float32: the polynomials, in three vectorisable loops (uniforms from the
 * hashes, Box-Muller, interleave); float64: libm. np <= MOE_NOISE_BLOCK / 2 + 1. */
#define MOE_NOISE_BLOCK 512
static VEC void noise_pairs_f32(uint64_t key, uint64_t p0, int64_t np, float *z) {
  float u1[MOE_NOISE_BLOCK / 2 + 1], u2[MOE_NOISE_BLOCK / 2 + 1];
  float z0[MOE_NOISE_BLOCK / 2 + 1], z1[MOE_NOISE_BLOCK / 2 + 1];
  for (int64_t j = 0; j < np; j++) {
    uint64_t r = rt_noise_bits(key, p0 + (uint64_t)j);
    u1[j] = rt_noise_u1(r);
    u2[j] = rt_noise_u2(r);
  }
  for (int64_t j = 0; j < np; j++) {
    float rad = sqrtf(-2.0f * rt_logf(u1[j])), c, s;
    rt_cossin2pif(u2[j], &c, &s);
    z0[j] = rad * c;
    z1[j] = rad * s;
  }
  for (int64_t j = 0; j < np; j++) {
    z[2 * j] = z0[j];
    z[2 * j + 1] = z1[j];
  }
}
static void noise_pairs_f64(uint64_t key, uint64_t p0, int64_t np, double *z) {
  for (int64_t j = 0; j < np; j++)
    rt_noise_pair(rt_noise_bits(key, p0 + (uint64_t)j), &z[2 * j], &z[2 * j + 1]);
}

/* sigma = softplus(raw) + 0.01, noisy = clean + sigma * eps over m elements
 * (float32 in float32 with rt_softplusf; float64 with libm) */
static VEC void noise_apply_f32(const float *clean, const float *raw, const float *z, float *noisy,
                                float *sigma, float *eps, int64_t m) {
  for (int64_t i = 0; i < m; i++)
    sigma[i] = rt_softplusf(raw[i]) + 0.01f;
  for (int64_t i = 0; i < m; i++) {
    eps[i] = z[i];
    noisy[i] = clean[i] + sigma[i] * z[i];
  }
}
static void noise_apply_f64(const double *clean, const double *raw, const double *z, double *noisy,
                            double *sigma, double *eps, int64_t m) {
  for (int64_t i = 0; i < m; i++) {
    double s = moe_softplus(raw[i]) + 0.01;
    sigma[i] = s;
    eps[i] = z[i];
    noisy[i] = clean[i] + s * z[i];
  }
}

/* The smooth load's row terms over w experts: acc[e] += Phi((clean - t) / sigma),
 * t = t1 if noisy > t1 else t0 (float32: rt_normcdff; float64: erfc), sums in double */
static VEC void load_phi_acc_f32(const float *cr, const float *nr, const float *sr, float t0,
                                 float t1, double *acc, int64_t w) {
  for (int64_t e = 0; e < w; e++)
    acc[e] += (double)rt_normcdff((cr[e] - (nr[e] > t1 ? t1 : t0)) / sr[e]);
}
static void load_phi_acc_f64(const double *cr, const double *nr, const double *sr, double t0,
                             double t1, double *acc, int64_t w) {
  for (int64_t e = 0; e < w; e++)
    acc[e] += moe_phi((cr[e] - (nr[e] > t1 ? t1 : t0)) / sr[e]);
}

/* A row of the smooth load's gradient over E experts, z = (clean - t) / sigma:
 * dclean = g * pdf(z) / sigma, dsigma = -dclean * z; both 0 where z is not finite
 * (t = -inf when k == E: Phi = 1, no gradient). Returns the thresholds' gradients
 * -sum dclean over the experts on each side (d[1]: noisy > t1), in expert order. */
static VEC void load_grad_row_f32(const float *g, const float *cr, const float *nr, const float *sr,
                                  float t0, float t1, float *dclean, float *dsigma, int64_t E) {
  for (int64_t e = 0; e < E; e++) {
    float s = sr[e], z = (cr[e] - (nr[e] > t1 ? t1 : t0)) / s;
    bool fin = fabsf(z) < INFINITY;
    float a = fin ? g[e] * rt_normpdff(z) / s : 0.0f;
    dclean[e] = a;
    dsigma[e] = fin ? -a * z : 0.0f;
  }
}
static void load_grad_row_f64(const double *g, const double *cr, const double *nr, const double *sr,
                              double t0, double t1, double *dclean, double *dsigma, int64_t E) {
  for (int64_t e = 0; e < E; e++) {
    double s = sr[e], z = (cr[e] - (nr[e] > t1 ? t1 : t0)) / s;
    bool fin = isfinite(z);
    double a = fin ? g[e] * moe_pdf(z) / s : 0.0;
    dclean[e] = a;
    dsigma[e] = fin ? -a * z : 0.0;
  }
}

/* draw = (g_noisy * eps + g_sigma) * sigmoid(raw) over m elements */
static VEC void noise_bwd_apply_f32(const float *gn, const float *gs, const float *eps,
                                    const float *raw, float *draw, int64_t m) {
  for (int64_t i = 0; i < m; i++)
    draw[i] = (gn[i] * eps[i] + gs[i]) * rt_sigmoidf(raw[i]);
}
static void noise_bwd_apply_f64(const double *gn, const double *gs, const double *eps,
                                const double *raw, double *draw, int64_t m) {
  for (int64_t i = 0; i < m; i++)
    draw[i] = (gn[i] * eps[i] + gs[i]) * moe_sigmoid(raw[i]);
}

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
