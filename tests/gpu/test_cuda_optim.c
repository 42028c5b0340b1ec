/* test_cuda_optim.c: the device optimizer (runtime/cuda/train_cuda.cu) against the
 * host's (runtime/optim.c) on the same parameters, gradients and state, 3 updates:
 *   - Adam and the factored optimizer (vectors, matrices, and a batch of expert
 *     matrices [E, rows, cols]), no clipping: parameters and every state tensor
 *     equal bit for bit (both compute in double without FMA, in the same order);
 *   - with clipping active: the global norm equal to 1e-12 relative (its sum runs in
 *     another order on the device), parameters to 1e-6 relative;
 *   - a checkpoint round trip: rt_cuda_optim_download gives the state that a new
 *     device optimizer created from it continues bit for bit.
 * Without a GPU (or built without CUDA): prints "SKIP: ..." and exits 77. */
#define _POSIX_C_SOURCE 200809L
#include <string.h>

#include "codegen/codegen.h"
#include "passes/passes.h"
#include "runtime/train.h"
#include "runtime/train_dev.h"
#include "tests/test.h"
#ifdef MOEC_HAVE_CUDA
#include "runtime/cuda/cuda.h"
#endif

#ifdef MOEC_HAVE_CUDA
static const char *const model_text = "model opt {\n"
                                      "  let V = 40\n"
                                      "  input tokens : i32[B, T]\n"
                                      "  input targets : i32[B, T]\n"
                                      "  emb = embedding(tokens, vocab=V, dim=12)\n"
                                      "  h = lstm(emb, units=12)\n"
                                      "  m = moe(h, experts=4, k=2, hidden=20)\n"
                                      "  loss = softmax_xent(m, targets, vocab=V)\n"
                                      "  output loss\n"
                                      "}\n"
                                      "train {\n  batch = 4\n  unroll = 5\n}\n";

static Graph *build(Config *cfg, AstFile **fout) {
  Source src = {.path = "test_cuda_optim.moe", .text = model_text, .len = strlen(model_text)};
  Diag d;
  fe_diag_init(&d, &src);
  AstFile *f = fe_parse(&src, &d);
  fe_config_defaults(cfg);
  /* compiled for cuda, unfused: the cpu program only holds the host optimizer's buffers, and
   * a fused group would need LLVM on the cpu */
  cfg->backend = BK_CUDA;
  cfg->fuse = false;
  if (d.errors == 0) fe_sema(f, cfg, &d);
  MOEC_ASSERT(d.errors == 0);
  Graph *g = ir_build(f, cfg);
  PassCtx pc = {.cfg = cfg, .devices = 1, .training = true};
  pass_run_all(g, &pc, NULL, NULL);
  ir_bind(g, cfg->batch, cfg->unroll);
  *fout = f;
  return g;
}

static uint64_t lcg = 12345;
static float rnd(double scale) {
  lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
  return (float)(((double)(lcg >> 11) / 9007199254740992.0 * 2.0 - 1.0) * scale);
}

static bool same_bits(const float *a, const float *b, int64_t n) {
  return n <= 0 || !memcmp(a, b, (size_t)n * sizeof(float));
}

static double max_rel(const float *a, const float *b, int64_t n) {
  double m = 0;
  for (int64_t k = 0; k < n; k++) {
    double d = fabs((double)a[k] - b[k]) / fmax(1e-30, fabs((double)b[k]));
    m = fmax(m, d);
  }
  return m;
}

/* state tensors of parameter i (as rt_optim_tensors lists them) */
static int states_of(const Optim *o, int i, float **out, int64_t *len) {
  int n = 0;
  int64_t rows = 0, cols = 0, lead = 0;
  int r = o->prank[i];
  if (o->vr[i]) {
    rows = o->shape[i][r - 2];
    cols = o->shape[i][r - 1];
    lead = o->numel[i] / MC_MAX(1, rows * cols);
    out[n] = o->vr[i];
    len[n++] = lead * rows;
    out[n] = o->vc[i];
    len[n++] = lead * cols;
  }
  if (o->m[i]) {
    out[n] = o->m[i];
    len[n++] = o->numel[i];
  }
  if (o->v[i]) {
    out[n] = o->v[i];
    len[n++] = o->numel[i];
  }
  return n;
}

