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
#include <math.h>
#include <string.h>

#include "run.h"

/* What a run sets up before its first step: outputs, data, optimizer, parameters. */
static int64_t setup(Run *r, Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
  StFile *ck = rt_run_open(r, comm, p, cfg, o);
  int nv = 0;
  char **vocab = rt_ckpt_vocab(ck, &nv);
  r->corpus = rt_corpus_load(cfg, p->vocab, vocab, nv);
  rt_words_free(vocab, nv);
  for (int split = SPLIT_VALID; split <= SPLIT_TEST && !o->no_eval; split++) {
    Batcher b; /* an evaluation split too small for the batch: said now, not after training */
    rt_batcher_init_rows(&b, r->corpus, (Split)split, r->Bl * r->P, r->T, r->rank * r->Bl, r->Bl);
    rt_batcher_free(&b);
  }
  if (r->corpus->syn) r->floor_nats = r->corpus->syn->floor_nats;
  return rt_run_start(r, ck);
}

static void teardown(Run *r) {
  rt_run_close(r);
  rt_corpus_free(r->corpus);
}

static double evaluate(Run *r, Split split, int64_t step) {
  double t0 = mc_now();
  int64_t tokens = 0;
  double loss = rt_evaluate(r->comm, r->p, r->corpus, split, &tokens);
  double secs = mc_now() - t0;
  r->t_eval += secs;
  rt_report_eval(r, step, split, loss, tokens, secs);
  return loss;
}

/* One training step on this device's rows: forward, backward, the (global) loss. */
static double step_forward_backward(Run *r, Batcher *bt, int32_t *ids, int32_t *tg, int64_t s,
                                    double *xent_out, double *aux_out) {
  Program *p = r->p;
  double t0 = mc_now();
  rt_batcher_next(bt, ids, tg);
  rt_feed(p, p->ids, ids);
  rt_feed(p, p->targets, tg);
  r->t_data += mc_now() - t0;
  return rt_run_step(r, s, xent_out, aux_out);
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
    rt_run_update(&r, loss, s);
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
