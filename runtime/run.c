/* run.c: what every training run sets up before its first step and tears down after its
 * last, whatever its data: outputs (rank 0 prints and writes), the checkpoint to resume,
 * the optimizer, parameters from the seed or the checkpoint, host views of parameters and
 * gradients, the metrics file and the header. train_loop.c (language models) and
 * train_nmt.c (translation models) load their data in between. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "run.h"

StFile *rt_run_open(Run *r, Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
  *r = (Run){.cfg = cfg, .o = *o, .comm = comm, .p = p, .rank = comm->rank, .P = comm->size};
  if (r->rank > 0) { /* rank 0 prints and writes files */
    r->o.quiet = true;
    r->o.json = false;
    r->o.metrics = NULL;
  }
  r->out = r->o.json ? stderr : stdout;
  if (r->rank > 0) r->out = r->devnull = fopen("/dev/null", "w");
  if (!r->out) r->out = stderr;
  r->tty = !r->o.quiet && isatty(fileno(r->out));
  r->Bl = (int)p->g->B;
  r->T = (int)p->g->T;
  MOEC_ASSERT(p->g->B_global == (int64_t)r->Bl * r->P); /* compiled for this device count */
  if (r->P > 1) comm_check_same(comm, "model file and settings hash", o->settings_hash);
  if (o->save && r->rank == 0) rt_ckpt_check_path(o->save);
  return o->load ? rt_st_open(o->load) : NULL;
}

int64_t rt_run_start(Run *r, StFile *ck) {
  Program *p = r->p;
  r->opt = rt_md_optim_new(r->cfg, p);
  rt_init_params(p, r->cfg->seed);
  int64_t start = ck ? rt_ckpt_resume(r, ck) : 0;
  rt_st_close(ck);
  /* after loading: starts from the checkpoint's state; on N devices its clipping takes the
   * global gradient norm over comm, as rt_md_optim_step */
  r->dopt = rt_devopt_new(p, r->opt, r->comm);
  Graph *g = p->g;
  r->params = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  r->grads = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  for (int i = 0; i < g->nparams && rt_dev_on_host(p); i++) {
    const Tensor *t = g->params[i];
    /* float pointers; under --f64 they point to doubles (the optimizer's elem is 8) */
    r->params[i] = rt_f32(p, t);
    r->grads[i] = t->grad ? rt_f32(p, t->grad) : mc_calloc((size_t)t->numel, p->elem);
  }
  if (r->o.metrics) {
    r->metrics = fopen(r->o.metrics, "w");
    if (!r->metrics) mc_die("cannot write metrics file '%s': %s", r->o.metrics, strerror(errno));
  }
  if (r->rank == 0) rt_report_header(r, start);
  return start;
}

void rt_run_close(Run *r) {
  Graph *g = r->p->g;
  for (int i = 0; i < g->nparams && rt_dev_on_host(r->p); i++)
    if (!g->params[i]->grad) mc_free(r->grads[i]);
  mc_free(r->params);
  mc_free(r->grads);
  if (r->metrics) fclose(r->metrics);
  if (r->devnull) fclose(r->devnull);
  rt_devopt_free(r->dopt);
  rt_optim_free(r->opt);
}

double rt_run_step(Run *r, int64_t s, double *xent_out, double *aux_out) {
  Program *p = r->p;
  Graph *g = p->g;
  KernelCtx ctx = {.training = true,
                   .seed = r->cfg->seed,
                   .step = (uint64_t)s,
                   .batch0 = (int64_t)r->rank * r->Bl,
                   .batch_local = r->Bl,
                   .device = r->rank,
                   .ndevices = r->P,
                   .comm = r->P > 1 ? r->comm : NULL,
                   .graph = r->P > 1 ? g : NULL,
                   .stats = &r->stats,
                   .dev = p->dev};
  rt_exec(p, &ctx, 0, p->ninstrs);
  double loss = rt_read_scalar(p, g->loss), xent = rt_read_scalar(p, g->xent),
         aux = rt_read_scalar(p, g->aux);
  if (r->P > 1) { /* xent: each device's share of the global mean; aux: replicated */
    Comm *c = r->comm;
    if (g->xent && g->xent->producer && !ir_runs_on(g->xent->producer, r->rank, r->P))
      xent = 0; /* the loss on(...) other devices: this one has no rows of it */
    uint64_t am = g->aux && g->aux->producer ? ir_node_mask(g->aux->producer, r->P) : 0;
    if (am && am != comm_all_mask(c)) c->broadcast(c, &aux, sizeof aux, __builtin_ctzll(am));
    c->all_reduce_sum_f64(c, &xent, 1);
    loss = g->aux ? xent + aux : xent;
  }
  *xent_out = xent;
  *aux_out = aux;
  return loss;
}

void rt_run_update(Run *r, double loss, int64_t s) {
  if (!isfinite(loss))
    mc_die("the loss is %g at step %lld: training diverged (try a smaller lr, or clip)", loss,
           (long long)s + 1);
  if (r->dopt)
    rt_devopt_step(r->dopt, r->opt);
  else
    rt_md_optim_step(r->comm, r->p, r->opt, r->params, r->grads);
  rt_carry_state(r->p);
}
