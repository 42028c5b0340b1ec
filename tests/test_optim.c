/* test_optim.c: the optimizers (runtime/optim.c): Adam's first step against its
 * closed form and a run on a quadratic against an independent double-precision
 * Adam; its float32 arithmetic within 4 units of the double formula, step by step; global-norm clipping; the factored second moment against its formulas
 * (rows and columns, 3-D expert tensors, vectors); weight decay under a warm-up, both
 * optimizers, against the documented formulas in double; saving and restoring state
 * continues bit for bit; parameter init depends only on (seed, name); the double
 * precision optimizer (moec run --f64) against the independent double Adam and its
 * float32 self; restoring state of another shape or dtype, or a hostile step, is a
 * clear error; the threaded, vectorised update against the element-by-element one
 * (below, ref_update) bit for bit, with 1, 2 and 3 threads, float32 and double,
 * clipped or not, and a factored expert whose gradient is all zero. */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/train.h"
#include "test.h"

static char tmpdir[] = "/tmp/moec_test_optim_d_XXXXXX";
#include "test_death.h"

typedef struct Model {
  Graph g;
  Tensor t[4];
  Tensor *params[4];
} Model;

static void add_param(Model *m, const char *name, int rank, const int64_t *shape) {
  Tensor *t = &m->t[m->g.nparams];
  memset(t, 0, sizeof *t);
  t->id = m->g.nparams;
  t->name = name;
  t->kind = TK_PARAM;
  t->ty.rank = rank;
  t->numel = 1;
  for (int i = 0; i < rank; i++)
    t->numel *= t->shape[i] = shape[i];
  t->init = INIT_UNIFORM;
  t->init_scale = 0.5;
  m->params[m->g.nparams++] = t;
  m->g.params = m->params;
}

static Config opt_config(OptKind k, double lr, double clip) {
  Config c;
  memset(&c, 0, sizeof c);
  c.optimizer = k;
  c.lr = lr;
  c.beta1 = 0.9;
  c.beta2 = 0.999;
  c.eps = 1e-8;
  c.clip = clip;
  return c;
}

/* f(p) = sum_i a_i/2 (p_i - c_i)^2 */
static const double qa[4] = {1.0, 10.0, 0.1, 3.0}, qc[4] = {1.0, -2.0, 0.5, 3.0};

static void test_adam_quadratic(void) {
  Model m = {0};
  int64_t s4[1] = {4};
  add_param(&m, "p", 1, s4);
  Config cfg = opt_config(OPT_ADAM, 0.05, 0);
  Optim *o = rt_optim_new(&cfg, &m.g);
  float p[4] = {0, 0, 0, 0}, g[4];
  float *pp[1] = {p}, *gg[1] = {g};
  /* the first step, in closed form: m_hat = g, v_hat = g^2 -> p -= lr * g / (|g| + eps) */
  for (int i = 0; i < 4; i++)
    g[i] = (float)(qa[i] * (p[i] - qc[i]));
  rt_optim_step(o, pp, gg);
  bool first = true;
  for (int i = 0; i < 4; i++) {
    double gi = qa[i] * (0 - qc[i]);
    first &= fabs(p[i] - (0 - 0.05 * gi / (fabs(gi) + 1e-8))) < 1e-7;
  }
  CHECK(first);
  /* an independent Adam in double for 300 more steps */
  double rp[4], rm[4], rv[4];
  for (int i = 0; i < 4; i++) {
    double gi = qa[i] * (0 - qc[i]);
    rm[i] = 0.1 * gi;
    rv[i] = 0.001 * gi * gi;
    rp[i] = 0 - 0.05 * (rm[i] / 0.1) / (sqrt(rv[i] / 0.001) + 1e-8);
  }
  double maxdiff = 0;
  for (int t = 2; t <= 300; t++) {
    for (int i = 0; i < 4; i++)
      g[i] = (float)(qa[i] * (p[i] - qc[i]));
    rt_optim_step(o, pp, gg);
    for (int i = 0; i < 4; i++) {
      double gi = qa[i] * (rp[i] - qc[i]);
      rm[i] = 0.9 * rm[i] + 0.1 * gi;
      rv[i] = 0.999 * rv[i] + 0.001 * gi * gi;
      rp[i] -= 0.05 * (rm[i] / (1 - pow(0.9, t))) / (sqrt(rv[i] / (1 - pow(0.999, t))) + 1e-8);
      maxdiff = fmax(maxdiff, fabs(p[i] - rp[i]));
    }
  }
  CHECK(maxdiff < 1e-4);
  CHECK(o->t == 300);
  for (int i = 0; i < 4; i++)
    CHECK_CLOSE(p[i], qc[i], 0, 0.05); /* at the minimum */
  rt_optim_free(o);
}

/* Adam's float32 arithmetic against the formula in double from the same float32 state,
 * step by step over 400 steps of 4096 parameters with noisy gradients that pull them
 * through zero: each new parameter within 4 x max(ulp(|p|), lr 2^-24), |p| the larger of
 * the old and new (docs/training.md: 3 over a longer run); and the two do differ. */
