/* test_gemm_pack.c: the packed-weight float32 GEMM (runtime/gemm_pack.c) against a
 * double-precision reference on odd sizes (M 1..33, N off the panel widths, K odd, both
 * forms of op(B), with and without C's old value), on every path this CPU has (portable,
 * AVX2, AVX-512): within float32's accumulation bound, the same bits for any split of the
 * rows and on the two vector paths (fused multiply-adds; the portable path multiplies,
 * then adds), and nothing written outside C's [M,N]. float64 has no packed
 * kernel: the LSTM's float64 GEMMs stay on BLAS (test_kernels_dense compares the two). */
#include <string.h>

#include "runtime/runtime.h"
#include "test.h"

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* xorshift64, uniform in [-1, 1) */
  rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

#define GUARD 3 /* extra columns of C and A (strides), which must stay untouched */

/* One size on one path: C (ldc = N + GUARD) against the double reference; returns C. */
static float *run_case(int isa, int64_t M, int64_t N, int64_t K, bool tb, bool acc, const float *A,
                       const float *B, const float *C0) {
  int64_t lda = K + GUARD, ldb = tb ? K + GUARD : N + GUARD, ldc = N + GUARD;
  rt_gemm_pack_isa(isa);
  RtPacked pk;
  rt_pack(&pk, B, ldb, tb, K, N);
  CHECK(pk.isa == isa);
  float *C = mc_malloc((size_t)(M * ldc) * sizeof(float));
  memcpy(C, C0, (size_t)(M * ldc) * sizeof(float));
  rt_gemm_packed(&pk, M, A, lda, C, ldc, acc);
  int bad = 0;
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      float got = C[i * ldc + j], c0 = C0[i * ldc + j];
      if (j >= N) { /* past N: untouched */
        bad += memcmp(&got, &c0, sizeof got) != 0;
        continue;
      }
      double ref = acc ? (double)c0 : 0, mag = acc ? fabs((double)c0) : 0;
      for (int64_t k = 0; k < K; k++) {
        double b = tb ? B[j * ldb + k] : B[k * ldb + j];
        ref += (double)A[i * lda + k] * b;
        mag += fabs((double)A[i * lda + k] * b);
      }
      /* float32 sums of K + 1 terms: at most (K + 1) rounding errors of eps * mag */
      bad += !(fabs((double)got - ref) <= (double)(K + 2) * 6e-8 * mag + 1e-30);
    }
  CHECK(bad == 0);
  if (bad)
    fprintf(stderr, "  %s M=%lld N=%lld K=%lld tb=%d acc=%d: %d wrong\n",
            rt_gemm_pack_isa_name(isa), (long long)M, (long long)N, (long long)K, tb, acc, bad);
  /* the rows in two calls (any split of M, as the LSTM's row blocks): the same bits */
  if (M > 1) {
    float *C2 = mc_malloc((size_t)(M * ldc) * sizeof(float));
    memcpy(C2, C0, (size_t)(M * ldc) * sizeof(float));
    int64_t m1 = M / 3 + 1;
    rt_gemm_packed(&pk, m1, A, lda, C2, ldc, acc);
    rt_gemm_packed(&pk, M - m1, A + m1 * lda, lda, C2 + m1 * ldc, ldc, acc);
    CHECK(memcmp(C, C2, (size_t)(M * ldc) * sizeof(float)) == 0);
    mc_free(C2);
  }
  rt_pack_free(&pk);
  return C;
}

int main(void) {
  int best = rt_gemm_pack_isa(-1);
  printf("paths: portable .. %s\n", rt_gemm_pack_isa_name(best));
  static const int64_t Ns[] = {1, 15, 16, 17, 33, 47, 100};
  static const int64_t Ks[] = {1, 7, 31, 257};
  int cases = 0;
  for (int64_t M = 1; M <= 33; M++)
    for (size_t ni = 0; ni < MC_ARRAY_LEN(Ns); ni++)
      for (size_t ki = 0; ki < MC_ARRAY_LEN(Ks); ki++) {
        int64_t N = Ns[ni], K = Ks[ki];
        if (K == 257 && M % 4 != 1) continue; /* keep it fast: K = 257 at M = 1, 5, ..., 33 */
        bool tb = (M + (int64_t)ni) % 2, acc = (M + (int64_t)ki) % 3 != 0;
        int64_t lda = K + GUARD, ldb = tb ? K + GUARD : N + GUARD, ldc = N + GUARD;
        int64_t brows = tb ? N : K;
        float *A = mc_malloc((size_t)(M * lda) * sizeof(float));
        float *B = mc_malloc((size_t)(brows * ldb) * sizeof(float));
        float *C0 = mc_malloc((size_t)(M * ldc) * sizeof(float));
        for (int64_t i = 0; i < M * lda; i++)
          A[i] = frand();
        for (int64_t i = 0; i < brows * ldb; i++)
          B[i] = frand();
        for (int64_t i = 0; i < M * ldc; i++)
          C0[i] = frand();
        mc_free(run_case(RT_ISA_PORTABLE, M, N, K, tb, acc, A, B, C0));
        float *ref = NULL; /* the first vector path's C: the others give the same bits */
        for (int isa = RT_ISA_AVX2; isa <= best; isa++) {
          float *C = run_case(isa, M, N, K, tb, acc, A, B, C0);
          if (ref) {
            CHECK(memcmp(C, ref, (size_t)(M * ldc) * sizeof(float)) == 0);
            mc_free(C);
          } else
            ref = C;
        }
        mc_free(ref);
        mc_free(A);
        mc_free(B);
        mc_free(C0);
        cases++;
      }
  rt_gemm_pack_isa(RT_ISA_AVX512);
  printf("%d sizes\n", cases);
  TEST_DONE();
}
