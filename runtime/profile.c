/* profile.c: times every instruction of a training program, step after step, as the
 * interpreter loop runs them (no host JIT: each call is timed alone). The inputs are
 * random ids, so routing is whatever the initial gates make of them. */
#include "profile.h"

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

RtProfile rt_profile_steps(Program *p, const Config *cfg, int steps, double (*clock)(void),
                           Comm *comm) {
  MOEC_ASSERT(p->be == &rt_backend_cpu && p->prec == PREC_F32);
  const Graph *g = p->g;
  RtProfile r = {.steps = steps};
  r.instr_s = mc_calloc((size_t)MC_MAX(p->ninstrs, 1), sizeof(double));
  rt_init_params(p, cfg->seed);
  fill_ids(p, cfg->seed);
  Optim *opt = rt_optim_new(cfg, g);
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
      if (s >= 0) r.instr_s[k] += clock() - t0;
    }
    double t0 = clock();
    rt_optim_step(opt, pp, gg);
    if (s >= 0) r.optim_s += clock() - t0;
    rt_carry_state(p);
  }
  for (int i = 0; i < g->nparams; i++)
    mc_free(own[i]);
  mc_free(own);
  mc_free(pp);
  mc_free(gg);
  rt_optim_free(opt);
  return r;
}

void rt_profile_free(RtProfile *r) {
  mc_free(r->instr_s);
  r->instr_s = NULL;
}