static void test_adam_f32_vs_double(void) {
  enum { N = 4096, STEPS = 400 };
  Model md = {0};
  int64_t sh[1] = {N};
  add_param(&md, "p", 1, sh);
  Config cfg = opt_config(OPT_ADAM, 1e-3, 0);
  Optim *o = rt_optim_new(&cfg, &md.g);
  float *p = mc_malloc(N * sizeof(float)), *g = mc_malloc(N * sizeof(float));
  float *p0 = mc_malloc(N * sizeof(float)), *m0 = mc_malloc(N * sizeof(float));
  float *v0 = mc_malloc(N * sizeof(float));
  float *pp[1] = {p}, *gg[1] = {g};
  for (int i = 0; i < N; i++)
    p[i] = (float)(0.05 * sin(0.37 * i));
  double worst = 0;
  int64_t differ = 0;
  for (int t = 1; t <= STEPS; t++) {
    for (int i = 0; i < N; i++)
      g[i] = (float)(0.01 * (1 + i % 7) * sin(1.3 * i + 0.71 * t) + 0.002 * p[i]);
    memcpy(p0, p, N * sizeof(float));
    memcpy(m0, o->m[0], N * sizeof(float));
    memcpy(v0, o->v[0], N * sizeof(float));
    rt_optim_step(o, pp, gg);
    double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.999, t);
    for (int i = 0; i < N; i++) {
      double mk = 0.9 * m0[i] + (1 - 0.9) * g[i], vk = 0.999 * v0[i] + (1 - 0.999) * g[i] * (double)g[i];
      float want = (float)(p0[i] - 1e-3 * (mk / bc1) / (sqrt(vk / bc2) + 1e-8));
      float big = fmaxf(fabsf(p0[i]), fabsf(want));
      double unit = fmax(nextafterf(big, INFINITY) - big, 1e-3 * 0x1p-24);
      worst = fmax(worst, fabs((double)p[i] - want) / unit);
      differ += p[i] != want;
    }
  }
  printf("adam_f32_vs_double: %d updates, %lld differ from the double formula, worst %.2f units\n",
         N * STEPS, (long long)differ, worst);
  CHECK(worst <= 4.0);
  CHECK(differ > 0); /* the comparison is of two different arithmetics */
  mc_free(p);
  mc_free(g);
  mc_free(p0);
  mc_free(m0);
  mc_free(v0);
  rt_optim_free(o);
}

/* The elem-8 optimizer (moec run --f64): doubles behind the float pointers. Adam on the
 * quadratic matches the independent double Adam to double rounding (float32: 1e-4), with
 * clipping too; adam and factored follow their float32 selves to float32 accuracy. */
static void test_f64(void) {
  Model m = {0};
  int64_t s4[1] = {4};
  add_param(&m, "p", 1, s4);
  for (int clip = 0; clip < 2; clip++) {
    Config cfg = opt_config(OPT_ADAM, 0.05, clip ? 2.0 : 0);
    Optim *o = rt_optim_new_prec(&cfg, &m.g, PREC_F64);
    CHECK(o->elem == sizeof(double));
    double p[4] = {0, 0, 0, 0}, g[4], rp[4] = {0}, rm[4] = {0}, rv[4] = {0};
    float *pp[1] = {(float *)(void *)p}, *gg[1] = {(float *)(void *)g};
    double maxdiff = 0;
    for (int t = 1; t <= 300; t++) {
      double ss = 0, rg[4];
      for (int i = 0; i < 4; i++) {
        g[i] = qa[i] * (p[i] - qc[i]);
        rg[i] = qa[i] * (rp[i] - qc[i]);
        ss += rg[i] * rg[i];
      }
      double sc = clip && sqrt(ss) > 2.0 ? 2.0 / sqrt(ss) : 1.0;
      rt_optim_step(o, pp, gg);
      for (int i = 0; i < 4; i++) {
        double gi = rg[i] * sc;
        rm[i] = 0.9 * rm[i] + 0.1 * gi;
        rv[i] = 0.999 * rv[i] + 0.001 * gi * gi;
        rp[i] -= 0.05 * (rm[i] / (1 - pow(0.9, t))) / (sqrt(rv[i] / (1 - pow(0.999, t))) + 1e-8);
        maxdiff = fmax(maxdiff, fabs(p[i] - rp[i]));
      }
    }
    if (maxdiff >= 1e-12) fprintf(stderr, "f64 adam (clip %d): max diff %g\n", clip, maxdiff);
    CHECK(maxdiff < 1e-12);
    rt_optim_free(o);
  }
  /* adam and factored over a matrix, experts (3-D) and a vector: f64 vs f32 */
  for (int k = 0; k < 2; k++) {
    Model mm = {0};
    int64_t sm[2] = {2, 3}, se[3] = {2, 2, 3}, sv[1] = {3};
    add_param(&mm, "w", 2, sm);
    add_param(&mm, "experts.w1", 3, se);
    add_param(&mm, "b", 1, sv);
    Config cfg = opt_config(k ? OPT_FACTORED : OPT_ADAM, 0.01, 0.5);
    Optim *o32 = rt_optim_new(&cfg, &mm.g), *o64 = rt_optim_new_prec(&cfg, &mm.g, PREC_F64);
    float p32[21] = {0}, g32[21];
    double p64[21] = {0}, g64[21];
    float *pp32[3] = {p32, p32 + 6, p32 + 18}, *gg32[3] = {g32, g32 + 6, g32 + 18};
    float *pp64[3] = {(float *)(void *)p64, (float *)(void *)(p64 + 6),
                      (float *)(void *)(p64 + 18)};
    float *gg64[3] = {(float *)(void *)g64, (float *)(void *)(g64 + 6),
                      (float *)(void *)(g64 + 18)};
    double maxdiff = 0;
    for (int t = 0; t < 20; t++) {
      for (int i = 0; i < 21; i++) {             /* a quadratic around i-dependent centres */
        double c = (i % 7) - 3.5, a = 1 + i % 3; /* far: 20 steps of lr 0.01 stay away */
        g32[i] = (float)(a * (p32[i] - c));
        g64[i] = a * (p64[i] - c);
      }
      rt_optim_step(o32, pp32, gg32);
      rt_optim_step(o64, pp64, gg64);
      for (int i = 0; i < 21; i++)
        maxdiff = fmax(maxdiff, fabs(p32[i] - p64[i]));
    }
    CHECK(maxdiff > 0 && maxdiff < 1e-5);
    CHECK_CLOSE(o32->last_norm, o64->last_norm, 1e-5, 0);
    rt_optim_free(o32);
    rt_optim_free(o64);
  }
}

