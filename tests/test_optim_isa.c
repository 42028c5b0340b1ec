/* test_optim_isa.c: the factored optimizer's AVX-512 and AVX2 row sums (runtime/optim.inc,
 * frow_blk, frow_blk2; those the CPU has), and Adam's AVX-512 and AVX2 loops, against
 * the portable loops (Optim.isa = RT_ISA_PORTABLE), bit for bit. Factored: p, the
 * row and column moments and the norm (the sum of the tasks' partials, in order), over
 * 3 steps, float32 and double, the norm fused into the update or clipped first, 1 and 2
 * threads. The shapes take both paths of a factored matrix, one task (OT_FMAT, up to
 * 1 MB) and split into row and column spans (OT_FROWS, OT_FCOLS, OT_FUPD), with rows and
 * columns that are not multiples of 8 or 16, row spans (16384 / cols rows) that end
 * inside a group of 8, fewer than 8 rows or columns, and an all-zero expert; and a run
 * of small matrices with rows and columns in 8s, whose updates run beside the next
 * matrix's row sums (fsum_upd8), over more than one task, an all-zero one among them.
 * Adam: p, m and v after 10 steps (the bias corrections 1 - beta^t as divisors), with
 * zero and -0 gradients and parameters. Skips (77) on a CPU without AVX2. */
#include <string.h>

#include "runtime/train.h"
#include "test.h"

#define NP 7

static Tensor tens[NP];
static Tensor *params[NP];
static Graph graph = {.params = params};

static void add_param(const char *name, int rank, const int64_t *shape) {
  Tensor *t = &tens[graph.nparams];
  *t = (Tensor){.id = graph.nparams, .name = name, .kind = TK_PARAM, .numel = 1};
  t->ty.rank = rank;
  for (int i = 0; i < rank; i++)
    t->numel *= t->shape[i] = shape[i];
  params[graph.nparams++] = t;
}

/* gradient element k of parameter i at step s: magnitudes over 6 decades, so that adding
 * squares in another order changes bits; matrix 1 of "e" all zero at step 1, matrix 3
 * of "x" at step 1 and its matrices 0 and 8 at step 2 */
static double grad(int i, int64_t k, int s) {
  if (i == 0 && s == 1 && k >= 61 * 700 && k < 2 * 61 * 700) return 0;
  if (i == 6 && s > 0 && (k / 960 == (s == 1 ? 3 : 0) || (s == 2 && k / 960 == 8))) return 0;
  return sin(0.37 * (double)k + i + s) * exp(3.0 * cos(0.011 * (double)k * (s + 1)));
}

/* 3 steps with the given isa; p, vr, vc and each step's norm into the out arrays */
static void run(int isa, bool f64, double clip, int threads, void *p[NP], void *vr[NP],
                void *vc[NP], double norm[3]) {
  const size_t es = f64 ? sizeof(double) : sizeof(float);
  Config cfg = {.optimizer = OPT_FACTORED,
                .lr = 0.01,
                .beta1 = 0.9,
                .beta2 = 0.999,
                .eps = 1e-8,
                .clip = clip};
  rt_threads_set(threads);
  Optim *o = rt_optim_new_prec(&cfg, &graph, f64 ? PREC_F64 : PREC_F32);
  o->isa = isa;
  void *g[NP];
  for (int i = 0; i < NP; i++) {
    int64_t n = params[i]->numel;
    p[i] = mc_malloc((size_t)n * es);
    g[i] = mc_malloc((size_t)n * es);
    for (int64_t k = 0; k < n; k++)
      if (f64)
        ((double *)p[i])[k] = cos(0.23 * (double)k + i);
      else
        ((float *)p[i])[k] = (float)cos(0.23 * (double)k + i);
  }
  for (int s = 0; s < 3; s++) {
    for (int i = 0; i < NP; i++)
      for (int64_t k = 0; k < params[i]->numel; k++)
        if (f64)
          ((double *)g[i])[k] = grad(i, k, s);
        else
          ((float *)g[i])[k] = (float)grad(i, k, s);
    rt_optim_step(o, (float *const *)p, (float *const *)g);
    norm[s] = o->last_norm;
  }
  for (int i = 0; i < NP; i++) { /* the moments outlive o */
    const Tensor *t = params[i];
    int r = t->ty.rank;
    size_t nr = (size_t)(t->numel / t->shape[r - 1]), nc = (size_t)(t->numel / t->shape[r - 2]);
    vr[i] = mc_malloc(nr * es);
    vc[i] = mc_malloc(nc * es);
    memcpy(vr[i], o->vr[i], nr * es);
    memcpy(vc[i], o->vc[i], nc * es);
    mc_free(g[i]);
  }
  rt_optim_free(o);
}

