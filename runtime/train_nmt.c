/* train_nmt.c: moec run for translation models: the parallel data of a run and the training
 * loop of one device.
 *
 *   for each step: the step's batch of the epoch's shuffled length buckets (every device
 *   makes the same global batch and feeds its rows), the program bound at the batch's shape,
 *   forward + backward (teacher forcing: the loss is the mean cross-entropy over the real
 *   target tokens plus each MoE's aux), the optimizer (global gradient norm); progress and
 *   metrics; evaluation on the valid pairs every eval_every steps and at the end (also
 *   when train.max_time ends the run); a SIGINT or SIGTERM stops it after the step, saved.
 *
 * The batch of step s is a function of (seed, s): epoch s / batches-per-epoch, its batches
 * drawn from (seed, epoch); resuming from a checkpoint (parameters, optimizer, step, the
 * BPE vocabulary) continues exactly. The batches do not depend on the device count (their
 * rows are a multiple of rt_par_quantum), so 1, 2, 4 and 8 devices train alike.
 * docs/training.md, "Translation models". */
#include <math.h>
#include <string.h>

#include "run.h"

/* ---------------------------------------------------------------- data */

RtBpe *rt_ckpt_bpe(const StFile *f) {
  const char *s = f ? rt_st_meta(f, "data.bpe") : NULL;
  if (!s) return NULL;
  char err[256];
  RtBpe *b = rt_bpe_from_string(s, err, sizeof err);
  if (!b) mc_die("checkpoint '%s': its BPE vocabulary (data.bpe): %s", f->path, err);
  return b;
}

static RtParData *load_pairs(const char *path, RtBpe **bpe, int vocab, int max_len, FILE *out) {
  RtParText t;
  char err[512];
  if (!rt_par_read(path, &t, err, sizeof err)) mc_die("%s", err);
  if (!*bpe) *bpe = rt_par_learn_bpe(&t, vocab); /* the shared vocabulary: the training pairs' */
  RtParData *d = rt_par_encode(&t, *bpe, max_len);
  rt_par_text_free(&t);
  if (out) rt_par_report(d, out);
  if (d->n == 0)
    mc_die("%s: no pair to use (%lld left out: longer than max_len = %d ids, or with an empty "
           "side)",
           path, (long long)d->nleft, max_len);
  return d;
}

Pairs *rt_pairs_load(const Config *cfg, const StFile *ck, int vocab, int P, FILE *out) {
  MOEC_ASSERT(cfg->data == DATA_PARALLEL && cfg->data_path);
  Pairs *d = mc_calloc(1, sizeof *d);
  d->path = cfg->data_path;
  d->valid_path = cfg->data_valid_path;
  d->budget = cfg->batch_tokens;
  d->quantum = rt_par_quantum(P);
  d->bpe = rt_ckpt_bpe(ck);
  if (d->bpe && rt_bpe_vocab(d->bpe) > vocab)
    mc_die("checkpoint '%s': its BPE vocabulary has %d ids, more than the model's %d", ck->path,
           rt_bpe_vocab(d->bpe), vocab);
  d->train = load_pairs(d->path, &d->bpe, vocab, cfg->max_len, out);
  if (d->valid_path) d->valid = load_pairs(d->valid_path, &d->bpe, vocab, cfg->max_len, out);
  return d;
}

void rt_pairs_free(Pairs *d) {
  if (!d) return;
  rt_par_free(d->train);
  rt_par_free(d->valid);
  rt_bpe_free(d->bpe);
  mc_free(d);
}

void rt_feed_pairs(Program *p, const RtParBatch *b, const int32_t *src, const int32_t *tgt_in,
                   const int32_t *tgt_out, int row0, int rows) {
  MOEC_ASSERT(p->source->numel == (int64_t)rows * b->S &&
              p->targets->numel == (int64_t)rows * b->T);
  rt_feed(p, p->source, src + (int64_t)row0 * b->S);
  rt_feed(p, p->target_in, tgt_in + (int64_t)row0 * b->T);
  rt_feed(p, p->targets, tgt_out + (int64_t)row0 * b->T);
}

