/* train_loop.c: moec run on one device of a communicator: the training loop.
 *
 *   for each step: the batch (this device's rows), forward + backward, the learning
 *   rate of the step (schedule.c), the optimizer (global gradient norm over devices),
 *   LSTM state carried; progress and metrics; evaluation on valid every eval_every
 *   steps, checkpoints (then and every save_every steps); at the end valid and test.
 *   With accumulate = K, a step is K micro-batches whose gradients add up to the
 *   gradient of one batch of K times the rows.
 *   A SIGINT or SIGTERM stops the run at the end of a step, every device at the same
 *   step, after writing the checkpoint.
 *
 * Resume is exact: a checkpoint holds the params, the optimizer state, the carried LSTM
 * state and the step; the data position and every random draw are functions of (seed,
 * step), so N steps, or k steps + save + load + N-k steps, give the same losses bit for
 * bit, on any device count. docs/training.md. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <string.h>

#include "run.h"

#define RATE_WINDOW 20 /* steps the current rate is measured over */

/* What a run sets up before its first step: outputs, data, optimizer, parameters. */
/* The median of v[0..n) (reordered); 0 when n = 0. */
static double median(double *v, int n) {
  for (int i = 1; i < n; i++) /* insertion sort: n <= RATE_WINDOW */
    for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
      double t = v[j];
      v[j] = v[j - 1];
      v[j - 1] = t;
    }
  return n == 0 ? 0 : n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int64_t setup(Run *r, Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
  StFile *ck = rt_run_open(r, comm, p, cfg, o);
  r->corpus = rt_corpus_load_ckpt(cfg, p->vocab, ck);
  rt_guard_inputs(r, ck); /* before rt_run_start closes ck */
  for (int split = SPLIT_VALID; split <= SPLIT_TEST && !o->no_eval; split++) {
    Batcher b; /* an evaluation split too small for the batch: said now, not after training */
    rt_batcher_init_rows(&b, r->corpus, (Split)split, r->Bl * r->P, r->T, r->rank * r->Bl, r->Bl);
    rt_batcher_free(&b);
  }
  if (r->corpus->syn) r->floor_nats = r->corpus->syn->floor_nats;
  int64_t start = rt_run_start(r, ck);
  rt_interrupt_install();
  return start;
}

static void teardown(Run *r) {
  rt_run_close(r);
  rt_corpus_free(r->corpus);
}

static double evaluate(Run *r, Split split, int64_t step) {
  double t0 = mc_now();
  EvalResult e = rt_evaluate(r->comm, r->p, r->corpus, split);
  double secs = mc_now() - t0;
  r->t_eval += secs;
  rt_report_eval(r, step, split, &e, secs);
  rt_guard_eval(r, step, split, e.loss);
  return e.loss;
}

/* ---------------------------------------------------------------- one step */

/* One training step on this device's rows of each of the K micro-batches: the data,
 * forward, backward; the (global) loss. *stop: a SIGINT or SIGTERM any device got (the
 * same on every device). */
static double step_forward_backward(Run *r, Batcher *bt, int32_t **ids, int32_t **tg, int64_t s,
                                    double *xent, double *aux, int *stop) {
  Program *p = r->p;
  double t0 = mc_now();
  for (int j = 0; j < r->K; j++)
    rt_batcher_next(&bt[j], ids[j], tg[j]);
  if (r->K == 1) {
    rt_feed(p, p->ids, ids[0]);
    rt_feed(p, p->targets, tg[0]);
  }
  double t1 = mc_now();
  r->t_data += t1 - t0;
  if (r->trace) rt_trace_span(r->trace, "data", "data", t0, t1, NULL);
  if (r->K == 1) return rt_run_step(r, s, xent, aux, stop);
  return rt_run_loss(r, rt_accum_step(r, ids, tg, s), xent, aux, stop);
}

/* ---------------------------------------------------------------- tracing */