static void one_case(const Backend *cuda, OptKind kind, double clip) {
  Config cfg;
  AstFile *f = NULL;
  Graph *g = build(&cfg, &f);
  cfg.optimizer = kind;
  cfg.lr = 0.01;
  cfg.clip = clip;
  const char *name = kind == OPT_ADAM ? "adam" : "factored";
  /* one buffer per tensor: gradients written directly */
  Program *hp = cg_lower_on(g, PREC_F32, &rt_backend_cpu, &(CgOpts){.no_memplan = true}),
          *dp = cg_lower_on(g, PREC_F32, cuda,
                            &(CgOpts){.no_memplan = true, .dev = rt_dev_context(cuda)});
  Optim *ho = rt_optim_new(&cfg, g), *dopt = rt_optim_new(&cfg, g);
  int np = g->nparams;
  float **pp = mc_calloc((size_t)np, sizeof(float *)),
        **gg = mc_calloc((size_t)np, sizeof(float *));
  bool factored_matrix = false;
  for (int i = 0; i < np; i++) {
    const Tensor *t = g->params[i];
    size_t nb = (size_t)t->numel * sizeof(float);
    pp[i] = rt_f32(hp, t);
    gg[i] = t->grad ? rt_f32(hp, t->grad) : mc_calloc((size_t)t->numel, sizeof(float));
    for (int64_t k = 0; k < t->numel; k++)
      pp[i][k] = rnd(0.1);
    cuda->upload(dp->buf[t->id], pp[i], nb);
    factored_matrix |= kind == OPT_FACTORED && t->ty.rank == 3;
  }
  if (kind == OPT_FACTORED) CHECK(factored_matrix); /* the expert weights: lead > 1 */
  RtCudaOptim *co = rt_cuda_optim_new(dp->dev, dp, dopt);
  for (int step = 0; step < 3; step++) {
    for (int i = 0; i < np; i++) {
      const Tensor *t = g->params[i];
      for (int64_t k = 0; k < t->numel; k++)
        gg[i][k] = rnd(step == 1 ? 10.0 : 0.5); /* step 2 exceeds the clip */
      if (t->grad) cuda->upload(dp->buf[t->grad->id], gg[i], (size_t)t->numel * sizeof(float));
    }
    rt_optim_step(ho, pp, gg);
    rt_cuda_optim_step(co, dopt);
    CHECK(dopt->t == ho->t);
    CHECK_CLOSE(dopt->last_norm, ho->last_norm, 1e-12, 0);
  }
  if (clip == 0) { /* the checkpoint round trip: a fresh device optimizer from the download */
    rt_cuda_optim_download(co, dopt);
    rt_cuda_optim_free(co);
    co = rt_cuda_optim_new(dp->dev, dp, dopt);
    for (int i = 0; i < np; i++)
      for (int64_t k = 0; k < g->params[i]->numel; k++)
        gg[i][k] = rnd(0.5);
    for (int i = 0; i < np; i++)
      if (g->params[i]->grad)
        cuda->upload(dp->buf[g->params[i]->grad->id], gg[i],
                     (size_t)g->params[i]->numel * sizeof(float));
    rt_optim_step(ho, pp, gg);
    rt_cuda_optim_step(co, dopt);
  }
  rt_cuda_optim_download(co, dopt);
  int bad = 0;
  for (int i = 0; i < np; i++) {
    const Tensor *t = g->params[i];
    float *d = mc_malloc((size_t)t->numel * sizeof(float) + 1);
    cuda->download(d, dp->buf[t->id], (size_t)t->numel * sizeof(float));
    if (clip == 0) {
      if (!same_bits(d, pp[i], t->numel)) {
        bad++;
        fprintf(stderr, "%s: parameter '%s' differs from the host (max rel %.3g)\n", name, t->name,
                max_rel(d, pp[i], t->numel));
      }
      float *hs[4], *ds[4];
      int64_t hl[4], dl[4];
      int n1 = states_of(ho, i, hs, hl), n2 = states_of(dopt, i, ds, dl);
      CHECK(n1 == n2 && n1 > 0);
      for (int s = 0; s < n1 && s < n2; s++)
        if (hl[s] != dl[s] || !same_bits(hs[s], ds[s], hl[s])) {
          bad++;
          fprintf(stderr, "%s: state %d of '%s' differs from the host\n", name, s, t->name);
        }
    } else {
      double r = max_rel(d, pp[i], t->numel);
      if (r > 1e-6) {
        bad++;
        fprintf(stderr, "%s clip %g: parameter '%s' max rel %.3g\n", name, clip, t->name, r);
      }
    }
    mc_free(d);
  }
  CHECK(bad == 0);
  printf("%s, clip %g: %d parameters, %s%s\n", name, clip, np,
         clip == 0 ? "bit-identical to optim.c" : "within 1e-6 of optim.c", bad ? " FAILED" : "");
  rt_cuda_optim_free(co);
  for (int i = 0; i < np; i++)
    if (!g->params[i]->grad) mc_free(gg[i]);
  mc_free(pp);
  mc_free(gg);
  rt_optim_free(ho);
  rt_optim_free(dopt);
  cg_program_free(hp);
  cg_program_free(dp);
  ir_graph_free(g);
  fe_ast_free(f);
}
#endif

int main(void) {
  const Backend *cuda = rt_backend_cuda();
  if (!cuda) {
    printf("SKIP: %s\n", rt_dev_cuda_unavailable());
    return 77;
  }
#ifdef MOEC_HAVE_CUDA
  one_case(cuda, OPT_ADAM, 0);
  one_case(cuda, OPT_FACTORED, 0);
  one_case(cuda, OPT_ADAM, 1.0);
  one_case(cuda, OPT_FACTORED, 1.0);
#endif
  TEST_DONE();
}
