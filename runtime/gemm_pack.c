/* gemm_pack.c: float32 GEMMs against a matrix packed once and reused over many calls,
 * C[M,N] (+)= A[M,K] . op(B)[K,N] with few rows M: the LSTM's recurrent GEMMs, which
 * multiply the same W_hh by a few rows of h at every timestep (forward W_hh^T, backward
 * W_hh). OpenBLAS packs B afresh on every call (1 MiB a timestep at 4U = 1024, R = 256)
 * and has no API to keep a packed copy (MKL's cblas_sgemm_pack / sgemm_compute have), so
 * moec packs once per op call into column panels and runs a register-blocked micro-kernel
 * on them: AVX-512, AVX2+FMA, or portable C, the best the CPU has, chosen at run time.
 *
 * Every element of C is one multiply-add chain over k = 0..K-1 in order from 0, then C's
 * old value added (acc), so any panel width, row block or caller's split gives the same
 * bits; the two vector paths fuse each multiply-add (rounded once) and agree bit for
 * bit. The portable path multiplies, then adds (fmaf without FMA hardware is a slow
 * library call): within float32 rounding of them, and one path per process. Prefix: rt_. */
#include <string.h>

#include "runtime.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define RT_X86 1
#endif

/* Panel widths and row blocks per path: AVX-512 8 rows x 32 columns (16 zmm sums),
 * AVX2 6 x 16 (12 ymm sums), portable 4 x 16. */
#define NR_512 32
#define MR_512 8
#define NR_256 16
#define MR_256 6
#define NR_C 16
#define MR_C 4

static int isa_cap = RT_ISA_AVX512; /* rt_gemm_pack_isa's limit */

int rt_cpu_isa(void) {
#ifdef RT_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return RT_ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return RT_ISA_AVX2;
#endif
  return RT_ISA_PORTABLE;
}

int rt_gemm_pack_isa(int cap) {
  if (cap >= 0) isa_cap = cap;
  return MC_MIN(rt_cpu_isa(), isa_cap);
}

const char *rt_gemm_pack_isa_name(int isa) {
  return isa == RT_ISA_AVX512 ? "avx512" : isa == RT_ISA_AVX2 ? "avx2" : "portable";
}

/* ---------------------------------------------------------------- packing */

typedef struct PackJob {
  RtPacked *pk;
  const float *B;
  int64_t ldb;
  bool tb;
} PackJob;

/* Panels [lo, hi): panel p holds op(B)[k, p*nr + c] at p*K*nr + k*nr + c, zero past N. */
static void pack_panels(void *arg, int64_t lo, int64_t hi) {
  const PackJob *j = arg;
  const RtPacked *pk = j->pk;
  int64_t K = pk->K, N = pk->N, nr = pk->nr;
  for (int64_t p = lo; p < hi; p++) {
    float *dst = pk->p + p * K * nr;
    int64_t n0 = p * nr, w = MC_MIN(nr, N - n0);
    if (j->tb) { /* op(B) = B^T: column n of op(B) is row n of B, contiguous in k */
      if (w < nr) memset(dst, 0, (size_t)(K * nr) * sizeof(float));
      for (int64_t c = 0; c < w; c++) {
        const float *src = j->B + (n0 + c) * j->ldb;
        for (int64_t k = 0; k < K; k++)
          dst[k * nr + c] = src[k];
      }
    } else
      for (int64_t k = 0; k < K; k++) {
        memcpy(dst + k * nr, j->B + k * j->ldb + n0, (size_t)w * sizeof(float));
        memset(dst + k * nr + w, 0, (size_t)(nr - w) * sizeof(float));
      }
  }
}

void rt_pack(RtPacked *pk, const float *B, int64_t ldb, bool tb, int64_t K, int64_t N) {
  MOEC_ASSERT(K >= 1 && N >= 1);
  pk->isa = rt_gemm_pack_isa(-1);
  pk->nr = pk->isa == RT_ISA_AVX512 ? NR_512 : pk->isa == RT_ISA_AVX2 ? NR_256 : NR_C;
  pk->K = K;
  pk->N = N;
  int64_t np = (N + pk->nr - 1) / pk->nr;
  /* 64 bytes more to start the panels on a cache line (the vector loads never split) */
  pk->base = mc_malloc((size_t)(np * K * pk->nr) * sizeof(float) + 64);
  pk->p = (float *)(((uintptr_t)pk->base + 63) & ~(uintptr_t)63);
  PackJob j = {pk, B, ldb, tb};
  rt_parallel_rows(np, K * pk->nr, pack_panels, &j);
}

void rt_pack_free(RtPacked *pk) {
  mc_free(pk->base);
  pk->base = NULL;
  pk->p = NULL;
}

/* ---------------------------------------------------------------- micro-kernels
 *
 * A tile: rows [0, mr) of A (stride lda) times one panel P[K][nr] into C (stride ldc):
 * C = sum (+ C when acc). Instantiated for each mr by a switch on a constant, so the sums
 * stay in registers. */