/* Writes the trace: every device's spans gathered on rank 0 (collective). */
static void write_trace(Run *r, const RtTrace *t, const char *path) {
  Comm *c = r->comm;
  int64_t mine = (int64_t)t->ev.len, *counts = mc_calloc((size_t)c->size, sizeof(int64_t));
  c->all_gather(c, &mine, counts, sizeof mine);
  int64_t total = 0;
  for (int q = 0; q < c->size; q++)
    total += counts[q];
  char *all = r->rank == 0 ? mc_malloc((size_t)total + 1) : NULL;
  comm_gatherv(c, t->ev.data ? t->ev.data : "", all, counts, 0);
  if (r->rank == 0) {
    FILE *f = fopen(path, "w");
    if (!f) mc_die("cannot write trace '%s': %s", path, strerror(errno));
    fprintf(f, "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"model\":");
    McBuf b = {0};
    mc_buf_json_string(&b, r->p->g->name);
    fprintf(f, "%s,\"devices\":%d},\"traceEvents\":[\n", b.data, c->size);
    mc_buf_free(&b);
    fprintf(f, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"tid\":0,\"args\":{\"name\":"
               "\"moec run\"}}");
    for (int q = 0; q < c->size; q++)
      fprintf(f,
              ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":%d,\"args\":{\"name\":"
              "\"device %d\"}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":0,\"tid\":%d,"
              "\"args\":{\"sort_index\":%d}}",
              q, q, q, q);
    int64_t at = 0;
    for (int q = 0; q < c->size; q++) {
      if (counts[q]) fprintf(f, ",%.*s", (int)counts[q], all + at);
      at += counts[q];
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) != 0) mc_die("cannot write trace '%s': %s", path, strerror(errno));
    fprintf(r->out,
            "moec: trace of %d steps on %d device%s written to %s (open it in "
            "https://ui.perfetto.dev or chrome://tracing)\n",
            RT_TRACE_STEPS, c->size, c->size == 1 ? "" : "s", path);
  }
  mc_free(all);
  mc_free(counts);
}

/* ---------------------------------------------------------------- the loop */

static void save(Run *r, int64_t step) {
  double t0 = mc_now();
  rt_ckpt_save(r, r->o.save, step);
  if (r->trace) rt_trace_span(r->trace, "checkpoint", "checkpoint", t0, mc_now(), NULL);
}

