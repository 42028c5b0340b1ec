/* optim_bench.c: the optimizer's update alone on E experts' weights (lm_bench.moe's
 * [E, 256, 512] and [E, 512, 256]), Adam and factored, timed apart from the step: the
 * figure op_profile's "optimizer" part holds, without the step's noise around it.
 *
 *   MOEC_THREADS=1 build/optim_bench [--cpu-time] [E (default 256)] [steps (default 5)]
 *
 * One warm-up update (the moments' pages), then `steps` timed; prints ms a step and ns
 * a parameter for each optimizer. About an eighth of the experts get an all-zero
 * gradient (experts without rows). --cpu-time: the process's CPU time, as op_profile. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/train.h"

static clockid_t clock_id = CLOCK_MONOTONIC;

static double now(void) {
  struct timespec t;
  clock_gettime(clock_id, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
  int a = 1;
  if (a < argc && !strcmp(argv[a], "--cpu-time")) {
    clock_id = CLOCK_PROCESS_CPUTIME_ID;
    a++;
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
    p[i] = mc_malloc((size_t)t[i].numel * sizeof(float));
    gr[i] = mc_malloc((size_t)t[i].numel * sizeof(float));
    for (int64_t k = 0; k < t[i].numel; k++) {
      p[i][k] = 0.01f * (float)(k % 7);
      gr[i][k] = (k / per) % 8 == 3 ? 0.0f : 1e-3f * (float)(k % 13);
    }
  }
  printf("optim_bench: %lld experts, %.1fM parameters, %d threads, %d steps%s\n", (long long)E,
         (double)n / 1e6, rt_threads(), steps,
         clock_id == CLOCK_PROCESS_CPUTIME_ID ? ", CPU time" : "");
  for (int kind = 0; kind < 2; kind++) {
    Config cfg = {.optimizer = kind ? OPT_FACTORED : OPT_ADAM,
                  .lr = 1e-3,
                  .beta1 = 0.9,
                  .beta2 = 0.999,
                  .eps = 1e-8};
    Optim *o = rt_optim_new(&cfg, &g);
    rt_optim_step(o, p, gr);
    double t0 = now();
    for (int s = 0; s < steps; s++)
      rt_optim_step(o, p, gr);
    double dt = (now() - t0) / steps;
    printf("%-8s %9.1f ms/step %7.3f ns/param\n", kind ? "factored" : "adam", dt * 1e3,
           dt * 1e9 / (double)n);
    rt_optim_free(o);
  }
  for (int i = 0; i < 2; i++) {
    mc_free(p[i]);
    mc_free(gr[i]);
  }
  return 0;
}