/* 10 Adam steps with the given isa; p, m and v (their bytes) into out[3][NP] */
static void run_adam(int isa, bool f64, int threads, void *out[3][NP]) {
  const size_t es = f64 ? sizeof(double) : sizeof(float);
  Config cfg = {.optimizer = OPT_ADAM, .lr = 0.01, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
  rt_threads_set(threads);
  Optim *o = rt_optim_new_prec(&cfg, &graph, f64 ? PREC_F64 : PREC_F32);
  o->isa = isa;
  void *g[NP];
  for (int i = 0; i < NP; i++) {
    int64_t n = params[i]->numel;
    out[0][i] = mc_malloc((size_t)n * es);
    g[i] = mc_malloc((size_t)n * es);
    for (int64_t k = 0; k < n; k++) { /* every 97th parameter -0 */
      double v = k % 97 ? cos(0.23 * (double)k + i) : -0.0;
      if (f64)
        ((double *)out[0][i])[k] = v;
      else
        ((float *)out[0][i])[k] = (float)v;
    }
  }
  for (int s = 0; s < 10; s++) {
    for (int i = 0; i < NP; i++)
      for (int64_t k = 0; k < params[i]->numel; k++) { /* every 89th gradient -0 */
        double v = k % 89 ? grad(i, k, s % 3) * (1 + s) : -0.0;
        if (f64)
          ((double *)g[i])[k] = v;
        else
          ((float *)g[i])[k] = (float)v;
      }
    rt_optim_step(o, (float *const *)out[0], (float *const *)g);
  }
  for (int i = 0; i < NP; i++) {
    size_t n = (size_t)params[i]->numel * es;
    out[1][i] = mc_malloc(n);
    out[2][i] = mc_malloc(n);
    memcpy(out[1][i], o->m[i], n);
    memcpy(out[2][i], o->v[i], n);
    mc_free(g[i]);
  }
  rt_optim_free(o);
}

int main(void) {
  Config cfg = {.optimizer = OPT_FACTORED};
  Optim *probe = rt_optim_new(&cfg, &graph);
  int isa = probe->isa;
  rt_optim_free(probe);
  if (isa == RT_ISA_PORTABLE) {
    printf("skipped: the CPU (or compiler) has no vector row sums to test\n");
    return 77;
  }
  /* e: 2 matrices of 61 x 700 (OT_FMAT in f32 and f64; spans of 23 rows); m: 411 x 700
   * (1.15 MB in f32: split; spans of 23 rows); w: 37 x 45 (16 + 16 + 5 rows; a tail of
   * 5 columns after 8-column blocks, of 1 after 4-column blocks); n: 20 x 5 (a tail
   * column, or only tail columns); r: 5 x 300 (fewer than 8 rows); d: 611 x 512 (split
   * in f32 and f64, spans of 32 rows, the last of 3); x: 11 matrices of 24 x 40 (tasks
   * of 8 and 3 matrices; 40 columns: 64 elements cross a row's end) */
  add_param("e", 3, (int64_t[]){2, 61, 700});
  add_param("m", 2, (int64_t[]){411, 700});
  add_param("w", 2, (int64_t[]){37, 45});
  add_param("n", 2, (int64_t[]){20, 5});
  add_param("r", 2, (int64_t[]){5, 300});
  add_param("d", 2, (int64_t[]){611, 512});
  add_param("x", 3, (int64_t[]){11, 24, 40});
  /* the data is order-sensitive: one row of e summed backwards has other bits */
  double fw = 0, bw = 0;
  for (int64_t c = 0; c < 700; c++) {
    double a = grad(0, 700 + c, 0), b = grad(0, 700 + 699 - c, 0);
    fw += a * a;
    bw += b * b;
  }
  CHECK(fw != bw);
  for (int vec = RT_ISA_AVX2; vec <= isa; vec++)
    for (int f64 = 0; f64 < 2; f64++)
      for (int clip = 0; clip < 2; clip++)
        for (int th = 1; th <= 2; th++) {
          const size_t es = f64 ? sizeof(double) : sizeof(float);
          void *p[2][NP], *vr[2][NP], *vc[2][NP];
          double norm[2][3];
          for (int v = 0; v < 2; v++)
            run(v ? vec : RT_ISA_PORTABLE, f64, clip ? 5.0 : 0, th, p[v], vr[v], vc[v], norm[v]);
          int bad = 0;
          for (int i = 0; i < NP; i++) {
            const Tensor *t = params[i];
            int r = t->ty.rank;
            size_t n = (size_t)t->numel * es;
            bool dp = memcmp(p[0][i], p[1][i], n) != 0;
            bool dr = memcmp(vr[0][i], vr[1][i], n / (size_t)t->shape[r - 1]) != 0;
            bool dc = memcmp(vc[0][i], vc[1][i], n / (size_t)t->shape[r - 2]) != 0;
            if (dp || dr || dc)
              fprintf(stderr, "%s, %s, clip %d, %d threads: %s differs:%s%s%s\n",
                      rt_gemm_pack_isa_name(vec), f64 ? "f64" : "f32", clip, th, t->name,
                      dp ? " p" : "", dr ? " vr" : "", dc ? " vc" : "");
            bad += dp + dr + dc;
            for (int v = 0; v < 2; v++) {
              mc_free(p[v][i]);
              mc_free(vr[v][i]);
              mc_free(vc[v][i]);
            }
          }
          CHECK(bad == 0);
          for (int s = 0; s < 3; s++) /* bit for bit: the partials' sum, not a tolerance */
            CHECK(memcmp(&norm[0][s], &norm[1][s], sizeof(double)) == 0);
        }
  for (int vec = RT_ISA_AVX2; vec <= isa; vec++)
    for (int f64 = 0; f64 < 2; f64++)
      for (int th = 1; th <= 2; th++) {
        void *out[2][3][NP];
        for (int v = 0; v < 2; v++)
          run_adam(v ? vec : RT_ISA_PORTABLE, f64, th, out[v]);
        int bad = 0;
        for (int i = 0; i < NP; i++)
          for (int a = 0; a < 3; a++) {
            size_t n = (size_t)params[i]->numel * (f64 ? sizeof(double) : sizeof(float));
            if (memcmp(out[0][a][i], out[1][a][i], n)) {
              fprintf(stderr, "adam, %s, %s, %d threads: %s's %s differs\n",
                      rt_gemm_pack_isa_name(vec), f64 ? "f64" : "f32", th, params[i]->name,
                      (const char *[]){"p", "m", "v"}[a]);
              bad++;
            }
            mc_free(out[0][a][i]);
            mc_free(out[1][a][i]);
          }
        CHECK(bad == 0);
      }
  rt_threads_set(1);
  TEST_DONE();
}
