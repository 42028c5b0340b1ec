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
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "run.h"

/* Where a micro-batch's forward takes in the whole step's MoE statistics: after the
 * instruction that makes an importance or load vector (after its all-reduce on N
 * devices), the vector becomes the sum over all K micro-batches (train.accumulate). */
typedef struct AccPatch {
  int instr;
  const Tensor *t;
  double *total; /* [t->numel]: the sum over the step's micro-batches */
} AccPatch;

#define RATE_WINDOW 20 /* steps the current rate is measured over */

/* ---------------------------------------------------------------- metrics file */

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

/* ---------------------------------------------------------------- setup */

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

/* Accumulation's buffers: each micro-batch's state, the summed gradients. */
static void setup_accumulate(Run *r) {
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
    r->acc[i] = mc_calloc((size_t)MC_MAX(g->params[i]->numel, 1), p->elem);
  find_patches(r);
}

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
  r->K = MC_MAX(cfg->accumulate, 1);
  MOEC_ASSERT(p->g->B_global == (int64_t)r->Bl * r->P); /* compiled for this device count */
  if (r->K > 1 && !rt_dev_on_host(p)) /* sema refuses it: the device optimizer sums nothing */
    mc_die("accumulate = %d runs on the cpu backend only", r->K);
  if (r->P > 1) comm_check_same(comm, "model file and settings hash", o->settings_hash);
  if (o->save && r->rank == 0) rt_ckpt_check_path(o->save);
  StFile *ck = o->load ? rt_st_open(o->load) : NULL;
  r->corpus = rt_corpus_load_ckpt(cfg, p->vocab, ck);
  for (int split = SPLIT_VALID; split <= SPLIT_TEST && !o->no_eval; split++) {
    Batcher b; /* an evaluation split too small for the batch: said now, not after training */
    rt_batcher_init_rows(&b, r->corpus, (Split)split, r->Bl * r->P, r->T, r->rank * r->Bl, r->Bl);
    rt_batcher_free(&b);
  }
  if (r->corpus->syn) r->floor_nats = r->corpus->syn->floor_nats;
  r->opt = rt_md_optim_new(cfg, p);
  rt_init_params(p, cfg->seed);
  setup_accumulate(r); /* before resuming: the checkpoint fills every micro-batch's state */
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
  if (r->o.metrics) r->metrics = open_metrics(r->o.metrics, start);
  if (r->rank == 0) rt_report_header(r, start);
  rt_interrupt_install();
  return start;
}

static void teardown(Run *r) {
  Graph *g = r->p->g;
  for (int i = 0; i < g->nparams && rt_dev_on_host(r->p); i++)
    if (!g->params[i]->grad) mc_free(r->grads[i]);
  for (int i = 0; r->acc && i < g->nparams; i++)
    mc_free(r->acc[i]);
  for (int i = 0; r->kstate && i < r->K * g->nstates; i++)
    r->p->be->release(r->kstate[i]);
  for (int i = 0; i < r->npatch; i++)
    mc_free(r->patch[i].total);
  mc_free(r->patch);
  mc_free(r->acc);
  mc_free(r->kstate);
  mc_free(r->params);
  mc_free(r->grads);
  if (r->metrics) fclose(r->metrics);
  if (r->devnull) fclose(r->devnull);
  rt_devopt_free(r->dopt);
  rt_optim_free(r->opt);
  rt_corpus_free(r->corpus);
}

static double evaluate(Run *r, Split split, int64_t step) {
  double t0 = mc_now();
  EvalResult e = rt_evaluate(r->comm, r->p, r->corpus, split);
  double secs = mc_now() - t0;
  r->t_eval += secs;
  rt_report_eval(r, step, split, &e, secs);
  return e.loss;
}

/* ---------------------------------------------------------------- one step */

