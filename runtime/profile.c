/* profile.c: times every instruction of a training program, step after step, as the
 * interpreter loop runs them (no host JIT: each call is timed alone). The inputs are
 * random ids, so routing is whatever the initial gates make of them. */
#include "profile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "run.h"

/* Random ids below the vocabulary in every i32 input (token ids, targets). */
static void fill_ids(Program *p, uint64_t seed) {
  const Graph *g = p->g;
  int64_t vocab = p->vocab > 0 ? p->vocab : 1 << 30;
  for (int k = 0; k < g->nnodes; k++) { /* as drv_model_vocab: the smallest in use */
    const Node *n = g->nodes[k];
    if (n->op == OP_EMBEDDING) vocab = MC_MIN(vocab, n->in[1]->shape[0]);
    if (n->op == OP_XENT) vocab = MC_MIN(vocab, n->in[0]->shape[n->in[0]->ty.rank - 1]);
  }
  uint64_t key = mc_rng_key(seed, 999, 0);
  for (int i = 0; i < g->ninputs; i++) {
    const Tensor *t = g->inputs[i];
    if (t->ty.dtype != DT_I32) continue;
    int32_t *v = rt_i32(p, t);
    for (int64_t j = 0; j < t->numel; j++)
      v[j] =
          (int32_t)((int64_t)(mc_rng_uniform(key, (uint64_t)(i * t->numel + j)) * (double)vocab) %
                    vocab);
  }
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* The median of v[0..n) (sorted in place); 0 when n is 0. */
static double median(double *v, int n) {
  if (n <= 0) return 0;
  qsort(v, (size_t)n, sizeof(double), by_value);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

RtProfile rt_profile_steps(Program *p, const Config *cfg, int steps, double (*clock)(void),
                           Comm *comm) {
  MOEC_ASSERT(p->be == &rt_backend_cpu && p->prec == PREC_F32);
  const Graph *g = p->g;
  RtProfile r = {.steps = steps};
  r.instr_s = mc_calloc((size_t)MC_MAX(p->ninstrs, 1), sizeof(double));
  r.instr_med = mc_calloc((size_t)MC_MAX(p->ninstrs, 1), sizeof(double));
  int ns = MC_MAX(steps, 1), ni = MC_MAX(p->ninstrs, 1);
  double *each = mc_calloc((size_t)ns * (size_t)ni, sizeof(double)); /* [instr][step] */
  double *opt_each = mc_calloc((size_t)ns, sizeof(double));
  double *step_each = mc_calloc((size_t)ns, sizeof(double));
  rt_init_params(p, cfg->seed);
  fill_ids(p, cfg->seed);
  Optim *opt = rt_optim_new(cfg, g);
  rt_optim_fold(opt, p);
  int np = MC_MAX(g->nparams, 1);
  float **pp = mc_calloc((size_t)np, sizeof(float *)),
        **gg = mc_calloc((size_t)np, sizeof(float *));
  float **own = mc_calloc((size_t)np, sizeof(float *));
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    pp[i] = rt_f32(p, t);
    gg[i] = t->grad ? rt_f32(p, t->grad) : (own[i] = mc_calloc((size_t)t->numel, sizeof(float)));
  }
  for (int s = -1; s < steps; s++) { /* step -1: the warm-up, not counted */
    int rank = comm ? comm->rank : 0, P = comm ? comm->size : 1;
    KernelCtx ctx = {.training = true,
                     .seed = cfg->seed,
                     .step = (uint64_t)(s + 1),
                     .batch0 = (int64_t)rank * g->B,
                     .batch_local = g->B,
                     .device = rank,
                     .ndevices = P,
                     .comm = P > 1 ? comm : NULL,
                     .graph = P > 1 ? g : NULL};
    for (int k = 0; k < p->ninstrs; k++) {
      const Instr *ins = &p->instrs[k];
      double t0 = clock();
      ins->fn(&ctx, ins->node, ins->in, ins->out);
      double dt = clock() - t0;
      if (s >= 0) r.instr_s[k] += each[(size_t)k * (size_t)ns + (size_t)s] = dt;
    }
    double t0 = clock();
    rt_optim_step(opt, pp, gg);
    double dt = clock() - t0;
    if (s >= 0) r.optim_s += opt_each[s] = dt;
    if (s >= 0)
      for (int k = 0; k < p->ninstrs; k++)
        step_each[s] += each[(size_t)k * (size_t)ns + (size_t)s];
    if (s >= 0) step_each[s] += dt;
    rt_carry_state(p);
  }
  for (int k = 0; k < p->ninstrs && steps > 0; k++)
    r.instr_med[k] = median(each + (size_t)k * (size_t)ns, steps);
  r.optim_med = median(opt_each, steps);
  r.step_med = median(step_each, steps);
  mc_free(step_each);
  mc_free(each);
  mc_free(opt_each);
  for (int i = 0; i < g->nparams; i++)
    mc_free(own[i]);
  mc_free(own);
  mc_free(pp);
  mc_free(gg);
  rt_optim_free(opt);
  return r;
}

void rt_profile_keep_min(RtProfile *best, const RtProfile *r, int ninstrs) {
  size_t n = (size_t)MC_MAX(ninstrs, 1);
  if (!best->instr_med) {
    *best = *r;
    best->instr_s = mc_malloc(n * sizeof(double));
    best->instr_med = mc_malloc(n * sizeof(double));
    memcpy(best->instr_s, r->instr_s, n * sizeof(double));
    memcpy(best->instr_med, r->instr_med, n * sizeof(double));
    return;
  }
  for (int k = 0; k < ninstrs; k++) {
    best->instr_s[k] = fmin(best->instr_s[k], r->instr_s[k]);
    best->instr_med[k] = fmin(best->instr_med[k], r->instr_med[k]);
  }
  best->optim_s = fmin(best->optim_s, r->optim_s);
  best->optim_med = fmin(best->optim_med, r->optim_med);
  best->step_med = fmin(best->step_med, r->step_med);
}

void rt_profile_free(RtProfile *r) {
  mc_free(r->instr_s);
  mc_free(r->instr_med);
  r->instr_s = r->instr_med = NULL;
}
