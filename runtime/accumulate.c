/* accumulate.c: gradient accumulation (train.accumulate = K): a step is K micro-batches
 * whose gradients add up to the gradient of one batch of K times the rows. Each
 * micro-batch keeps its own carried state; the MoE layers' importance and load vectors
 * are the whole step's (pass 1 sums them over the micro-batches, pass 2 runs each
 * forward again with the sums put in, then its backward), so every aux loss and its
 * gradient equal the big batch's. docs/training.md, "Gradient accumulation". */
#include <string.h>

#include "run.h"

/* Where a micro-batch's forward takes in the whole step's MoE statistics: after the
 * instruction that makes an importance or load vector (after its all-reduce on N
 * devices), the vector becomes the sum over all K micro-batches (train.accumulate). */
typedef struct AccPatch {
  int instr;
  const Tensor *t;
  double *total; /* [t->numel]: the sum over the step's micro-batches */
} AccPatch;

/* The instructions after which accumulation puts in the whole step's MoE statistics. */
static void find_patches(Run *r) {
  Program *p = r->p;
  Graph *g = p->g;
  r->patch = mc_calloc((size_t)2 * g->nmoe + 1, sizeof(AccPatch));
  for (int i = 0; i < 2 * g->nmoe; i++) {
    const Tensor *t = i % 2 ? (g->moe_load ? g->moe_load[i / 2] : NULL)
                            : (g->moe_importance ? g->moe_importance[i / 2] : NULL);
    if (!t || !t->producer) continue;
    int at = -1;
    for (int k = 0; k < p->first_backward && at < 0; k++)
      if (p->instrs[k].node == t->producer) at = k;
    MOEC_ASSERT(at >= 0); /* monitoring vectors are made in the forward pass */
    r->patch[r->npatch++] = (AccPatch){at, t, mc_calloc((size_t)MC_MAX(t->numel, 1), 8)};
  }
  for (int a = 1; a < r->npatch; a++) /* in program order */
    for (int b = a; b > 0 && r->patch[b].instr < r->patch[b - 1].instr; b--) {
      AccPatch x = r->patch[b];
      r->patch[b] = r->patch[b - 1];
      r->patch[b - 1] = x;
    }
}

void rt_accum_setup(Run *r) {
  Program *p = r->p;
  Graph *g = p->g;
  if (r->K <= 1) return;
  r->kstate = mc_calloc((size_t)r->K * g->nstates + 1, sizeof(void *));
  for (int j = 0; j < r->K; j++)
    for (int i = 0; i < g->nstates; i++) {
      size_t nb = (size_t)g->states[i].state->numel * p->elem;
      void *b = p->be->alloc(MC_MAX(nb, 1));
      if (!b) mc_die("out of memory for the carried state of %d micro-batches", r->K);
      r->kstate[j * g->nstates + i] = b;
    }
  r->acc = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  for (int i = 0; i < g->nparams; i++)
    r->acc[i] = mc_calloc_big((size_t)MC_MAX(g->params[i]->numel, 1), p->elem);
  find_patches(r);
}

void rt_accum_free(Run *r) {
  Graph *g = r->p->g;
  for (int i = 0; r->acc && i < g->nparams; i++)
    mc_free(r->acc[i]);
  for (int i = 0; r->kstate && i < r->K * g->nstates; i++)
    r->p->be->release(r->kstate[i]);
  for (int i = 0; i < r->npatch; i++)
    mc_free(r->patch[i].total);
  mc_free(r->patch);
  mc_free(r->acc);
  mc_free(r->kstate);
}

/* Micro-batch j's carried state in (from its own buffers) or out (from the step's next
 * values). */
static void state_in(Run *r, int j) {
  Graph *g = r->p->g;
  for (int i = 0; i < g->nstates; i++)
    r->p->be->copy(r->p->buf[g->states[i].state->id], r->kstate[j * g->nstates + i],
                   (size_t)g->states[i].state->numel * r->p->elem);
}

static void state_out(Run *r, int j) {
  Graph *g = r->p->g;
  for (int i = 0; i < g->nstates; i++)
    r->p->be->copy(r->kstate[j * g->nstates + i], r->p->buf[g->states[i].next->id],
                   (size_t)g->states[i].next->numel * r->p->elem);
}

/* The vector t as doubles added to sum (the program's precision). */
static void add_vector(Program *p, const Tensor *t, double *sum) {
  void *raw = mc_malloc((size_t)MC_MAX(t->numel, 1) * p->elem);
  p->be->download(raw, p->buf[t->id], (size_t)t->numel * p->elem);
  for (int64_t k = 0; k < t->numel; k++)
    sum[k] += p->prec == PREC_F64 ? ((double *)raw)[k] : ((float *)raw)[k];
  mc_free(raw);
}

static void put_vector(Program *p, const Tensor *t, const double *v) {
  void *raw = mc_malloc((size_t)MC_MAX(t->numel, 1) * p->elem);
  for (int64_t k = 0; k < t->numel; k++)
    if (p->prec == PREC_F64)
      ((double *)raw)[k] = v[k];
    else
      ((float *)raw)[k] = (float)v[k];
  p->be->upload(p->buf[t->id], raw, (size_t)t->numel * p->elem);
  mc_free(raw);
}

static void feed(Program *p, const int32_t *ids, const int32_t *tg) {
  rt_feed(p, p->ids, ids);
  rt_feed(p, p->targets, tg);
}

double rt_accum_step(Run *r, int32_t *const *ids, int32_t *const *tg, int64_t s) {
  Program *p = r->p;
  Graph *g = p->g;
  for (int i = 0; i < r->npatch; i++)
    memset(r->patch[i].total, 0, (size_t)MC_MAX(r->patch[i].t->numel, 1) * sizeof(double));
  for (int j = 0; j < r->K && r->npatch; j++) {
    KernelCtx ctx = rt_run_ctx(r, s, j);
    ctx.trace = NULL;
    state_in(r, j);
    feed(p, ids[j], tg[j]);
    rt_exec(p, &ctx, 0, p->first_backward);
    for (int i = 0; i < r->npatch; i++)
      add_vector(p, r->patch[i].t, r->patch[i].total);
  }
  for (int i = 0; i < g->nparams; i++)
    memset(r->acc[i], 0, (size_t)g->params[i]->numel * p->elem);
  double xent = 0;
  for (int j = 0; j < r->K; j++) {
    KernelCtx ctx = rt_run_ctx(r, s, j);
    state_in(r, j);
    feed(p, ids[j], tg[j]);
    int at = 0;
    for (int i = 0; i < r->npatch; i++) {
      rt_exec(p, &ctx, at, r->patch[i].instr + 1);
      put_vector(p, r->patch[i].t, r->patch[i].total);
      at = r->patch[i].instr + 1;
    }
    rt_exec(p, &ctx, at, p->ninstrs);
    for (int i = 0; i < g->nparams; i++) {
      if (!g->params[i]->grad) continue;
      if (p->prec == PREC_F64)
        for (int64_t k = 0; k < g->params[i]->numel; k++)
          ((double *)r->acc[i])[k] += ((double *)r->grads[i])[k];
      else
        for (int64_t k = 0; k < g->params[i]->numel; k++)
          r->acc[i][k] += r->grads[i][k];
    }
    state_out(r, j);
    xent += rt_read_scalar(p, g->xent);
  }
  return xent;
}
