/* optim_bench.c: the optimizer's update alone on E experts' weights (lm_bench.moe's
 * [E, 256, 512] and [E, 512, 256]), Adam and factored, timed apart from the step: the
 * figure op_profile's "optimizer" part holds, without the step's noise around it.
 *
 *   MOEC_THREADS=1 build/optim_bench [--cpu-time] [--fold R] [E (default 256)] [steps (default 5)]
 *
 * One warm-up update (the moments' pages), then `steps` timed; prints ms a step and ns
 * a parameter for each optimizer. About an eighth of the experts get an all-zero
 * gradient (experts without rows). --cpu-time: the process's CPU time, as op_profile.
 * --fold R (1..8): also the update with the gradient folded (docs/training.md): each
 * expert R rows of xs and g, its dW made by the optimizer (rt_fold_dw) rather than read;
 * the dense row's time plus grouped_matmul_dw's write is what the fold replaces.
 * Each optimizer's memory floor beside it: a pass over the same arrays in the same
 * spans and threads that reads and writes the bytes the update must (Adam: g, p, m, v
 * read, p, m, v written, 28 bytes a parameter, 24 folded; factored: g and p read, p
 * written, 12, folded 8), with one multiply-add an element: what the memory allows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/train.h"
#include "runtime/vec.h"

static clockid_t clock_id = CLOCK_MONOTONIC;

static double now(void) {
  struct timespec t;
  clock_gettime(clock_id, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The floor's pass: arrays of n floats cut into spans of FLOOR_SPAN (optim.c's OPT_SPAN) */
#define FLOOR_SPAN 16384
typedef struct Floor {
  float *p, *g, *m, *v; /* g NULL: folded (not read); m, v NULL: factored */
  int64_t n;
} Floor;

VEC static void floor_span(const Floor *f, int64_t a, int64_t b) {
  float *restrict p = f->p, *restrict m = f->m, *restrict v = f->v;
  const float *restrict g = f->g;
  if (m && g)
    for (int64_t k = a; k < b; k++) {
      float x = g[k];
      m[k] = 0.9f * m[k] + x;
      v[k] = 0.9f * v[k] + x;
      p[k] = p[k] - 1e-9f * (m[k] + v[k]);
    }
  else if (m)
    for (int64_t k = a; k < b; k++) {
      m[k] = 0.9f * m[k];
      v[k] = 0.9f * v[k];
      p[k] = p[k] - 1e-9f * (m[k] + v[k]);
    }
  else if (g)
    for (int64_t k = a; k < b; k++)
      p[k] = p[k] - 1e-9f * g[k];
  else
    for (int64_t k = a; k < b; k++)
      p[k] = 0.999f * p[k];
}

typedef struct FloorJob {
  Floor f[2];
  int64_t n0; /* spans of f[0] */
} FloorJob;

static void floor_task(void *arg, int64_t k) {
  const FloorJob *J = arg;
  const Floor *f = &J->f[k >= J->n0];
  int64_t s = k >= J->n0 ? k - J->n0 : k;
  floor_span(f, s * FLOOR_SPAN, MC_MIN(f->n, (s + 1) * FLOOR_SPAN));
}

/* ms a step of the floor's pass over params p with gradients g (NULL: folded), Adam's
 * two moments (adam) or none */
static double floor_ms(float *const *p, float *const *g, const int64_t *numel, bool adam,
                       int steps) {
  FloorJob J = {0};
  float *st[2][2] = {{NULL}};
  for (int i = 0; i < 2; i++) {
    for (int j = 0; j < 2 && adam; j++)
      st[i][j] = mc_calloc_big((size_t)numel[i], sizeof(float));
    J.f[i] = (Floor){p[i], g ? g[i] : NULL, st[i][0], st[i][1], numel[i]};
  }
  J.n0 = (numel[0] + FLOOR_SPAN - 1) / FLOOR_SPAN;
  int64_t nt = J.n0 + (numel[1] + FLOOR_SPAN - 1) / FLOOR_SPAN;
  rt_parallel(nt, floor_task, &J); /* the pages, as the optimizer's warm-up */
  double t0 = now();
  for (int s = 0; s < steps; s++)
    rt_parallel(nt, floor_task, &J);
  double dt = (now() - t0) / steps;
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 2; j++)
      mc_free(st[i][j]);
  return dt * 1e3;
}

