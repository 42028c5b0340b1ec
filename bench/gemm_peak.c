/* gemm_peak.c: OpenBLAS sgemm GFLOP/s at the shapes of the benchmark model's GEMMs
 * and at a large square size (the peak baseline the MoE layer is measured against).
 *
 *   cc -O2 -o build/gemm_peak bench/gemm_peak.c \
 *      -I/usr/include/x86_64-linux-gnu/openblas-pthread -lopenblas -lm
 *   OPENBLAS_NUM_THREADS=2 build/gemm_peak [seconds-per-shape]
 *
 * (bench/run_lm_bench.sh builds and runs it.) Each shape runs for about the given
 * time (default 0.5 s) after one warm-up call; GFLOP/s = 2*M*N*K / time. The
 * expert shapes: B*T = 640 positions, k = 4, 16 experts -> about 160 rows per
 * expert, 256 -> 512 -> 256 (forward, and the two backward GEMMs of each). */
#define _POSIX_C_SOURCE 199309L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *randf(size_t n) {
  float *p = malloc(n * sizeof *p);
  if (!p) {
    fprintf(stderr, "gemm_peak: out of memory\n");
    exit(1);
  }
  for (size_t i = 0; i < n; i++) p[i] = (float)rand() / (float)RAND_MAX - 0.5f;
  return p;
}

/* C[M,N] = op(A) . op(B); ta: A stored [K,M]; tb: B stored [N,K]. */
static double bench(const char *what, int M, int N, int K, int ta, int tb, double secs) {
  float *a = randf((size_t)M * K), *b = randf((size_t)K * N), *c = randf((size_t)M * N);
  int lda = ta ? M : K, ldb = tb ? K : N;
  CBLAS_TRANSPOSE TA = ta ? CblasTrans : CblasNoTrans, TB = tb ? CblasTrans : CblasNoTrans;
  cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 1.0f, a, lda, b, ldb, 0.0f, c, N);
  long reps = 0;
  double t0 = now(), t;
  do {
    cblas_sgemm(CblasRowMajor, TA, TB, M, N, K, 1.0f, a, lda, b, ldb, 0.0f, c, N);
    reps++;
    t = now() - t0;
  } while (t < secs);
  double gf = 2.0 * M * N * K * reps / t / 1e9;
  printf("%-38s M=%5d N=%5d K=%5d %s%s  %8.1f GFLOP/s  (%ld calls, %.3f ms each)\n", what, M, N,
         K, ta ? "T" : "N", tb ? "T" : "N", gf, reps, t / reps * 1e3);
  free(a);
  free(b);
  free(c);
  return gf;
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : 0.5;
  if (secs <= 0) secs = 0.5;
  printf("gemm_peak: OpenBLAS %s, %d threads\n", OPENBLAS_VERSION, openblas_get_num_threads());
  int rows = 640 * 4 / 16; /* rows per expert, balanced */
  bench("expert fc1 fwd  x.w1", rows, 512, 256, 0, 0, secs);
  bench("expert fc2 fwd  h.w2", rows, 256, 512, 0, 0, secs);
  bench("expert fc2 dW   h^T.g", 512, 256, rows, 1, 0, secs);
  bench("expert fc2 dx   g.w2^T", rows, 512, 256, 0, 1, secs);
  bench("all experts as one (640*4 rows)", 2560, 512, 256, 0, 0, secs);
  bench("softmax logits  h.W^T (V=10000)", 640, 10000, 256, 0, 1, secs);
  bench("lstm x.W_ih^T   [640,256]x[256,1024]", 640, 1024, 256, 0, 1, secs);
  bench("lstm h.W_hh^T   [32,256]x[256,1024]", 32, 1024, 256, 0, 1, secs);
  double peak = bench("peak: square 1536", 1536, 1536, 1536, 0, 0, secs);
  double p2 = bench("peak: 4096x1024x1024", 4096, 1024, 1024, 0, 0, secs);
  if (p2 > peak) peak = p2;
  printf("gemm_peak: peak %.1f GFLOP/s (the better of the two large shapes)\n", peak);
  return 0;
}