static void test_clip(void) {
  Model m = {0};
  int64_t s1[1] = {1}, s2[2] = {1, 1};
  add_param(&m, "a", 1, s1);
  add_param(&m, "b", 2, s2);
  Config cfg = opt_config(OPT_ADAM, 0.1, 1.0);
  Optim *o = rt_optim_new(&cfg, &m.g);
  float a = 0, b = 0, ga = 3, gb = 4;
  float *pp[2] = {&a, &b}, *gg[2] = {&ga, &gb};
  rt_optim_step(o, pp, gg);
  CHECK_CLOSE(o->last_norm, 5.0, 1e-12, 0);
  CHECK_CLOSE(o->m[0][0], 0.1 * 3 * 0.2, 1e-6, 0); /* clipped to norm 1: g * 1/5 */
  CHECK_CLOSE(o->m[1][0], 0.1 * 4 * 0.2, 1e-6, 0);
  CHECK_CLOSE(o->v[1][0], 0.001 * 0.8 * 0.8, 1e-6, 0);
  ga = 0.3f;
  gb = 0.4f; /* below the threshold: untouched */
  rt_optim_step(o, pp, gg);
  CHECK_CLOSE(o->m[0][0], 0.9 * 0.06 + 0.1 * 0.3, 1e-6, 0);
  rt_optim_free(o);
}

static void test_factored(void) {
  Model m = {0};
  int64_t sm[2] = {2, 3}, se[3] = {2, 2, 3}, sv[1] = {3};
  add_param(&m, "w", 2, sm);
  add_param(&m, "experts.w1", 3, se);
  add_param(&m, "b", 1, sv);
  Config cfg = opt_config(OPT_FACTORED, 0.01, 0);
  cfg.beta2 = 0.9;
  Optim *o = rt_optim_new(&cfg, &m.g);
  CHECK(o->m[0] == NULL && o->vr[0] && o->vc[0] && o->vr[1] && o->v[2] && !o->vr[2]);
  float w[6] = {0}, e[12] = {0}, b[3] = {0};
  float gw[2][6] = {{1, 2, 3, 4, 5, 6}, {-1, 0, 2, 1, 1, -3}}, ge[12], gb[3] = {1, -2, 0.5f};
  for (int i = 0; i < 12; i++)
    ge[i] = (float)(i % 5) - 1.5f;
  float *pp[3] = {w, e, b};
  double R[2] = {0, 0}, C[3] = {0, 0, 0}, ref[6] = {0};
  for (int t = 1; t <= 2; t++) {
    float *gg[3] = {gw[t - 1], ge, gb};
    rt_optim_step(o, pp, gg);
    /* reference: R_i <- b2 R_i + (1-b2) mean_j g_ij^2, C_j likewise over rows,
     * V = R C^T / mean(R), p -= lr g / (sqrt(V / (1 - b2^t)) + eps) */
    const float *g = gw[t - 1];
    for (int r = 0; r < 2; r++) {
      double s = 0;
      for (int c = 0; c < 3; c++)
        s += g[r * 3 + c] * g[r * 3 + c];
      R[r] = 0.9 * R[r] + 0.1 * s / 3;
    }
    for (int c = 0; c < 3; c++) {
      double s = 0;
      for (int r = 0; r < 2; r++)
        s += g[r * 3 + c] * g[r * 3 + c];
      C[c] = 0.9 * C[c] + 0.1 * s / 2;
    }
    double rmean = (R[0] + R[1]) / 2, bc = 1 - pow(0.9, t);
    for (int r = 0; r < 2; r++)
      for (int c = 0; c < 3; c++)
        ref[r * 3 + c] -= 0.01 * g[r * 3 + c] / (sqrt(R[r] * C[c] / rmean / bc) + 1e-8);
  }
  double md = 0;
  for (int i = 0; i < 6; i++)
    md = fmax(md, fabs(w[i] - ref[i]));
  CHECK(md < 1e-6);
  CHECK_CLOSE(o->vr[0][1], R[1], 1e-6, 0);
  CHECK_CLOSE(o->vc[0][2], C[2], 1e-6, 0);
  /* vectors: full second moment, no first moment: after 2 equal grads
   * v = 0.1 g^2 (1 + 0.9), v_hat = g^2 -> each step moves lr * sign(g) */
  CHECK_CLOSE(b[0], -0.02, 1e-5, 0);
  CHECK_CLOSE(b[1], 0.02, 1e-5, 0);
  /* 3-D experts: each expert's [2, 3] matrix is factored on its own */
  float e0[6], e1[6];
  memcpy(e0, e, sizeof e0);
  memcpy(e1, e + 6, sizeof e1);
  CHECK(memcmp(e0, e1, sizeof e0) != 0);
  rt_optim_free(o);
}

