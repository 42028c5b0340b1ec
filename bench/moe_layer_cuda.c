/* moe_layer_cuda.c: one MoE layer, forward + backward, on the cuda backend, timed
 * with CUDA events per kernel call (docs/cuda.md).
 *
 * Build: cmake -S . -B build-gpu -DMOEC_CUDA=ON -DCMAKE_BUILD_TYPE=Release &&
 *        cmake --build build-gpu --target bench_moe_layer_cuda
 * Run:   build-gpu/bench/bench_moe_layer_cuda [--tokens 8192] [--dim 1024] [--experts 64]
 *        [--hidden 4096] [--k 2] [--reps 10] [--warmup 3] [--tf32] [--json FILE]
 * (bench/gpu.sh runs it for k = 2 and 4.)
 *
 * The model is x -> dense(D) -> moe(experts, k, hidden) -> softmax_xent(vocab 8); only
 * the instructions of the moe layer (forward and backward: node->layer == "m") count
 * as layer time. w_gate is drawn at random (the paper starts it at zero, which routes
 * every token to the same experts: not a fair timing), the same way as in
 * bench/moe_layer_torch.py. Reports the median over --reps of: layer time; the expert
 * GEMMs (grouped_matmul, grouped_matmul_dw) and their TFLOP/s against one dense
 * cublasSgemm of the same shape as the first expert GEMM, [N*k, D] x [D, H]; and the
 * share of routing (roles gate, dispatch, combine, aux: gate + top-k + dispatch +
 * combine + load/importance) in the layer time. Goals: expert GEMMs >= 80%
 * of the dense rate; routing <= 10% of the layer. */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codegen/codegen.h"
#include "passes/passes.h"
#include "runtime/cuda/cuda.h"
#include "runtime/train.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t e_ = (call);                                                               \
    if (e_ != cudaSuccess)                                                                 \
      mc_fatal_at(__FILE__, __LINE__, "CUDA call %s failed: %s", #call, cudaGetErrorString(e_)); \
  } while (0)