/* This step's context for micro-batch j (j = 0 without accumulation). */
static KernelCtx step_ctx(Run *r, int64_t s, int j) {
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

static void feed(Run *r, const int32_t *ids, const int32_t *tg) {
  rt_feed(r->p, r->p->ids, ids);
  rt_feed(r->p, r->p->targets, tg);
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

/* Forward and backward of the step's K micro-batches: pass 1 runs each forward and sums
 * its importance and load vectors over the step; pass 2 runs each forward again with
 * those vectors replaced by the sums (so every aux loss and its gradient is the whole
 * batch's), then its backward; the gradients add up in r->acc. Returns this device's
 * share of the xent (the kernel's mean already divides by K). */
static double accumulate_step(Run *r, Batcher *bt, int32_t **ids, int32_t **tg, int64_t s) {
  Program *p = r->p;
  Graph *g = p->g;
  double t0 = mc_now();
  for (int j = 0; j < r->K; j++)
    rt_batcher_next(&bt[j], ids[j], tg[j]);
  r->t_data += mc_now() - t0;
  if (r->trace) rt_trace_span(r->trace, "data", "data", t0, mc_now(), NULL);
  for (int i = 0; i < r->npatch; i++)
    memset(r->patch[i].total, 0, (size_t)MC_MAX(r->patch[i].t->numel, 1) * sizeof(double));
  for (int j = 0; j < r->K && r->npatch; j++) {
    KernelCtx ctx = step_ctx(r, s, j);
    ctx.trace = NULL;
    state_in(r, j);
    feed(r, ids[j], tg[j]);
    rt_exec(p, &ctx, 0, p->first_backward);
    for (int i = 0; i < r->npatch; i++)
      add_vector(p, r->patch[i].t, r->patch[i].total);
  }
  for (int i = 0; i < g->nparams; i++)
    memset(r->acc[i], 0, (size_t)g->params[i]->numel * p->elem);
  double xent = 0;
  for (int j = 0; j < r->K; j++) {
    KernelCtx ctx = step_ctx(r, s, j);
    state_in(r, j);
    feed(r, ids[j], tg[j]);
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

/* One training step on this device's rows: forward, backward; the (global) loss. On N
 * devices the step's one all-reduce also says whether any device was interrupted
 * (*stop: the signal, the same on every device). */
static double step_forward_backward(Run *r, Batcher *bt, int32_t **ids, int32_t **tg, int64_t s,
                                    double *xent_out, double *aux_out, int *stop) {
  Program *p = r->p;
  Graph *g = p->g;
  double xent;
  if (r->K > 1) {
    xent = accumulate_step(r, bt, ids, tg, s);
  } else {
    double t0 = mc_now();
    rt_batcher_next(&bt[0], ids[0], tg[0]);
    feed(r, ids[0], tg[0]);
    double t1 = mc_now();
    r->t_data += t1 - t0;
    if (r->trace) rt_trace_span(r->trace, "data", "data", t0, t1, NULL);
    KernelCtx ctx = step_ctx(r, s, 0);
    rt_exec(p, &ctx, 0, p->ninstrs);
    rt_carry_state(p);
    xent = rt_read_scalar(p, g->xent);
  }
  double aux = rt_read_scalar(p, g->aux);
  int sig = rt_interrupt_signal();
  *stop = sig;
  if (r->P > 1) { /* xent: each device's share of the global mean; aux: replicated */
    Comm *c = r->comm;
    if (g->xent && g->xent->producer && !ir_runs_on(g->xent->producer, r->rank, r->P))
      xent = 0; /* the loss on(...) other devices: this one has no rows of it */
    uint64_t am = g->aux && g->aux->producer ? ir_node_mask(g->aux->producer, r->P) : 0;
    if (am && am != comm_all_mask(c)) c->broadcast(c, &aux, sizeof aux, __builtin_ctzll(am));
    double v[3] = {xent, sig == SIGINT, sig && sig != SIGINT};
    c->all_reduce_sum_f64(c, v, 3);
    xent = v[0];
    *stop = v[1] > 0 ? SIGINT : v[2] > 0 ? SIGTERM : 0;
  }
  *xent_out = xent;
  *aux_out = aux;
  if (r->P == 1 && r->K == 1) return rt_read_scalar(p, g->loss); /* the graph's own sum */
  return g->aux ? xent + aux : xent;
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

/* The message of an interrupted run; its exit status (128 + the signal, as a shell's). */
static int interrupted(Run *r, int sig, int64_t step, int64_t steps) {
  if (r->rank == 0) {
    if (r->tty) fprintf(r->out, "\n");
    fprintf(stderr, "moec: interrupted (%s) after step %lld of %lld",
            sig == SIGINT ? "SIGINT" : "SIGTERM", (long long)step, (long long)steps);
    if (r->o.save)
      fprintf(stderr, "; checkpoint saved to %s\nresume with: %s\n", r->o.save,
              r->o.resume_cmd ? r->o.resume_cmd : "moec run FILE --load CHECKPOINT");
    else
      fprintf(stderr, "; nothing saved (give --save CKPT to be able to resume)\n");
  }
  return 128 + sig;
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
  double tail_loss = 0, tail_xent = 0, times[RATE_WINDOW] = {0};
  int64_t tail_n = 0;
  int stop = 0;
  bool traced = false; /* the trace is written */
  r.t_start = mc_now();
  int64_t s = start;
  for (; s < steps && !stop; s++) {
    r.trace = o->trace && s >= trace0 && s < trace0 + RT_TRACE_STEPS ? &trace : NULL;
    double t0 = mc_now(), xent, aux;
    double loss = step_forward_backward(&r, bt, ids, tg, s, &xent, &aux, &stop);
    if (!isfinite(loss))
      mc_die("the loss is %g at step %lld: training diverged (try a smaller lr, or clip)", loss,
             (long long)s + 1);
    double t1 = mc_now();
    r.opt->lr = rt_lr_at(cfg, s + 1);
    float *const *grads = K > 1 ? r.acc : r.grads;
    if (r.dopt)
      rt_devopt_step(r.dopt, r.opt);
    else
      rt_md_optim_step(comm, p, r.opt, r.params, grads);
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
    tot.done++;
    tot.last_loss = loss;
    if (steps - s <= 100) {
      tail_loss += loss;
      tail_xent += xent;
      tail_n++;
    }
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
  int rc = 0;
  if (stop) {
    if (r.o.save) rt_ckpt_save(&r, r.o.save, s);
    if (r.metrics) fflush(r.metrics);
    rc = interrupted(&r, stop, s, steps);
  } else {
    if (r.tty && tot.done) fprintf(r.out, "\n");
    tot.valid = r.o.no_eval ? NAN : evaluate(&r, SPLIT_VALID, steps);
    tot.test = r.o.no_eval ? NAN : evaluate(&r, SPLIT_TEST, steps);
    if (r.o.save) rt_ckpt_save(&r, r.o.save, steps);
    tot.train_loss = tail_n ? tail_loss / (double)tail_n : tot.last_loss;
    tot.train_xent = tail_n ? tail_xent / (double)tail_n : NAN;
    tot.tokens_per_s = tot.done ? (double)tot.done * tokens_per_step / fmax(r.t_train, 1e-9) : 0;
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