/* Weight decay under a warm-up schedule, for Adam and factored, against
 * docs/training.md's formulas in double: lr_t = lr * t / W for t <= W, then lr (W = 3);
 * before each update p *= 1 - lr_t * wd for weight matrices (w, the experts' m.w1) but not
 * biases (b, the experts' m.b1); then the update with lr_t. The loop sets Optim.lr from
 * rt_lr_at as the training loop does (runtime/run.c); the reference computes lr_t itself.
 * Checked after the first step and after 6 (3 in the warm-up, 3 at the peak), to float
 * rounding; the decay moves the weights by ~1e-3 a step, far above the tolerance. */
static void test_weight_decay(OptKind kind) {
  enum { NP = 4, STEPS = 6, W = 3 };
  const double lr = 0.05, wd = 0.2, b1 = 0.9, b2 = 0.99, eps = 1e-8;
  Model m = {0};
  int64_t sw[2] = {3, 4}, se[3] = {2, 3, 4}, sb1[2] = {2, 4}, sb[1] = {4};
  add_param(&m, "w", 2, sw);
  add_param(&m, "m.w1", 3, se);
  add_param(&m, "m.b1", 2, sb1);
  add_param(&m, "b", 1, sb);
  const bool decays[NP] = {true, true, false, false};
  Config cfg = opt_config(kind, lr, 0);
  cfg.beta1 = b1;
  cfg.beta2 = b2;
  cfg.eps = eps;
  cfg.warmup = W;
  cfg.steps = 100;
  cfg.weight_decay = wd;
  Optim *o = rt_optim_new(&cfg, &m.g);
  float *p[NP], *g[NP];
  double *rp[NP], *rm[NP], *rv[NP]; /* reference: params, Adam's m and v (or a vector's v) */
  double R[NP][8] = {{0}}, C[NP][8] = {{0}}; /* reference factored moments, per matrix */
  for (int i = 0; i < NP; i++) {
    int64_t n = m.t[i].numel;
    p[i] = mc_malloc((size_t)n * sizeof(float));
    g[i] = mc_malloc((size_t)n * sizeof(float));
    rp[i] = mc_calloc((size_t)n, sizeof(double));
    rm[i] = mc_calloc((size_t)n, sizeof(double));
    rv[i] = mc_calloc((size_t)n, sizeof(double));
    rt_init_param(&m.t[i], 7, p[i]);
    for (int64_t k = 0; k < n; k++)
      rp[i][k] = p[i][k];
  }
  for (int t = 1; t <= STEPS; t++) {
    const double lr_t = t <= W ? lr * t / W : lr;
    o->lr = rt_lr_at(&cfg, t);
    CHECK_CLOSE(o->lr, lr_t, 1e-15, 0);
    for (int i = 0; i < NP; i++) /* gradients of both signs, no zero */
      for (int64_t k = 0; k < m.t[i].numel; k++)
        g[i][k] = (float)(0.3 * sin(1.0 + 0.7 * (double)k + 1.3 * t + 2.1 * i) + 0.05);
    rt_optim_step(o, p, g);
    const double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    for (int i = 0; i < NP; i++) {
      const int64_t n = m.t[i].numel;
      if (decays[i])
        for (int64_t k = 0; k < n; k++)
          rp[i][k] *= 1 - lr_t * wd;
      if (kind == OPT_ADAM || m.t[i].ty.rank < 2) {
        for (int64_t k = 0; k < n; k++) {
          double gk = g[i][k];
          rv[i][k] = b2 * rv[i][k] + (1 - b2) * gk * gk;
          if (kind == OPT_ADAM) {
            rm[i][k] = b1 * rm[i][k] + (1 - b1) * gk;
            rp[i][k] -= lr_t * (rm[i][k] / bc1) / (sqrt(rv[i][k] / bc2) + eps);
          } else {
            rp[i][k] -= lr_t * gk / (sqrt(rv[i][k] / bc2) + eps);
          }
        }
        continue;
      }
      /* factored: each [rows, cols] matrix of the stack on its own */
      const int r = m.t[i].ty.rank;
      const int64_t rows = m.t[i].shape[r - 2], cols = m.t[i].shape[r - 1];
      for (int64_t l = 0; l < n / (rows * cols); l++) {
        const float *gm = g[i] + l * rows * cols;
        double *Rl = R[i] + l * rows, *Cl = C[i] + l * cols, rmean = 0;
        for (int64_t a = 0; a < rows; a++) {
          double sq = 0;
          for (int64_t c = 0; c < cols; c++)
            sq += (double)gm[a * cols + c] * gm[a * cols + c];
          Rl[a] = b2 * Rl[a] + (1 - b2) * sq / (double)cols;
          rmean += Rl[a] / (double)rows;
        }
        for (int64_t c = 0; c < cols; c++) {
          double sq = 0;
          for (int64_t a = 0; a < rows; a++)
            sq += (double)gm[a * cols + c] * gm[a * cols + c];
          Cl[c] = b2 * Cl[c] + (1 - b2) * sq / (double)rows;
        }
        for (int64_t a = 0; a < rows; a++)
          for (int64_t c = 0; c < cols; c++)
            rp[i][l * rows * cols + a * cols + c] -=
                lr_t * gm[a * cols + c] / (sqrt(Rl[a] * Cl[c] / rmean / bc2) + eps);
      }
    }
    if (t == 1 || t == STEPS) {
      double md = 0, moved = 0; /* the largest error; the decay's own size, for scale */
      for (int i = 0; i < NP; i++)
        for (int64_t k = 0; k < m.t[i].numel; k++) {
          md = fmax(md, fabs(p[i][k] - rp[i][k]) / fmax(1.0, fabs(rp[i][k])));
          if (decays[i]) moved = fmax(moved, fabs(rp[i][k]) * lr_t * wd);
        }
      if (md > 2e-6)
        fprintf(stderr, "weight decay, %s, step %d: off by %.3g\n",
                kind == OPT_ADAM ? "adam" : "factored", t, md);
      CHECK(md < 2e-6);
      CHECK(moved > 100 * 2e-6);
    }
  }
  for (int i = 0; i < NP; i++) {
    mc_free(p[i]);
    mc_free(g[i]);
    mc_free(rp[i]);
    mc_free(rm[i]);
    mc_free(rv[i]);
  }
  rt_optim_free(o);
}