#define CUBLAS_CHECK(call)                                                                 \
  do {                                                                                     \
    cublasStatus_t s_ = (call);                                                            \
    if (s_ != CUBLAS_STATUS_SUCCESS)                                                       \
      mc_fatal_at(__FILE__, __LINE__, "cuBLAS call %s failed: %d", #call, (int)s_);        \
  } while (0)

typedef struct Opts {
  int64_t tokens, dim, experts, hidden, k;
  int reps, warmup;
  bool tf32;
  const char *json;
} Opts;

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}
static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_d);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t lcg = 12345;
static double urand(void) {
  lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
  return ((double)(lcg >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static Graph *build(const char *text, Config *cfg, int64_t B) {
  Source src = {.path = "moe_layer.moe", .text = text, .len = strlen(text)};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  fe_config_defaults(cfg);
  cfg->backend = BK_CUDA; /* the passes compile for the cuda backend (its fusions) */
  if (d.errors == 0) fe_sema(f, cfg, &d);
  if (d.errors) mc_die("the benchmark model does not compile");
  Graph *g = ir_build(f, cfg);
  PassCtx pc = {.cfg = cfg, .devices = 1, .training = true};
  pass_run_all(g, &pc, NULL, NULL);
  ir_bind(g, B, 1);
  return g; /* the AST stays alive: the graph may point into it */
}

static void upload_random(const Backend *be, Program *p, const Tensor *t, double scale) {
  float *h = mc_malloc((size_t)t->numel * sizeof(float));
  for (int64_t i = 0; i < t->numel; i++) h[i] = (float)((2 * urand() - 1) * scale);
  be->upload(p->buf[t->id], h, (size_t)t->numel * sizeof(float));
  mc_free(h);
}

/* One dense cublasSgemm C[M,N] = A[M,K] B[K,N] (row-major), median ms. */
static double dense_gemm_ms(cudaStream_t st, int64_t M, int64_t N, int64_t K, bool tf32, int reps) {
  cublasHandle_t h;
  CUBLAS_CHECK(cublasCreate(&h));
  CUBLAS_CHECK(cublasSetStream(h, st));
  CUBLAS_CHECK(cublasSetMathMode(h, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
  float *A, *B, *C;
  CUDA_CHECK(cudaMalloc((void **)&A, (size_t)(M * K) * 4));
  CUDA_CHECK(cudaMalloc((void **)&B, (size_t)(K * N) * 4));
  CUDA_CHECK(cudaMalloc((void **)&C, (size_t)(M * N) * 4));
  float *hA = mc_malloc((size_t)(M * K) * 4), *hB = mc_malloc((size_t)(K * N) * 4);
  for (int64_t i = 0; i < M * K; i++) hA[i] = (float)(2 * urand() - 1);
  for (int64_t i = 0; i < K * N; i++) hB[i] = (float)(2 * urand() - 1);
  CUDA_CHECK(cudaMemcpy(A, hA, (size_t)(M * K) * 4, cudaMemcpyHostToDevice));
  CUDA_CHECK(cudaMemcpy(B, hB, (size_t)(K * N) * 4, cudaMemcpyHostToDevice));
  const float one = 1, zero = 0;
  cudaEvent_t e0, e1;
  CUDA_CHECK(cudaEventCreate(&e0));
  CUDA_CHECK(cudaEventCreate(&e1));
  double *t = mc_malloc((size_t)reps * sizeof(double));
  for (int r = -3; r < reps; r++) {
    CUDA_CHECK(cudaEventRecord(e0, st));
    CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, B, (int)N,
                             A, (int)K, &zero, C, (int)N));
    CUDA_CHECK(cudaEventRecord(e1, st));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (r >= 0) t[r] = ms;
  }
  double m = median(t, reps);
  mc_free(t);
  mc_free(hA);
  mc_free(hB);
  CUDA_CHECK(cudaFree(A));
  CUDA_CHECK(cudaFree(B));
  CUDA_CHECK(cudaFree(C));
  CUDA_CHECK(cudaEventDestroy(e0));
  CUDA_CHECK(cudaEventDestroy(e1));
  CUBLAS_CHECK(cublasDestroy(h));
  return m;
}

enum { CAT_OTHER, CAT_EXPERT_GEMM, CAT_EXPERT_OTHER, CAT_ROUTING, CAT_N };
static const char *const cat_names[CAT_N] = {"outside the layer", "expert GEMMs",
                                             "expert bias/relu", "routing"};

static int category(const Node *n) {
  if (!n->layer || strcmp(n->layer, "m") != 0) return CAT_OTHER;
  if (n->op == OP_GROUPED_MATMUL || n->op == OP_GROUPED_MATMUL_DW) return CAT_EXPERT_GEMM;
  if (n->role && !strcmp(n->role, "experts")) return CAT_EXPERT_OTHER;
  return CAT_ROUTING;
}

static double gemm_flops(const Node *n) {
  if (n->op == OP_GROUPED_MATMUL) /* [R,K] x [K,M] */
    return 2.0 * (double)n->in[0]->shape[0] * (double)n->in[0]->shape[1] *
           (double)n->out[0]->shape[1];
  if (n->op == OP_GROUPED_MATMUL_DW) /* [R,K]^T x [R,M] */
    return 2.0 * (double)n->in[0]->shape[0] * (double)n->in[0]->shape[1] *
           (double)n->in[1]->shape[1];
  return 0;
}

int main(int argc, char **argv) {
  Opts o = {8192, 1024, 64, 4096, 2, 10, 3, false, NULL};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--tf32")) o.tf32 = true;
    else if (!v) mc_die("option %s needs a value", a);
    else if (!strcmp(a, "--tokens")) o.tokens = atoll(v), i++;
    else if (!strcmp(a, "--dim")) o.dim = atoll(v), i++;
    else if (!strcmp(a, "--experts")) o.experts = atoll(v), i++;
    else if (!strcmp(a, "--hidden")) o.hidden = atoll(v), i++;
    else if (!strcmp(a, "--k")) o.k = atoll(v), i++;
    else if (!strcmp(a, "--reps")) o.reps = atoi(v), i++;
    else if (!strcmp(a, "--warmup")) o.warmup = atoi(v), i++;
    else if (!strcmp(a, "--json")) o.json = v, i++;
    else mc_die("unknown option %s", a);
  }
  const Backend *be = rt_backend_cuda();
  if (!be) {
    printf("SKIP: %s\n", rt_cuda_unavailable_reason());
    return 77;
  }
  RtCudaDev *dev = rt_cuda_dev(0);
  rt_cuda_set_tf32(o.tf32);
  cudaStream_t st = (cudaStream_t)rt_cuda_stream(dev);

  char text[1024];
  snprintf(text, sizeof text,
           "model bench {\n"
           "  input x : f32[B, T, %lld]\n"
           "  input targets : i32[B, T]\n"
           "  h = dense(x, units=%lld)\n"
           "  m = moe(h, experts=%lld, k=%lld, hidden=%lld)\n"
           "  loss = softmax_xent(m, targets, vocab=8)\n"
           "  output loss\n"
           "}\n",
           (long long)o.dim, (long long)o.dim, (long long)o.experts, (long long)o.k,
           (long long)o.hidden);
  Config cfg;
  Graph *g = build(text, &cfg, o.tokens);
  Program *p = cg_lower_on(g, PREC_F32, be, NULL);
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    double scale = 1.0 / sqrt((double)(t->ty.rank >= 2 ? t->shape[t->ty.rank - 2] : 1));
    upload_random(be, p, t, scale); /* w_gate random too: see the header */
  }
  for (int i = 0; i < g->ninputs; i++) {
    const Tensor *t = g->inputs[i];
    if (t->ty.dtype == DT_F32) {
      upload_random(be, p, t, 1.0);
    } else {
      int32_t *h = mc_malloc((size_t)t->numel * 4);
      for (int64_t q = 0; q < t->numel; q++) h[q] = (int32_t)(urand() * 8);
      be->upload(p->buf[t->id], h, (size_t)t->numel * 4);
      mc_free(h);
    }
  }

  int n = p->ninstrs;
  cudaEvent_t *ev = mc_malloc((size_t)(n + 1) * sizeof(cudaEvent_t));
  for (int k = 0; k <= n; k++) CUDA_CHECK(cudaEventCreate(&ev[k]));
  double *cat_ms[CAT_N], *total = mc_malloc((size_t)o.reps * sizeof(double)),
                         *layer = mc_malloc((size_t)o.reps * sizeof(double));
  for (int c = 0; c < CAT_N; c++) cat_ms[c] = mc_calloc((size_t)o.reps, sizeof(double));
  double flops_gemm = 0;
  for (int k = 0; k < n; k++) flops_gemm += gemm_flops(p->instrs[k].node);
  for (int r = -o.warmup; r < o.reps; r++) {
    KernelCtx ctx = {.training = true, .seed = 1, .step = (uint64_t)(r + o.warmup), .batch0 = 0,
                     .batch_local = g->B, .device = 0, .ndevices = 1, .dev = dev};
    for (int k = 0; k < n; k++) {
      CUDA_CHECK(cudaEventRecord(ev[k], st));
      rt_exec(p, &ctx, k, k + 1);
    }
    CUDA_CHECK(cudaEventRecord(ev[n], st));
    CUDA_CHECK(cudaEventSynchronize(ev[n]));
    be->sync();
    if (r < 0) continue;
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, ev[0], ev[n]));
    total[r] = ms;
    for (int k = 0; k < n; k++) {
      CUDA_CHECK(cudaEventElapsedTime(&ms, ev[k], ev[k + 1]));
      cat_ms[category(p->instrs[k].node)][r] += ms;
    }
    layer[r] = cat_ms[CAT_EXPERT_GEMM][r] + cat_ms[CAT_EXPERT_OTHER][r] + cat_ms[CAT_ROUTING][r];
  }
  double t_total = median(total, o.reps), t_layer = median(layer, o.reps), t_cat[CAT_N];
  for (int c = 0; c < CAT_N; c++) t_cat[c] = median(cat_ms[c], o.reps);
  double rate = flops_gemm / (t_cat[CAT_EXPERT_GEMM] * 1e-3) / 1e12;
  double dense_ms = dense_gemm_ms(st, o.tokens * o.k, o.hidden, o.dim, o.tf32, o.reps);
  double dense_rate = 2.0 * (double)(o.tokens * o.k) * (double)o.hidden * (double)o.dim /
                      (dense_ms * 1e-3) / 1e12;
  double share = t_cat[CAT_ROUTING] / t_layer;

  printf("moe layer fwd+bwd: tokens %lld, D %lld, E %lld, H %lld, k %lld, %s, median of %d\n",
         (long long)o.tokens, (long long)o.dim, (long long)o.experts, (long long)o.hidden,
         (long long)o.k, o.tf32 ? "TF32" : "FP32", o.reps);
  printf("  step (whole program)   %9.3f ms\n", t_total);
  printf("  moe layer              %9.3f ms\n", t_layer);
  for (int c = 1; c < CAT_N; c++)
    printf("    %-20s %9.3f ms  (%4.1f%%)\n", cat_names[c], t_cat[c], 100.0 * t_cat[c] / t_layer);
  printf("  expert GEMMs           %9.2f TFLOP/s (%.1f GFLOP)\n", rate, flops_gemm / 1e9);
  printf("  dense cublasSgemm      %9.2f TFLOP/s ([%lld x %lld] x [%lld x %lld], %.3f ms)\n",
         dense_rate, (long long)(o.tokens * o.k), (long long)o.dim, (long long)o.dim,
         (long long)o.hidden, dense_ms);
  printf("  expert / dense         %9.1f%%  (goal >= 80%%)\n", 100.0 * rate / dense_rate);
  printf("  routing share          %9.1f%%  (goal <= 10%%)\n", 100.0 * share);
  if (o.json) {
    FILE *f = fopen(o.json, "a");
    if (!f) mc_die("cannot open %s", o.json);
    fprintf(f,
            "{\"bench\":\"moe_layer_cuda\",\"tokens\":%lld,\"dim\":%lld,\"experts\":%lld,"
            "\"hidden\":%lld,\"k\":%lld,\"tf32\":%s,\"step_ms\":%.4f,\"layer_ms\":%.4f,"
            "\"expert_gemm_ms\":%.4f,\"expert_other_ms\":%.4f,\"routing_ms\":%.4f,"
            "\"expert_tflops\":%.3f,\"dense_tflops\":%.3f,\"routing_share\":%.4f}\n",
            (long long)o.tokens, (long long)o.dim, (long long)o.experts, (long long)o.hidden,
            (long long)o.k, o.tf32 ? "true" : "false", t_total, t_layer, t_cat[CAT_EXPERT_GEMM],
            t_cat[CAT_EXPERT_OTHER], t_cat[CAT_ROUTING], rate, dense_rate, share);
    fclose(f);
  }
  for (int k = 0; k <= n; k++) CUDA_CHECK(cudaEventDestroy(ev[k]));
  for (int c = 0; c < CAT_N; c++) mc_free(cat_ms[c]);
  mc_free(ev);
  mc_free(total);
  mc_free(layer);
  cg_program_free(p);
  return 0;
}
