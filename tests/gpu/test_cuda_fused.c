/* test_cuda_fused.c: fused elementwise groups on the GPU (codegen/nvrtc.c, the OP_FUSED
 * kernel of runtime/cuda/kernels_dense.cu; docs/fusion.md "The CUDA half").
 *
 *   test_cuda_fused MODEL.moe ...
 *
 * Every model trains STEPS steps on the cuda backend from the same initial parameters
 * and batches (host Adam of runtime/optim.c, as test_cuda_model), three ways:
 * unfused (plan.fuse = false), fused with the NVRTC kernels, fused with the interpreter
 * kernel (CgOpts.no_nvrtc). The losses and every gradient at every step must be the same
 * bits: each generated op is its unfused kernel's expression, with no contraction
 * across ops (tests/test_nvrtc.c checks the PTX for that without a GPU). Then the
 * kernel cache: a second fused run loads nothing new (every launch finds its kernel);
 * after dropping the in-memory caches, the kernels come from the disk cache
 * ($MOEC_CACHE_DIR, a temporary folder here) without compiling. Prints the kernel
 * calls per step and the step's kernel time (rt_exec + sync, median) each way.
 *
 * Without a GPU (or built without CUDA or NVRTC): prints "SKIP: ..." and exits 77. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codegen/codegen.h"
#include "codegen/nvrtc.h"
#include "passes/passes.h"
#include "runtime/train.h"
#include "tests/test.h"
#include "tests/test_model.h"
#ifdef MOEC_HAVE_CUDA
#include "runtime/cuda/cuda.h"
#endif

#define STEPS 5

typedef struct Trace {
  double loss[STEPS], xent[STEPS], aux[STEPS];
  uint64_t grads[STEPS]; /* FNV-1a of every gradient's bytes */
  int fused_nodes, instrs;
  double exec_ms; /* rt_exec + sync per step, median of steps 1.. (printed, not checked) */
} Trace;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  return (*(const double *)a > *(const double *)b) - (*(const double *)a < *(const double *)b);
}

static uint64_t fnv(const void *p, size_t n, uint64_t h) {
  const unsigned char *s = p;
  for (size_t i = 0; i < n; i++)
    h = (h ^ s[i]) * 1099511628211ull;
  return h;
}

static double scalar(const Backend *be, const Program *p, const Tensor *t) {
  if (!t) return 0;
  float v;
  be->download(&v, p->buf[t->id], sizeof v);
  return v;
}

/* Trains STEPS steps of the model on the cuda backend; fuse: plan.fuse; nvrtc: the
 * fused groups' NVRTC kernels (false: the interpreter kernel). */
static Trace train(const char *path, const Backend *cuda, void *dev, bool fuse, bool nvrtc) {
  Config cfg;
  char *text = NULL;
  AstFile *f = test_load_model(path, &cfg, &text);
  cfg.backend = BK_CUDA;
  cfg.fuse = fuse;
  Graph *g = ir_build(f, &cfg);
  PassCtx pc = {.cfg = &cfg, .devices = 1, .training = true};
  pass_run_all(g, &pc, NULL, NULL);
  ir_bind(g, cfg.batch, cfg.unroll);
  Trace tr = {0};
  for (int k = 0; k < g->nnodes; k++)
    tr.fused_nodes += g->nodes[k]->op == OP_FUSED;
  Program *p = cg_lower_on(g, PREC_F32, cuda, &(CgOpts){.no_nvrtc = !nvrtc, .dev = dev});
  const Tensor *ids = NULL, *tg = NULL;
  int V = 1 << 30;
  for (int k = 0; k < g->nnodes; k++) {
    const Node *n = g->nodes[k];
    if (n->op == OP_XENT) {
      tg = n->in[1];
      V = MC_MIN(V, (int)n->in[0]->shape[1]);
    }
    if (n->op == OP_EMBEDDING) V = MC_MIN(V, (int)n->in[1]->shape[0]);
  }
  for (int i = 0; i < g->ninputs; i++)
    if (g->inputs[i] != tg) ids = g->inputs[i];
  MOEC_ASSERT(ids && tg);
  Optim *opt = rt_optim_new(&cfg, g);
  float **hp = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  float **hg = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    hp[i] = mc_malloc((size_t)t->numel * sizeof(float));
    hg[i] = mc_calloc((size_t)t->numel, sizeof(float));
    rt_init_param(t, cfg.seed, hp[i]);
    cuda->upload(p->buf[t->id], hp[i], (size_t)t->numel * sizeof(float));
  }
  int32_t *bi = mc_malloc(sizeof(int32_t) * (size_t)ids->numel);
  int32_t *bt = mc_malloc(sizeof(int32_t) * (size_t)tg->numel);
  uint64_t lcg = 12345;
  double times[STEPS];
  tr.instrs = p->ninstrs;
  for (int s = 0; s < STEPS; s++) {
    for (int64_t i = 0; i < ids->numel; i++) {
      lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
      bi[i] = (int32_t)((lcg >> 33) % (uint64_t)V);
      bt[i] = (int32_t)((lcg >> 13) % (uint64_t)V);
    }
    cuda->upload(p->buf[ids->id], bi, sizeof(int32_t) * (size_t)ids->numel);
    cuda->upload(p->buf[tg->id], bt, sizeof(int32_t) * (size_t)tg->numel);
    KernelCtx ctx = {.training = true,
                     .seed = cfg.seed,
                     .step = (uint64_t)s,
                     .batch0 = 0,
                     .batch_local = g->B,
                     .device = 0,
                     .ndevices = 1,
                     .dev = dev};
    cuda->sync();
    double t0 = now();
    rt_exec(p, &ctx, 0, p->ninstrs);
    cuda->sync();
    times[s] = (now() - t0) * 1e3;
    tr.loss[s] = scalar(cuda, p, g->loss);
    tr.xent[s] = scalar(cuda, p, g->xent);
    tr.aux[s] = scalar(cuda, p, g->aux);
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < g->nparams; i++) {
      const Tensor *t = g->params[i];
      if (!t->grad) continue;
      cuda->download(hg[i], p->buf[t->grad->id], (size_t)t->numel * sizeof(float));
      h = fnv(hg[i], (size_t)t->numel * sizeof(float), h);
    }
    tr.grads[s] = h;
    rt_optim_step(opt, hp, hg);
    for (int i = 0; i < g->nparams; i++)
      cuda->upload(p->buf[g->params[i]->id], hp[i], (size_t)g->params[i]->numel * sizeof(float));
    rt_carry_state(p);
  }
  qsort(times + 1, STEPS - 1, sizeof(double), cmp_double); /* step 0 compiles */
  tr.exec_ms = times[1 + (STEPS - 1) / 2];
  for (int i = 0; i < g->nparams; i++) {
    mc_free(hp[i]);
    mc_free(hg[i]);
  }
  mc_free(hp);
  mc_free(hg);
  mc_free(bi);
  mc_free(bt);
  rt_optim_free(opt);
  cg_program_free(p);
  ir_graph_free(g);
  fe_ast_free(f);
  mc_free(text);
  return tr;
}