/* Save after 3 steps, restore into a fresh optimizer, both continue: identical. */
static void test_state_roundtrip(OptKind kind) {
  char dir[] = "/tmp/moec_test_optim_XXXXXX";
  if (!mkdtemp(dir)) return;
  char path[256];
  snprintf(path, sizeof path, "%s/o.safetensors", dir);
  Model m = {0};
  int64_t sm[2] = {3, 4}, sv[1] = {5};
  add_param(&m, "w", 2, sm);
  add_param(&m, "v", 1, sv);
  Config cfg = opt_config(kind, 0.01, 0.5);
  Optim *a = rt_optim_new(&cfg, &m.g);
  float w[12], v[5], gw[12], gv[5];
  rt_init_param(m.params[0], 3, w);
  rt_init_param(m.params[1], 3, v);
  float *pp[2] = {w, v}, *gg[2] = {gw, gv};
  for (int t = 0; t < 3; t++) {
    for (int i = 0; i < 12; i++)
      gw[i] = sinf((float)(i + t));
    for (int i = 0; i < 5; i++)
      gv[i] = cosf((float)(i * t));
    rt_optim_step(a, pp, gg);
  }
  StTensor st[8];
  McArena names = {0};
  int n = rt_optim_tensors(a, st, &names);
  CHECK(n == (kind == OPT_ADAM ? 4 : 3));
  char step[32];
  snprintf(step, sizeof step, "%lld", (long long)a->t);
  const char *meta[] = {"optim.step", step, "optim.kind", kind == OPT_ADAM ? "adam" : "factored"};
  rt_st_save(path, st, n, meta, 2);
  mc_arena_free(&names);
  Optim *b = rt_optim_new(&cfg, &m.g);
  StFile *f = rt_st_open(path);
  CHECK(rt_optim_load(b, f));
  rt_st_close(f);
  CHECK(b->t == 3);
  float w2[12], v2[5];
  memcpy(w2, w, sizeof w);
  memcpy(v2, v, sizeof v);
  float *pp2[2] = {w2, v2};
  for (int t = 3; t < 6; t++) {
    for (int i = 0; i < 12; i++)
      gw[i] = sinf((float)(i + t));
    for (int i = 0; i < 5; i++)
      gv[i] = cosf((float)(i * t));
    rt_optim_step(a, pp, gg);
    rt_optim_step(b, pp2, gg);
  }
  CHECK(!memcmp(w, w2, sizeof w) && !memcmp(v, v2, sizeof v));
  /* an optimizer-less file: fresh state kept */
  float z[5] = {0};
  StTensor only[1] = {{"v", ST_F32, 1, {5}, z}};
  rt_st_save(path, only, 1, NULL, 0);
  f = rt_st_open(path);
  Optim *c = rt_optim_new(&cfg, &m.g);
  CHECK(!rt_optim_load(c, f));
  CHECK(c->t == 0);
  rt_st_close(f);
  rt_optim_free(a);
  rt_optim_free(b);
  rt_optim_free(c);
  unlink(path);
  rmdir(dir);
}

