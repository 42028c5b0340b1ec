/* train_loop.c: moec run on one device of a communicator: the training loop.
 *
 *   for each step: the batch (this device's rows), forward + backward, the optimizer
 *   (global gradient norm over devices), LSTM state carried; progress and metrics;
 *   evaluation on valid every eval_every steps, checkpoints; at the end valid and test.
 *
 * Resume is exact: a checkpoint holds the params, the optimizer state, the carried LSTM
 * state and the step; the data position and every random draw are functions of (seed,
 * step), so N steps, or k steps + save + load + N-k steps, give the same losses bit for
 * bit, on any device count. docs/training.md. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "run.h"

/* What a run sets up before its first step: outputs, data, optimizer, parameters. */
static int64_t setup(Run *r, Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
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
  StFile *ck = o->load ? rt_st_open(o->load) : NULL;
  int nv = 0;
  char **vocab = rt_ckpt_vocab(ck, &nv);
  r->corpus = rt_corpus_load(cfg, p->vocab, vocab, nv);
  rt_words_free(vocab, nv);
  rt_guard_inputs(r, ck);
  for (int split = SPLIT_VALID; split <= SPLIT_TEST && !o->no_eval; split++) {
    Batcher b; /* an evaluation split too small for the batch: said now, not after training */
    rt_batcher_init_rows(&b, r->corpus, (Split)split, r->Bl * r->P, r->T, r->rank * r->Bl, r->Bl);
    rt_batcher_free(&b);
  }
  if (r->corpus->syn) r->floor_nats = r->corpus->syn->floor_nats;
  r->opt = rt_md_optim_new(cfg, p);
  rt_init_params(p, cfg->seed);
  int64_t start = ck ? rt_ckpt_resume(r, ck) : 0;
  rt_st_close(ck);
  r->dopt = rt_devopt_new(p, r->opt); /* after loading: starts from the checkpoint's state */
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

static void teardown(Run *r) {
  Graph *g = r->p->g;
  for (int i = 0; i < g->nparams && rt_dev_on_host(r->p); i++)
    if (!g->params[i]->grad) mc_free(r->grads[i]);
  mc_free(r->params);
  mc_free(r->grads);
  rt_guard_close(r);
  if (r->devnull) fclose(r->devnull);
  rt_devopt_free(r->dopt);
  rt_optim_free(r->opt);
  rt_corpus_free(r->corpus);
}

static double evaluate(Run *r, Split split, int64_t step) {
  double t0 = mc_now();
  int64_t tokens = 0;
  double loss = rt_evaluate(r->comm, r->p, r->corpus, split, &tokens);
  double secs = mc_now() - t0;
  r->t_eval += secs;
  rt_report_eval(r, step, split, loss, tokens, secs);
  rt_guard_eval(r, step, split, loss);
  return loss;
}

/* One training step on this device's rows: forward, backward, the (global) loss. */
static double step_forward_backward(Run *r, Batcher *bt, int32_t *ids, int32_t *tg, int64_t s,
                                    double *xent_out, double *aux_out) {
  Program *p = r->p;
  Graph *g = p->g;
  double t0 = mc_now();
  rt_batcher_next(bt, ids, tg);
  rt_feed(p, p->ids, ids);
  rt_feed(p, p->targets, tg);
  r->t_data += mc_now() - t0;
  KernelCtx ctx = rt_train_ctx(r, s);
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

int rt_train(Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
  Run r;
  const int64_t start = setup(&r, comm, p, cfg, o), steps = MC_MAX((int64_t)cfg->steps, start);
  Batcher bt; /* this device's streams of the global batch: [rank*Bl, (rank+1)*Bl) */
  rt_batcher_init_rows(&bt, r.corpus, SPLIT_TRAIN, r.Bl * r.P, r.T, r.rank * r.Bl, r.Bl);
  rt_batcher_seek(&bt, start);
  size_t nl = (size_t)r.Bl * (size_t)r.T;
  int32_t *ids = mc_malloc(nl * sizeof(int32_t)), *tg = mc_malloc(nl * sizeof(int32_t));
  const double tokens_per_step = (double)r.Bl * r.P * r.T;
  const int64_t every = MC_MAX(1, (steps - start) / 20);
  RunTotals tot = {.steps = steps, .last_loss = NAN};
  double tail_loss = 0, tail_xent = 0;
  int64_t tail_n = 0;
  for (int64_t s = start; s < steps; s++) {
    double t0 = mc_now(), xent, aux;
    double loss = step_forward_backward(&r, &bt, ids, tg, s, &xent, &aux);
    rt_guard_step(&r, s, loss);
    if (r.dopt)
      rt_devopt_step(r.dopt, r.opt);
    else
      rt_md_optim_step(comm, p, r.opt, r.params, r.grads);
    rt_carry_state(p);
    r.t_train += mc_now() - t0;
    tot.done++;
    tot.last_loss = loss;
    if (steps - s <= 100) {
      tail_loss += loss;
      tail_xent += xent;
      tail_n++;
    }
    double tps = (double)tot.done * tokens_per_step / fmax(r.t_train, 1e-9);
    bool show = r.tty || (s + 1) % every == 0 || s + 1 == steps || s == start;
    rt_report_step(&r, s + 1, steps, loss, xent, aux, tps, show);
    rt_guard_outputs(&r);
    if (cfg->eval_every > 0 && (s + 1) % cfg->eval_every == 0 && s + 1 < steps) {
      if (!r.o.no_eval) evaluate(&r, SPLIT_VALID, s + 1);
      if (r.o.save) rt_ckpt_save(&r, r.o.save, s + 1);
    }
  }
  if (r.tty && tot.done) fprintf(r.out, "\n");
  tot.valid = r.o.no_eval ? NAN : evaluate(&r, SPLIT_VALID, steps);
  tot.test = r.o.no_eval ? NAN : evaluate(&r, SPLIT_TEST, steps);
  if (r.o.save) rt_ckpt_save(&r, r.o.save, steps);
  tot.train_loss = tail_n ? tail_loss / (double)tail_n : tot.last_loss;
  tot.train_xent = tail_n ? tail_xent / (double)tail_n : NAN;
  tot.tokens_per_s = tot.done ? (double)tot.done * tokens_per_step / fmax(r.t_train, 1e-9) : 0;
  rt_report_summary(&r, &tot);
  mc_free(ids);
  mc_free(tg);
  rt_batcher_free(&bt);
  teardown(&r);
  return 0;
}