/* ---------------------------------------------------------------- the loop */

/* One global batch's ids (every device fills the whole batch and feeds its rows). */
typedef struct BatchBufs {
  int32_t *src, *ti, *to;
  int64_t cap;
} BatchBufs;

/* Fills batch i of bs into f; returns its target tokens (the positions the loss averages). */
static int64_t fill(const RtParData *d, const RtParBatches *bs, int64_t i, BatchBufs *f) {
  const RtParBatch *b = &bs->b[i];
  int64_t need = (int64_t)b->B * MC_MAX(b->S, b->T);
  if (need > f->cap) {
    f->cap = need;
    f->src = mc_realloc(f->src, (size_t)need * sizeof(int32_t));
    f->ti = mc_realloc(f->ti, (size_t)need * sizeof(int32_t));
    f->to = mc_realloc(f->to, (size_t)need * sizeof(int32_t));
  }
  rt_par_fill(d, bs, i, f->src, f->ti, f->to);
  int64_t tokens = 0;
  for (int64_t k = 0; k < (int64_t)b->B * b->T; k++)
    tokens += f->to[k] != RT_BPE_PAD;
  return tokens;
}

/* Binds r's program at batch b and feeds this device's rows. */
static void feed(Run *r, const RtParBatch *b, const BatchBufs *f) {
  rt_program_bind(r->p, (BatchShape){b->B, b->T, b->S});
  r->Bl = b->B / r->P;
  r->T = b->T;
  rt_feed_pairs(r->p, b, f->src, f->ti, f->to, r->rank * r->Bl, r->Bl);
}

double rt_evaluate_pairs(Comm *c, Program *p, const Pairs *pairs, const RtParData *d,
                         int64_t *tokens) {
  const int P = c->size;
  RtParBatches *bs = rt_par_batches(d, pairs->budget, RT_PAR_WIDTH, pairs->quantum, 0, 0, false);
  BatchBufs f = {0};
  KernelCtx ctx = {.training = false,
                   .device = c->rank,
                   .ndevices = P,
                   .comm = P > 1 ? c : NULL,
                   .graph = P > 1 ? p->g : NULL,
                   .dev = p->dev};
  double sum = 0;
  int64_t count = 0;
  for (int64_t i = 0; i < bs->n; i++) {
    const RtParBatch *b = &bs->b[i];
    int64_t n = fill(d, bs, i, &f);
    rt_program_bind(p, (BatchShape){b->B, b->T, b->S});
    int Bl = b->B / P;
    rt_feed_pairs(p, b, f.src, f.ti, f.to, c->rank * Bl, Bl);
    ctx.batch0 = (int64_t)c->rank * Bl;
    ctx.batch_local = Bl;
    rt_exec(p, &ctx, 0, p->first_backward);
    sum += rt_read_scalar(p, p->g->xent) * (double)n; /* its share of the batch's mean */
    count += n;
  }
  if (P > 1) c->all_reduce_sum_f64(c, &sum, 1);
  mc_free(f.src);
  mc_free(f.ti);
  mc_free(f.to);
  rt_par_batches_free(bs);
  if (tokens) *tokens = count;
  return count ? sum / (double)count : NAN;
}

static double evaluate(Run *r, int64_t step) {
  if (r->o.no_eval || !r->pairs->valid) return NAN;
  double t0 = mc_now();
  int64_t tokens = 0;
  double loss = rt_evaluate_pairs(r->comm, r->p, r->pairs, r->pairs->valid, &tokens);
  double secs = mc_now() - t0;
  r->t_eval += secs;
  EvalResult e = {.loss = loss, .nll = loss * (double)tokens, .tokens = tokens, .word_ppl = NAN};
  rt_report_eval(r, step, SPLIT_VALID, &e, secs);
  rt_guard_eval(r, step, SPLIT_VALID, loss);
  return loss;
}