static void test_init(void) {
  Model m = {0};
  int64_t s[2] = {50, 40};
  add_param(&m, "lm.weight", 2, s);
  add_param(&m, "other.weight", 2, s);
  float *a = mc_malloc(2000 * 4), *b = mc_malloc(2000 * 4), *c = mc_malloc(2000 * 4);
  rt_init_param(m.params[0], 1, a);
  rt_init_param(m.params[0], 1, b);
  rt_init_param(m.params[1], 1, c);
  CHECK(!memcmp(a, b, 8000));
  CHECK(memcmp(a, c, 8000) != 0);
  double mean = 0, mx = 0;
  for (int i = 0; i < 2000; i++) {
    mean += a[i] / 2000.0;
    mx = fmax(mx, fabs(a[i]));
  }
  CHECK(mx <= 0.5 && mx > 0.49 && fabs(mean) < 0.02);
  rt_init_param(m.params[0], 2, b); /* another seed */
  CHECK(memcmp(a, b, 8000) != 0);
  m.params[0]->init = INIT_ZERO;
  rt_init_param(m.params[0], 1, b);
  bool zero = true;
  for (int i = 0; i < 2000; i++)
    zero &= b[i] == 0;
  CHECK(zero);
  m.params[0]->init = INIT_NORMAL;
  m.params[0]->init_scale = 2.0;
  rt_init_param(m.params[0], 1, b);
  double var = 0;
  for (int i = 0; i < 2000; i++)
    var += (double)b[i] * b[i] / 2000.0;
  CHECK_CLOSE(sqrt(var), 2.0, 0.08, 0);
  free(a);
  free(b);
  free(c);
}

/* State of the right element count but another shape or dtype: refused, saying what
 * differs (the sizes alone used to be compared, and the message then read "has 12
 * elements, expected 12"). */
static const char *mm_path;
static void load_mismatch(void *arg) {
  Model m = {0};
  int64_t sm[2] = {3, 4}, sv[1] = {5};
  add_param(&m, "w", 2, sm);
  add_param(&m, "v", 1, sv);
  Config cfg = opt_config(OPT_ADAM, 0.01, 0);
  (void)arg;
  rt_optim_load(rt_optim_new(&cfg, &m.g), rt_st_open(mm_path));
}

static void test_state_mismatch(void) {
  char path[300];
  snprintf(path, sizeof path, "%s/mm.safetensors", tmpdir);
  mm_path = path;
  float z[12] = {0};
  int32_t iz[5] = {0};
  const char *meta[] = {"optim.step", "3", "optim.kind", "adam"};
  StTensor t[4] = {{"optim.m.w", ST_F32, 2, {4, 3}, z},
                   {"optim.v.w", ST_F32, 2, {3, 4}, z},
                   {"optim.m.v", ST_F32, 1, {5}, z},
                   {"optim.v.v", ST_I32, 1, {5}, iz}};
  rt_st_save(path, t, 4, meta, 2);
  expect_death(load_mismatch, NULL,
               "'optim.m.w' has shape [4, 3], the model needs [3, 4] (saved for another model, "
               "optimizer or batch?)");
  t[0].shape[0] = 3;
  t[0].shape[1] = 4;
  rt_st_save(path, t, 4, meta, 2);
  expect_death(load_mismatch, NULL, "'optim.v.v' has dtype I32, the model needs F32");
  const char *bad[] = {"optim.step", "9223372036854775807", "optim.kind", "adam"};
  t[3].dtype = ST_F32;
  t[3].data = z;
  rt_st_save(path, t, 4, bad, 2);
  expect_death(load_mismatch, NULL,
               "optim.step '9223372036854775807' is not an integer from 0 to 2147483647");
  unlink(path);
}

/* ---------------------------------------------------------------- bits vs one element at a time */

/* The update one element at a time, in the order of docs/training.md's formulas (what
 * optim.c computed before it was split over threads): S = float or double storage.
 * The norm is given (the reference sums it in its own order). */