int main(int argc, char **argv) {
  int a = 1;
  if (a < argc && !strcmp(argv[a], "--cpu-time")) {
    clock_id = CLOCK_PROCESS_CPUTIME_ID;
    a++;
  }
  int fold = 0;
  if (a + 1 < argc && !strcmp(argv[a], "--fold")) {
    fold = atoi(argv[a + 1]);
    a += 2;
    if (fold < 1 || fold > RT_FOLD_ROWS) {
      fprintf(stderr, "optim_bench: --fold R takes 1..%d rows\n", RT_FOLD_ROWS);
      return 2;
    }
  }
  int64_t E = a < argc ? atoll(argv[a]) : 256;
  int steps = a + 1 < argc ? atoi(argv[a + 1]) : 5;
  if (E < 1 || steps < 1) {
    fprintf(stderr, "usage: optim_bench [--cpu-time] [experts >= 1] [steps >= 1]\n");
    return 2;
  }
  const char *nt = getenv("MOEC_THREADS"); /* as moec's command line reads it */
  if (nt && atoi(nt) >= 1) rt_threads_set(MC_MIN(atoi(nt), RT_MAX_THREADS));
  static Tensor t[2];
  Tensor *ps[2] = {&t[0], &t[1]};
  const char *names[2] = {"m.w1", "m.w2"};
  const int64_t shapes[2][3] = {{E, 256, 512}, {E, 512, 256}};
  for (int i = 0; i < 2; i++) {
    t[i] = (Tensor){.id = i, .name = names[i], .kind = TK_PARAM, .numel = 1};
    t[i].ty.rank = 3;
    for (int d = 0; d < 3; d++)
      t[i].numel *= t[i].shape[d] = shapes[i][d];
  }
  Graph g = {.params = ps, .nparams = 2};
  int64_t per = 256 * 512, n = t[0].numel + t[1].numel;
  float *p[2], *gr[2];
  for (int i = 0; i < 2; i++) {
    p[i] = mc_calloc_big((size_t)t[i].numel, sizeof(float));
    gr[i] = mc_calloc_big((size_t)t[i].numel, sizeof(float));
    for (int64_t k = 0; k < t[i].numel; k++) {
      p[i][k] = 0.01f * (float)(k % 7);
      gr[i][k] = (k / per) % 8 == 3 ? 0.0f : 1e-3f * (float)(k % 13);
    }
  }
  /* folded: expert e's R rows of xs [E*R, in] and g [E*R, out] */
  FoldDW fd[2] = {{0}};
  float *fx[2] = {NULL, NULL}, *fg[2] = {NULL, NULL};
  int32_t *off = mc_malloc((size_t)(E + 1) * sizeof(int32_t));
  for (int64_t e = 0; e <= E; e++)
    off[e] = (int32_t)(e * fold);
  for (int i = 0; i < 2 && fold; i++) {
    int64_t R = E * fold, in = shapes[i][1], out = shapes[i][2];
    fx[i] = mc_malloc((size_t)(R * in) * sizeof(float));
    fg[i] = mc_malloc((size_t)(R * out) * sizeof(float));
    for (int64_t k = 0; k < R * in; k++)
      fx[i][k] = 1e-2f * (float)(k % 11);
    for (int64_t k = 0; k < R * out; k++)
      fg[i][k] = 1e-2f * (float)(k % 5);
    fd[i] = (FoldDW){fx[i], fg[i], off, gr[i], E, in, out};
  }
  printf("optim_bench: %lld experts, %.1fM parameters, %d threads, %d steps%s\n", (long long)E,
         (double)n / 1e6, rt_threads(), steps,
         clock_id == CLOCK_PROCESS_CPUTIME_ID ? ", CPU time" : "");
  for (int run = 0; run < (fold ? 4 : 2); run++) {
    int kind = run % 2;
    Config cfg = {.optimizer = kind ? OPT_FACTORED : OPT_ADAM,
                  .lr = 1e-3,
                  .beta1 = 0.9,
                  .beta2 = 0.999,
                  .eps = 1e-8};
    Optim *o = rt_optim_new(&cfg, &g);
    if (run >= 2) { /* the folded pass (rt_optim_fold's table, made here) */
      o->fold = mc_calloc(2, sizeof(FoldDW));
      memcpy(o->fold, fd, sizeof fd);
    }
    rt_optim_step(o, p, gr);
    double t0 = now();
    for (int s = 0; s < steps; s++)
      rt_optim_step(o, p, gr);
    double dt = (now() - t0) / steps;
    rt_optim_free(o);
    const int64_t numel[2] = {t[0].numel, t[1].numel};
    double fl = floor_ms(p, run >= 2 ? NULL : gr, numel, kind == 0, steps);
    int bytes = (kind ? 12 : 28) - (run >= 2 ? 4 : 0);
    printf("%-16s %9.1f ms/step %7.3f ns/param; floor (%d B/param) %7.1f ms/step %7.3f ns/param, "
           "%5.1f GB/s: %.2fx the floor\n",
           run >= 2 ? (kind ? "factored, folded" : "adam, folded")
           : kind   ? "factored"
                    : "adam",
           dt * 1e3, dt * 1e9 / (double)n, bytes, fl, fl * 1e6 / (double)n,
           (double)bytes * (double)n / (fl * 1e-3) / 1e9, dt * 1e3 / fl);
  }
  for (int i = 0; i < 2; i++) {
    mc_free(p[i]);
    mc_free(gr[i]);
    mc_free(fx[i]);
    mc_free(fg[i]);
  }
  mc_free(off);
  return 0;
}