int rt_train_pairs(Comm *comm, Program *p, const Config *cfg, const RunOpts *o) {
  Run r;
  StFile *ck = rt_run_open(&r, comm, p, cfg, o);
  if (r.K > 1) /* sema refuses it */
    mc_die("accumulate = %d: a translation model's batches differ in shape", r.K);
  r.pairs = rt_pairs_load(cfg, ck, p->vocab, r.P, r.rank == 0 && !r.o.quiet ? r.out : NULL);
  const Pairs *pd = r.pairs;
  const int64_t start = rt_run_start(&r, ck), steps = MC_MAX((int64_t)cfg->steps, start);
  r.t_start = mc_now();
  BatchBufs f = {0};
  /* batches per epoch: the buckets' sizes, whatever the order drawn */
  RtParBatches *bs = rt_par_batches(pd->train, pd->budget, RT_PAR_WIDTH, pd->quantum, 0, 0, false);
  const int64_t nb = bs->n;
  int64_t epoch = -1;
  const int64_t every = MC_MAX(1, (steps - start) / 20);
  RunTotals tot = {.steps = steps, .last_loss = NAN, .test = NAN};
  double tokens_done = 0;
  RtTail tail = {0};
  int stop = 0;
  rt_interrupt_install();
  int64_t s = start;
  for (; s < steps && !stop; s++) {
    double t0 = mc_now(), xent, aux;
    if (s / nb != epoch) { /* the epoch's batches, drawn from (seed, epoch) */
      epoch = s / nb;
      rt_par_batches_free(bs);
      bs = rt_par_batches(pd->train, pd->budget, RT_PAR_WIDTH, pd->quantum, cfg->seed, epoch, true);
      MOEC_ASSERT(bs->n == nb);
    }
    int64_t i = s % nb;
    int64_t tokens = fill(pd->train, bs, i, &f);
    feed(&r, &bs->b[i], &f);
    r.t_data += mc_now() - t0;
    double loss = rt_run_step(&r, s, &xent, &aux, &stop);
    rt_run_update(&r, loss, s);
    double t2 = mc_now();
    r.t_train += t2 - t0;
    tokens_done += (double)tokens;
    tot.done++;
    tot.last_loss = loss;
    rt_tail_add(&tail, loss, xent);
    double tps = tokens_done / fmax(r.t_train, 1e-9);
    bool show = r.tty || (s + 1) % every == 0 || s + 1 == steps || s == start || stop;
    StepInfo si = {.step = s + 1,
                   .steps = steps,
                   .loss = loss,
                   .xent = xent,
                   .aux = aux,
                   .lr = r.opt->lr,
                   .tokens = (int64_t)tokens_done,
                   .rate = tps,
                   .elapsed = t2 - r.t_start,
                   .eta = (double)(steps - s - 1) * r.t_train / (double)tot.done};
    if (cfg->max_time > 0) si.eta = fmin(si.eta, fmax(cfg->max_time - si.elapsed, 0));
    rt_report_step(&r, &si, show);
    if (stop) { /* every device stops here, after the same step */
      s++;
      break;
    }
    if (cfg->eval_every > 0 && (s + 1) % cfg->eval_every == 0 && s + 1 < steps) {
      evaluate(&r, s + 1);
      if (r.o.save) rt_ckpt_save(&r, r.o.save, s + 1);
    }
  }
  int rc = rt_run_end(&r, stop, s, steps, &tot);
  if (rc == 0) { /* the last step, or the one that spent max_time */
    tot.valid = evaluate(&r, tot.steps);
    if (r.o.save) rt_ckpt_save(&r, r.o.save, tot.steps);
    rt_tail_totals(&tail, &tot);
    tot.tokens_per_s = tot.done ? tokens_done / fmax(r.t_train, 1e-9) : 0;
    rt_report_summary(&r, &tot);
  }
  mc_free(f.src);
  mc_free(f.ti);
  mc_free(f.to);
  rt_par_batches_free(bs);
  rt_run_close(&r);
  rt_pairs_free(r.pairs);
  return rc;
}