#define REF_UPDATE(S, name)                                                                        \
  static void name(const Optim *o, S **p, S **gr, S **m, S **v, S **vr, S **vc, int64_t t,         \
                   double norm) {                                                                  \
    double scale = o->clip > 0 && norm > o->clip ? o->clip / norm : 1.0;                           \
    const double b1 = o->beta1, b2 = o->beta2, lr = o->lr, eps = o->eps;                           \
    const double bc1 = 1.0 - pow(b1, (double)t), bc2 = 1.0 - pow(b2, (double)t);                   \
    for (int i = 0; i < o->n; i++) {                                                               \
      int r = o->prank[i];                                                                         \
      if (o->kind == OPT_ADAM) { /* in S: each operation rounded to S */                          \
        const S sb1 = (S)b1, snb1 = (S)(1.0 - b1), sb2 = (S)b2, snb2 = (S)(1.0 - b2);             \
        const S slr = (S)lr, seps = (S)eps, sbc1 = (S)bc1, sbc2 = (S)bc2, ssc = (S)scale;         \
        for (int64_t k = 0; k < o->numel[i]; k++) {                                                \
          volatile S g = gr[i][k] * ssc; /* volatile: one operation at a time, as written */      \
          volatile S mk = sb1 * m[i][k] + snb1 * g, vk = sb2 * v[i][k] + snb2 * g * g;            \
          volatile S vh = vk / sbc2, mh = mk / sbc1;                                               \
          volatile S den = (S)(sizeof(S) == 4 ? sqrtf((float)vh) : sqrt((double)vh)) + seps;      \
          m[i][k] = mk;                                                                            \
          v[i][k] = vk;                                                                            \
          p[i][k] = p[i][k] - slr * mh / den;                                                      \
        }                                                                                          \
      } else if (r < 2) {                                                                          \
        for (int64_t k = 0; k < o->numel[i]; k++) {                                                \
          double g = gr[i][k] * scale, vk = b2 * v[i][k] + (1.0 - b2) * g * g;                     \
          v[i][k] = (S)vk;                                                                         \
          p[i][k] = (S)(p[i][k] - lr * g / (sqrt(vk / bc2) + eps));                                \
        }                                                                                          \
      } else {                                                                                     \
        int64_t rows = o->shape[i][r - 2], cols = o->shape[i][r - 1];                              \
        int64_t lead = o->numel[i] / (rows * cols);                                                \
        double *colsum = mc_malloc((size_t)cols * sizeof(double));                                 \
        for (int64_t l = 0; l < lead; l++) {                                                       \
          S *pl = p[i] + l * rows * cols, *vrl = vr[i] + l * rows, *vcl = vc[i] + l * cols;        \
          const S *gl = gr[i] + l * rows * cols;                                                   \
          for (int64_t c = 0; c < cols; c++)                                                       \
            colsum[c] = 0;                                                                         \
          double rsum = 0;                                                                         \
          for (int64_t rr = 0; rr < rows; rr++) {                                                  \
            double s = 0;                                                                          \
            for (int64_t c = 0; c < cols; c++) {                                                   \
              double g = gl[rr * cols + c] * scale, g2 = g * g;                                    \
              s += g2;                                                                             \
              colsum[c] += g2;                                                                     \
            }                                                                                      \
            vrl[rr] = (S)(b2 * vrl[rr] + (1.0 - b2) * (s / (double)cols));                         \
            rsum += vrl[rr];                                                                       \
          }                                                                                        \
          for (int64_t c = 0; c < cols; c++)                                                       \
            vcl[c] = (S)(b2 * vcl[c] + (1.0 - b2) * (colsum[c] / (double)rows));                   \
          double rmean = rsum / (double)rows;                                                      \
          for (int64_t rr = 0; rr < rows; rr++)                                                    \
            for (int64_t c = 0; c < cols; c++) { /* sqrt(V / bc2) as a row and a column factor */  \
              double g = gl[rr * cols + c] * scale;                                                \
              double sr = rmean > 0 ? sqrt((double)vrl[rr] / (rmean * bc2)) : 0.0;                 \
              pl[rr * cols + c] =                                                                  \
                  (S)(pl[rr * cols + c] - lr * g / (sr * sqrt((double)vcl[c]) + eps));             \
            }                                                                                      \
        }                                                                                          \
        mc_free(colsum);                                                                           \
      }                                                                                            \
    }                                                                                              \
  }
REF_UPDATE(float, ref_update_f32)
REF_UPDATE(double, ref_update_f64)

/* Parameters big enough to split into many tasks: experts [3, 300, 700] (rows and
 * columns past one task each; expert 1's gradient all zero in the second step), a
 * matrix [40, 50], a long vector, a matrix [600, 500]; the factored optimizer takes a
 * matrix up to 1 MB as one task (the experts in f32, [40, 50]) and splits larger ones
 * (the experts in f64, [600, 500]); 3 steps with and without clipping (the second
 * step's gradients exceed it), f32 and f64, 1, 2 and 3 threads: the same bits as
 * ref_update, and the same norm for every thread count. */