int rt_train(Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
  Run r;
  const int64_t start = setup(&r, comm, p, cfg, o), steps = MC_MAX((int64_t)cfg->steps, start);
  const int K = r.K;
  const int64_t B = (int64_t)r.Bl * r.P; /* a (micro-)batch's rows */
  /* this device's streams of every micro-batch j: [j*B + rank*Bl, j*B + (rank+1)*Bl) of
   * the step's K*B */
  Batcher *bt = mc_calloc((size_t)K, sizeof(Batcher));
  int32_t **ids = mc_calloc((size_t)K, sizeof(int32_t *)),
          **tg = mc_calloc((size_t)K, sizeof(int32_t *));
  size_t nl = (size_t)r.Bl * (size_t)r.T;
  for (int j = 0; j < K; j++) {
    rt_batcher_init_rows(&bt[j], r.corpus, SPLIT_TRAIN, (int)(B * K), r.T,
                         (int)(j * B + (int64_t)r.rank * r.Bl), r.Bl);
    rt_batcher_seek(&bt[j], start);
    ids[j] = mc_malloc(nl * sizeof(int32_t));
    tg[j] = mc_malloc(nl * sizeof(int32_t));
  }
  const double tokens_per_step = (double)B * K * r.T;
  const int64_t every = MC_MAX(1, (steps - start) / 20);
  /* traced: RT_TRACE_STEPS steps after the first (which pays for first touches), or from
   * the first when the run is shorter */
  const int64_t trace0 = steps - start > RT_TRACE_STEPS ? start + 1 : start;
  RtTrace trace = {.tid = r.rank};
  if (o->trace) {
    double now = mc_now();
    if (r.P > 1) r.comm->broadcast(r.comm, &now, sizeof now, 0); /* one time axis */
    trace.epoch = now;
  }
  RunTotals tot = {.steps = steps, .last_loss = NAN};
  double times[RATE_WINDOW] = {0}, steady[RATE_WINDOW] = {0}; /* steady: the first left out */
  int64_t nsteady = 0;
  RtTail tail = {0};
  int stop = 0;
  bool traced = false; /* the trace is written */
  r.t_start = mc_now();
  int64_t s = start;
  for (; s < steps && !stop; s++) {
    r.trace = o->trace && s >= trace0 && s < trace0 + RT_TRACE_STEPS ? &trace : NULL;
    double t0 = mc_now(), xent, aux;
    double loss = step_forward_backward(&r, bt, ids, tg, s, &xent, &aux, &stop);
    double t1 = mc_now();
    rt_run_update(&r, loss, s);
    double t2 = mc_now();
    if (r.trace) {
      rt_trace_span(r.trace, "forward + backward", "step", t0, t1, NULL);
      rt_trace_span(r.trace, "optimizer", "optimizer", t1, t2, NULL);
      char a[64];
      snprintf(a, sizeof a, "\"step\":%lld", (long long)s + 1);
      char name[64];
      snprintf(name, sizeof name, "step %lld", (long long)s + 1);
      rt_trace_span(r.trace, name, "step", t0, t2, a);
    }
    r.t_train += t2 - t0;
    times[tot.done % RATE_WINDOW] = t2 - t0;
    if (tot.done > 0) steady[nsteady++ % RATE_WINDOW] = t2 - t0;
    tot.done++;
    tot.last_loss = loss;
    rt_tail_add(&tail, loss, xent);
    double window = 0;
    int64_t nw = MC_MIN(tot.done, RATE_WINDOW);
    for (int64_t k = 0; k < nw; k++)
      window += times[k];
    StepInfo si = {.step = s + 1,
                   .steps = steps,
                   .loss = loss,
                   .xent = xent,
                   .aux = aux,
                   .lr = r.opt->lr,
                   .tokens = (int64_t)((double)(s + 1) * tokens_per_step),
                   .rate = (double)nw * tokens_per_step / fmax(window, 1e-9),
                   .elapsed = t2 - r.t_start,
                   .eta = (double)(steps - s - 1) * window / (double)MC_MAX(nw, 1)};
    if (cfg->max_time > 0) si.eta = fmin(si.eta, fmax(cfg->max_time - si.elapsed, 0));
    bool show = r.tty || (s + 1) % every == 0 || s + 1 == steps || s == start || stop;
    rt_report_step(&r, &si, show);
    if (stop) { /* every device stops here, after the same step */
      s++;
      break;
    }
    bool saved = false;
    if (cfg->eval_every > 0 && (s + 1) % cfg->eval_every == 0 && s + 1 < steps) {
      if (!r.o.no_eval) evaluate(&r, SPLIT_VALID, s + 1);
      if (r.o.save) save(&r, s + 1);
      saved = true;
    }
    if (r.o.save && r.o.save_every > 0 && (s + 1) % r.o.save_every == 0 && s + 1 < steps && !saved)
      save(&r, s + 1);
    if (o->trace && !traced && s + 1 == trace0 + RT_TRACE_STEPS) {
      r.trace = NULL;
      write_trace(&r, &trace, o->trace);
      traced = true;
    }
  }
  r.trace = NULL;
  if (o->trace && !traced && s > trace0) write_trace(&r, &trace, o->trace); /* a shorter run */
  int rc = rt_run_end(&r, stop, s, steps, &tot);
  if (rc == 0) { /* the last step, or the one that spent max_time */
    tot.valid = r.o.no_eval ? NAN : evaluate(&r, SPLIT_VALID, tot.steps);
    tot.test = r.o.no_eval ? NAN : evaluate(&r, SPLIT_TEST, tot.steps);
    if (r.o.save) rt_ckpt_save(&r, r.o.save, tot.steps);
    rt_tail_totals(&tail, &tot);
    tot.tokens_per_s = tot.done ? (double)tot.done * tokens_per_step / fmax(r.t_train, 1e-9) : 0;
    tot.step_s_median = median(steady, (int)MC_MIN(nsteady, RATE_WINDOW));
    rt_report_summary(&r, &tot);
  }
  for (int j = 0; j < K; j++) {
    mc_free(ids[j]);
    mc_free(tg[j]);
    rt_batcher_free(&bt[j]);
  }
  mc_free(ids);
  mc_free(tg);
  mc_free(bt);
  mc_buf_free(&trace.ev);
  teardown(&r);
  return rc;
}
