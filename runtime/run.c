/* run.c: what every training run sets up before its first step and tears down after its
 * last, whatever its data: outputs (rank 0 prints and writes), the checkpoint to resume,
 * the optimizer, parameters from the seed or the checkpoint, host views of parameters and
 * gradients, the metrics file and the header. train_loop.c (language models) and
 * train_nmt.c (translation models) load their data in between. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run.h"

/* The step a metrics line is about ("step":N), or -1 for a line without one. */
static int64_t line_step(const char *line) {
  const char *s = strstr(line, "\"step\":");
  return s ? strtoll(s + 7, NULL, 10) : -1;
}

/* The metrics file of a run starting at `start`: a new file, or (resuming) the old one
 * with the lines of the steps after `start` dropped (an interrupted run may have gone
 * on after its last checkpoint), opened for appending. */
static FILE *open_metrics(const char *path, int64_t start) {
  size_t len = 0;
  char *old = start > 0 ? mc_read_file(path, &len) : NULL;
  if (old) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) mc_die("cannot write metrics file '%s': %s", tmp, strerror(errno));
    int64_t dropped = 0;
    for (char *line = old; line < old + len;) {
      char *nl = memchr(line, '\n', (size_t)(old + len - line));
      if (!nl) break; /* a line cut short by a crash */
      *nl = 0;
      if (line_step(line) <= start)
        fprintf(f, "%s\n", line);
      else
        dropped++;
      line = nl + 1;
    }
    if (fclose(f) != 0 || rename(tmp, path) != 0)
      mc_die("cannot rewrite metrics file '%s': %s", path, strerror(errno));
    if (dropped)
      fprintf(stderr,
              "moec: note: '%s': %lld lines after step %lld dropped (the run resumes "
              "there)\n",
              path, (long long)dropped, (long long)start);
    mc_free(old);
  }
  FILE *f = fopen(path, old ? "a" : "w");
  if (!f) mc_die("cannot write metrics file '%s': %s", path, strerror(errno));
  return f;
}

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
  r->K = MC_MAX(cfg->accumulate, 1);
  MOEC_ASSERT(p->g->B_global == (int64_t)r->Bl * r->P); /* compiled for this device count */
  if (r->K > 1 && !rt_dev_on_host(p)) /* sema refuses it: the device optimizer sums nothing */
    mc_die("accumulate = %d runs on the cpu backend only", r->K);
  if (r->P > 1) comm_check_same(comm, "model file and settings hash", o->settings_hash);
  if (o->save && r->rank == 0) rt_ckpt_check_path(o->save);
  return o->load ? rt_st_open(o->load) : NULL;
}

int64_t rt_run_start(Run *r, StFile *ck) {
  Program *p = r->p;
  r->opt = rt_md_optim_new(r->cfg, p);
  rt_init_params(p, r->cfg->seed);
  rt_accum_setup(r); /* before resuming: the checkpoint fills every micro-batch's state */
  int64_t start = ck ? rt_ckpt_resume(r, ck) : 0;
  rt_st_close(ck);
  /* after loading: starts from the checkpoint's state; on N devices its clipping takes the
   * global gradient norm over comm, as rt_md_optim_step */
  r->dopt = rt_devopt_new(p, r->opt, r->comm);
  if (!r->dopt) rt_optim_fold(r->opt, p); /* folded expert dW (passes/fusion.c) */
  Graph *g = p->g;
  r->params = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  r->grads = mc_calloc((size_t)g->nparams + 1, sizeof(float *));
  for (int i = 0; i < g->nparams && rt_dev_on_host(p); i++) {
    const Tensor *t = g->params[i];
    /* float pointers; under --f64 they point to doubles (the optimizer's elem is 8) */
    r->params[i] = rt_f32(p, t);
    r->grads[i] = t->grad ? rt_f32(p, t->grad) : mc_calloc_big((size_t)t->numel, p->elem);
  }
  if (r->o.metrics) r->metrics = open_metrics(r->o.metrics, start);
  if (r->rank == 0) rt_report_header(r, start);
  return start;
}

void rt_run_close(Run *r) {
  Graph *g = r->p->g;
  rt_accum_free(r);
  for (int i = 0; i < g->nparams && rt_dev_on_host(r->p); i++)
    if (!g->params[i]->grad) mc_free(r->grads[i]);
  mc_free(r->params);
  mc_free(r->grads);
  rt_guard_close(r);
  if (r->devnull) fclose(r->devnull);
  rt_devopt_free(r->dopt);
  rt_optim_free(r->opt);
}

KernelCtx rt_run_ctx(Run *r, int64_t s, int j) {
  const int64_t B = (int64_t)r->Bl * r->P; /* a micro-batch's rows, every device's */
  return (KernelCtx){.training = true,
                     .seed = r->cfg->seed,
                     .step = (uint64_t)s,
                     .batch0 = j * B + (int64_t)r->rank * r->Bl,
                     .batch_local = r->Bl,
                     .device = r->rank,
                     .ndevices = r->P,
                     .comm = r->P > 1 ? r->comm : NULL,
                     .graph = r->P > 1 ? r->p->g : NULL,
                     .stats = &r->stats,
                     .dev = r->p->dev,
                     .accum = r->K,
                     .micro_row0 = j * B,
                     .trace = r->trace};
}