static void test_bits(void) {
  Model md = {0};
  int64_t se[3] = {3, 300, 700}, sm[2] = {40, 50}, sv[1] = {70001}, sl[2] = {600, 500};
  add_param(&md, "m.w1", 3, se);
  add_param(&md, "w", 2, sm);
  add_param(&md, "b", 1, sv);
  add_param(&md, "w2", 2, sl);
  int np = md.g.nparams;
  for (int prec = 0; prec < 2; prec++)
    for (int kind = 0; kind < 2; kind++)
      for (int clip = 0; clip < 2; clip++) {
        size_t es = prec ? sizeof(double) : sizeof(float);
        Config cfg = opt_config(kind ? OPT_FACTORED : OPT_ADAM, 0.01, clip ? 30.0 : 0);
        double norms[3][3];
        for (int th = 1; th <= 3; th++) {
          rt_threads_set(th);
          Optim *o = rt_optim_new_prec(&cfg, &md.g, prec ? PREC_F64 : PREC_F32);
          void *p[4], *g[4], *rp[4], *rm[4] = {0}, *rv[4] = {0}, *rvr[4] = {0}, *rvc[4] = {0};
          for (int i = 0; i < np; i++) {
            int64_t n = md.params[i]->numel;
            p[i] = mc_malloc((size_t)n * es);
            rp[i] = mc_malloc((size_t)n * es);
            g[i] = mc_malloc((size_t)n * es);
            int r = md.params[i]->ty.rank;
            if (kind && r >= 2) {
              int64_t rows = md.params[i]->shape[r - 2], cols = md.params[i]->shape[r - 1];
              rvr[i] = mc_calloc((size_t)(n / cols), es);
              rvc[i] = mc_calloc((size_t)(n / rows), es);
            } else {
              rv[i] = mc_calloc((size_t)n, es);
              if (!kind) rm[i] = mc_calloc((size_t)n, es);
            }
            for (int64_t k = 0; k < n; k++) {
              double x = sin(0.37 * (double)k + i);
              if (prec)
                ((double *)p[i])[k] = ((double *)rp[i])[k] = x;
              else
                ((float *)p[i])[k] = ((float *)rp[i])[k] = (float)x;
            }
          }
          for (int step = 0; step < 3; step++) {
            double ss = 0;
            for (int i = 0; i < np; i++)
              for (int64_t k = 0; k < md.params[i]->numel; k++) {
                double x = cos(0.11 * (double)k * (step + 1) + i) * (step == 1 ? 3.0 : 0.01);
                if (step == 1 && i == 0 && k >= 210000 && k < 420000) x = 0; /* expert 1 */
                if (prec)
                  ((double *)g[i])[k] = x;
                else
                  ((float *)g[i])[k] = (float)x;
                x = prec ? ((double *)g[i])[k] : ((float *)g[i])[k];
                ss += x * x;
              }
            rt_optim_step(o, (float *const *)p, (float *const *)g);
            CHECK_CLOSE(o->last_norm, sqrt(ss), 1e-12, 0);
            norms[th - 1][step] = o->last_norm;
            if (prec)
              ref_update_f64(o, (double **)rp, (double **)g, (double **)rm, (double **)rv,
                             (double **)rvr, (double **)rvc, o->t, o->last_norm);
            else
              ref_update_f32(o, (float **)rp, (float **)g, (float **)rm, (float **)rv,
                             (float **)rvr, (float **)rvc, o->t, o->last_norm);
          }
          int bad = 0;
          for (int i = 0; i < np; i++) {
            size_t nb = (size_t)md.params[i]->numel * es;
            bad += memcmp(p[i], rp[i], nb) != 0;
            if (rv[i]) bad += memcmp(o->v[i], rv[i], nb) != 0;
            if (rm[i]) bad += memcmp(o->m[i], rm[i], nb) != 0;
            int r = md.params[i]->ty.rank;
            if (r < 2) continue; /* no row and column moments */
            size_t rows = (size_t)md.params[i]->shape[r - 2],
                   cols = (size_t)md.params[i]->shape[r - 1];
            if (rvr[i]) bad += memcmp(o->vr[i], rvr[i], nb / cols) != 0;
            if (rvc[i]) bad += memcmp(o->vc[i], rvc[i], nb / rows) != 0;
          }
          if (bad)
            fprintf(stderr, "bits: %s %s clip %d, %d threads: %d arrays differ\n",
                    prec ? "f64" : "f32", kind ? "factored" : "adam", clip, th, bad);
          CHECK(bad == 0);
          for (int i = 0; i < np; i++) {
            mc_free(p[i]);
            mc_free(rp[i]);
            mc_free(g[i]);
            mc_free(rm[i]);
            mc_free(rv[i]);
            mc_free(rvr[i]);
            mc_free(rvc[i]);
          }
          rt_optim_free(o);
        }
        for (int step = 0; step < 3; step++) /* the norm: the same bits for any thread count */
          CHECK(norms[0][step] == norms[1][step] && norms[0][step] == norms[2][step]);
      }
  rt_threads_set(1);
}

int main(void) {
  if (!mkdtemp(tmpdir)) return 1;
  test_adam_quadratic();
  test_adam_f32_vs_double();
  test_clip();
  test_f64();
  test_factored();
  test_weight_decay(OPT_ADAM);
  test_weight_decay(OPT_FACTORED);
  test_state_roundtrip(OPT_ADAM);
  test_state_roundtrip(OPT_FACTORED);
  test_init();
  test_bits();
  test_state_mismatch();
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  TEST_DONE();
}