static void same(const char *path, const char *what, const Trace *a, const Trace *b) {
  int bad = 0;
  for (int s = 0; s < STEPS; s++) {
    bool eq = !memcmp(&a->loss[s], &b->loss[s], sizeof(double)) &&
              !memcmp(&a->xent[s], &b->xent[s], sizeof(double)) &&
              !memcmp(&a->aux[s], &b->aux[s], sizeof(double)) && a->grads[s] == b->grads[s];
    CHECK(eq);
    if (!eq && bad++ < 3)
      fprintf(stderr, "%s: %s differ at step %d: loss %.9g vs %.9g, gradients %s\n", path, what, s,
              a->loss[s], b->loss[s], a->grads[s] == b->grads[s] ? "equal" : "differ");
  }
}

int main(int argc, char **argv) {
  const Backend *cuda = rt_backend_cuda();
  if (!cuda) {
#ifdef MOEC_HAVE_CUDA
    printf("SKIP: %s\n", rt_cuda_unavailable_reason());
#else
    printf("SKIP: no CUDA device (moec was built without CUDA: MOEC_CUDA=OFF or no nvcc)\n");
#endif
    return 77;
  }
  if (!cg_nvrtc_available()) {
    printf("SKIP: moec was built without NVRTC (fused groups run the interpreter kernel)\n");
    return 77;
  }
  if (argc < 2) {
    fprintf(stderr, "usage: test_cuda_fused MODEL.moe...\n");
    return 2;
  }
  void *dev = NULL;
#ifdef MOEC_HAVE_CUDA
  dev = rt_cuda_dev(0);
#endif
  char tmpdir[] = "/tmp/moec_test_cuda_fused_XXXXXX";
  MOEC_ASSERT(mkdtemp(tmpdir));
  setenv("MOEC_CACHE_DIR", tmpdir, 1);
  for (int a = 1; a < argc; a++) {
    const char *path = argv[a];
    Trace un = train(path, cuda, dev, false, true);
    CgNvrtcStats s0 = cg_nvrtc_stats();
    Trace fu = train(path, cuda, dev, true, true);
    CgNvrtcStats s1 = cg_nvrtc_stats();
    CHECK(un.fused_nodes == 0 && fu.fused_nodes > 0);
    CHECK(s1.fn_hits > s0.fn_hits); /* loaded at the first launch, then reused */
    if (a == 1) CHECK(s1.loaded > s0.loaded && s1.compiled > s0.compiled);
    same(path, "unfused and fused (NVRTC)", &un, &fu);
    Trace again = train(path, cuda, dev, true, true); /* every kernel already loaded */
    CgNvrtcStats s2 = cg_nvrtc_stats();
    CHECK(s2.loaded == s1.loaded && s2.compiled == s1.compiled);
    same(path, "two fused runs", &fu, &again);
    cg_nvrtc_forget(); /* as a new process: the kernels come from the disk cache */
    Trace disk = train(path, cuda, dev, true, true);
    CgNvrtcStats s3 = cg_nvrtc_stats();
    CHECK(s3.compiled == s2.compiled && s3.disk_hits > s2.disk_hits && s3.loaded > s2.loaded);
    same(path, "fused from the disk cache", &fu, &disk);
    Trace interp = train(path, cuda, dev, true, false);
    same(path, "unfused and fused (interpreter kernel)", &un, &interp);
    printf("%s: %d fused groups; %d steps unfused = fused (NVRTC, from memory, from disk) = "
           "interpreter, bit for bit; loss %.6f -> %.6f; %d compiles, %d disk hits\n",
           path, fu.fused_nodes, STEPS, un.loss[0], un.loss[STEPS - 1], s3.compiled, s3.disk_hits);
    printf("  kernel calls per step %d -> %d; step (kernels, median) unfused %.3f ms, fused "
           "%.3f ms, interpreter kernel %.3f ms\n",
           un.instrs, again.instrs, un.exec_ms, again.exec_ms, interp.exec_ms);
  }
  char rm[128];
  snprintf(rm, sizeof rm, "rm -rf %s", tmpdir);
  if (system(rm)) fprintf(stderr, "could not remove %s\n", tmpdir);
  TEST_DONE();
}