double rt_run_step(Run *r, int64_t s, double *xent_out, double *aux_out, int *stop) {
  Program *p = r->p;
  KernelCtx ctx = rt_run_ctx(r, s, 0);
  rt_exec(p, &ctx, 0, p->ninstrs);
  return rt_run_loss(r, rt_read_scalar(p, p->g->xent), xent_out, aux_out, stop);
}

double rt_run_loss(Run *r, double xent, double *xent_out, double *aux_out, int *stop) {
  Program *p = r->p;
  Graph *g = p->g;
  double aux = rt_read_scalar(p, g->aux);
  int sig = rt_interrupt_signal();
  /* each device's own clock; the all-reduce makes every device stop after the same step */
  bool late = r->cfg->max_time > 0 && mc_now() - r->t_start >= r->cfg->max_time;
  if (r->P > 1) { /* xent: each device's share of the global mean; aux: replicated */
    Comm *c = r->comm;
    if (g->xent && g->xent->producer && !ir_runs_on(g->xent->producer, r->rank, r->P))
      xent = 0; /* the loss on(...) other devices: this one has no rows of it */
    uint64_t am = g->aux && g->aux->producer ? ir_node_mask(g->aux->producer, r->P) : 0;
    if (am && am != comm_all_mask(c)) c->broadcast(c, &aux, sizeof aux, __builtin_ctzll(am));
    double v[4] = {xent, sig == SIGINT, sig && sig != SIGINT, late}; /* one all-reduce: the
                                                                         loss, any stop */
    c->all_reduce_sum_f64(c, v, 4);
    xent = v[0];
    sig = v[1] > 0 ? SIGINT : v[2] > 0 ? SIGTERM : 0;
    late = v[3] > 0;
  }
  if (stop) *stop = sig ? sig : late ? RT_STOP_TIME : 0;
  *xent_out = xent;
  *aux_out = aux;
  if (r->P == 1 && r->K == 1) return rt_read_scalar(p, g->loss); /* the graph's own sum */
  return g->aux ? xent + aux : xent;
}

void rt_run_update(Run *r, double loss, int64_t s) {
  rt_guard_step(r, s, loss); /* a loss or gradient that is not finite stops the run */
  r->opt->lr = rt_lr_at(r->cfg, s + 1);
  if (r->dopt)
    rt_devopt_step(r->dopt, r->opt);
  else
    rt_md_optim_step(r->comm, r->p, r->opt, r->params, r->K > 1 ? r->acc : r->grads);
  if (r->K == 1) rt_carry_state(r->p); /* accumulation carries each micro-batch's own */
}

/* The message of a run stopped by a signal after `step` of `steps` (rank 0); returns its
 * exit status. */
static int interrupted(Run *r, int sig, int64_t step, int64_t steps) {
  if (r->rank == 0) {
    if (r->tty) fprintf(r->out, "\n");
    /* OpenMPI's mpirun turns a Ctrl-C into SIGTERM to every rank (docs/training.md) */
    bool mpi = r->comm && r->comm->name && !strcmp(r->comm->name, "mpi");
    fprintf(stderr, "moec: interrupted (%s) after step %lld of %lld",
            sig == SIGINT ? "SIGINT"
            : mpi         ? "SIGTERM; mpirun relays a Ctrl-C to its ranks as SIGTERM"
                          : "SIGTERM",
            (long long)step, (long long)steps);
    char launch[32] = ""; /* the ranks resume as they ran */
    if (mpi) snprintf(launch, sizeof launch, "mpirun -np %d ", r->P);
    if (r->o.save)
      fprintf(stderr, "; checkpoint saved to %s\nresume with: %s%s\n", r->o.save, launch,
              r->o.resume_cmd ? r->o.resume_cmd : "moec run FILE --load CHECKPOINT");
    else
      fprintf(stderr, "; nothing saved (give --save CKPT to be able to resume)\n");
  }
  return 128 + sig;
}

/* The note of a run that train.max_time ended after `step` of `steps` (rank 0). */
static void time_up(Run *r, int64_t step, int64_t steps) {
  if (r->rank != 0 || r->o.quiet) return;
  if (r->tty) fprintf(r->out, "\n");
  fprintf(r->out, "moec: max_time %gs reached after step %lld of %lld (%.1fs); final evaluation\n",
          r->cfg->max_time, (long long)step, (long long)steps, mc_now() - r->t_start);
}

int rt_run_end(Run *r, int stop, int64_t s, int64_t steps, RunTotals *tot) {
  if (stop > 0) {
    if (r->o.save) rt_ckpt_save(r, r->o.save, s);
    if (r->metrics) fflush(r->metrics);
    return interrupted(r, stop, s, steps);
  }
  if (stop == RT_STOP_TIME) {
    time_up(r, s, steps);
    tot->steps = s;
  } else if (r->tty && tot->done) {
    fprintf(r->out, "\n");
  }
  return 0;
}

void rt_tail_add(RtTail *t, double loss, double xent) {
  t->loss[t->n % RT_TAIL] = loss;
  t->xent[t->n % RT_TAIL] = xent;
  t->n++;
}

void rt_tail_totals(const RtTail *t, RunTotals *tot) {
  int64_t n = MC_MIN(t->n, RT_TAIL), first = t->n - n;
  double loss = 0, xent = 0;
  for (int64_t i = first; i < t->n; i++) { /* in step order */
    loss += t->loss[i % RT_TAIL];
    xent += t->xent[i % RT_TAIL];
  }
  tot->train_loss = n ? loss / (double)n : tot->last_loss;
  tot->train_xent = n ? xent / (double)n : NAN;
}