#ifdef RT_X86
__attribute__((target("avx512f"), always_inline)) static inline void
tile_512(const int mr, int64_t K, const float *A, int64_t lda, const float *P, float *C,
         int64_t ldc, bool acc) {
  __m512 s0[MR_512], s1[MR_512];
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++)
    s0[r] = s1[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k++) {
    __m512 b0 = _mm512_loadu_ps(P + k * NR_512), b1 = _mm512_loadu_ps(P + k * NR_512 + 16);
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
      __m512 a = _mm512_set1_ps(A[r * lda + k]);
      s0[r] = _mm512_fmadd_ps(a, b0, s0[r]);
      s1[r] = _mm512_fmadd_ps(a, b1, s1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++) {
    float *c = C + r * ldc;
    if (acc) {
      s0[r] = _mm512_add_ps(_mm512_loadu_ps(c), s0[r]);
      s1[r] = _mm512_add_ps(_mm512_loadu_ps(c + 16), s1[r]);
    }
    _mm512_storeu_ps(c, s0[r]);
    _mm512_storeu_ps(c + 16, s1[r]);
  }
}

/* case m: the tile with m rows, a constant the compiler unrolls the row loops over */
#define TILE(f, m)                                                                                 \
  case m:                                                                                          \
    f(m, K, A, lda, P, C, ldc, acc);                                                               \
    break

__attribute__((target("avx512f"))) static void tiles_512(int mr, int64_t K, const float *A,
                                                         int64_t lda, const float *P, float *C,
                                                         int64_t ldc, bool acc) {
  switch (mr) {
    TILE(tile_512, 1);
    TILE(tile_512, 2);
    TILE(tile_512, 3);
    TILE(tile_512, 4);
    TILE(tile_512, 5);
    TILE(tile_512, 6);
    TILE(tile_512, 7);
    TILE(tile_512, 8);
  default:
    MOEC_ASSERT(0);
  }
}

__attribute__((target("avx2,fma"), always_inline)) static inline void
tile_256(const int mr, int64_t K, const float *A, int64_t lda, const float *P, float *C,
         int64_t ldc, bool acc) {
  __m256 s0[MR_256], s1[MR_256];
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++)
    s0[r] = s1[r] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; k++) {
    __m256 b0 = _mm256_loadu_ps(P + k * NR_256), b1 = _mm256_loadu_ps(P + k * NR_256 + 8);
#pragma GCC unroll 8
    for (int r = 0; r < mr; r++) {
      __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      s0[r] = _mm256_fmadd_ps(a, b0, s0[r]);
      s1[r] = _mm256_fmadd_ps(a, b1, s1[r]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < mr; r++) {
    float *c = C + r * ldc;
    if (acc) {
      s0[r] = _mm256_add_ps(_mm256_loadu_ps(c), s0[r]);
      s1[r] = _mm256_add_ps(_mm256_loadu_ps(c + 8), s1[r]);
    }
    _mm256_storeu_ps(c, s0[r]);
    _mm256_storeu_ps(c + 8, s1[r]);
  }
}

__attribute__((target("avx2,fma"))) static void tiles_256(int mr, int64_t K, const float *A,
                                                          int64_t lda, const float *P, float *C,
                                                          int64_t ldc, bool acc) {
  switch (mr) {
    TILE(tile_256, 1);
    TILE(tile_256, 2);
    TILE(tile_256, 3);
    TILE(tile_256, 4);
    TILE(tile_256, 5);
    TILE(tile_256, 6);
  default:
    MOEC_ASSERT(0);
  }
}
#undef TILE
#endif

/* Portable: plain C the compiler vectorises (16 columns a row). */
static void tiles_c(int mr, int64_t K, const float *A, int64_t lda, const float *P, float *C,
                    int64_t ldc, bool acc) {
  float s[MR_C][NR_C] = {{0}};
  for (int64_t k = 0; k < K; k++)
    for (int r = 0; r < mr; r++) {
      float a = A[r * lda + k];
      for (int c = 0; c < NR_C; c++)
        s[r][c] += a * P[k * NR_C + c];
    }
  for (int r = 0; r < mr; r++)
    for (int c = 0; c < NR_C; c++)
      C[r * ldc + c] = acc ? C[r * ldc + c] + s[r][c] : s[r][c];
}

/* ---------------------------------------------------------------- the GEMM */

void rt_gemm_packed(const RtPacked *pk, int64_t M, const float *A, int64_t lda, float *C,
                    int64_t ldc, bool acc) {
  void (*tiles)(int, int64_t, const float *, int64_t, const float *, float *, int64_t, bool) =
      tiles_c;
  int mr = MR_C;
#ifdef RT_X86
  if (pk->isa == RT_ISA_AVX512) tiles = tiles_512, mr = MR_512;
  if (pk->isa == RT_ISA_AVX2) tiles = tiles_256, mr = MR_256;
#endif
  int64_t K = pk->K, N = pk->N, nr = pk->nr;
  float edge[MR_512 * NR_512]; /* the last panel's tile when N is not a multiple of nr */
  /* panel-outer: a panel (K*nr floats) is read from cache once for all the rows */
  for (int64_t n0 = 0; n0 < N; n0 += nr) {
    const float *P = pk->p + n0 * K;
    int64_t w = MC_MIN(nr, N - n0);
    for (int64_t i = 0; i < M; i += mr) {
      int m = (int)MC_MIN(mr, M - i);
      if (w == nr) {
        tiles(m, K, A + i * lda, lda, P, C + i * ldc + n0, ldc, acc);
        continue;
      }
      tiles(m, K, A + i * lda, lda, P, edge, nr, false);
      for (int r = 0; r < m; r++)
        for (int64_t c = 0; c < w; c++) {
          float *y = C + (i + r) * ldc + n0 + c;
          *y = acc ? *y + edge[r * nr + c] : edge[r * nr + c];
        }
    }
  }
}
