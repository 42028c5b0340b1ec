/* report.c: what a run shows: the header, the progress line (step, loss, perplexity,
 * tokens/s, aux, each MoE layer's importance CV and max/mean load), the metrics file
 * (one JSON line per step and per evaluation), the evaluation lines and the summary
 * (text, or one JSON object with --json). Rank 0 writes; the summary gathers every
 * device's memory and collectives. docs/training.md. */
#include <math.h>
#include <string.h>

#include "run.h"

static const char *human_rate(double v, char *buf, size_t n) {
  if (v >= 1e6)
    snprintf(buf, n, "%.2fM", v / 1e6);
  else if (v >= 1e3)
    snprintf(buf, n, "%.1fk", v / 1e3);
  else
    snprintf(buf, n, "%.0f", v);
  return buf;
}

/* digits: 9 (float32 values), 17 (--f64: every bit of a double) */
static void json_num_digits(McBuf *b, const char *key, double v, int digits) {
  if (isfinite(v))
    mc_buf_printf(b, ",\"%s\":%.*g", key, digits, v);
  else
    mc_buf_printf(b, ",\"%s\":null", key);
}

static void json_num(McBuf *b, const char *key, double v) {
  json_num_digits(b, key, v, 9);
}

/* ---------------------------------------------------------------- MoE monitoring */

typedef struct MoeStat {
  double cv, load_ratio;
  double drop; /* capacity=: the fraction of the routes dropped; -1 without */
} MoeStat;

/* A monitoring vector (numel floats of the program's precision) as doubles. */
static double *download_vec(Program *p, const Tensor *t) {
  double *v = mc_malloc((size_t)MC_MAX(t->numel, 1) * sizeof(double));
  void *raw = mc_malloc((size_t)MC_MAX(t->numel, 1) * p->elem);
  p->be->download(raw, p->buf[t->id], (size_t)t->numel * p->elem);
  for (int64_t k = 0; k < t->numel; k++)
    v[k] = p->prec == PREC_F64 ? ((double *)raw)[k] : ((float *)raw)[k];
  mc_free(raw);
  return v;
}

static MoeStat moe_stat(Program *p, int i) {
  Graph *g = p->g;
  MoeStat st = {0, 0, -1};
  const Tensor *imp = g->moe_importance ? g->moe_importance[i] : NULL;
  const Tensor *drop = g->moe_drop ? g->moe_drop[i] : NULL;
  if (drop && drop->numel > 0) { /* each expert's dropped routes / all routes */
    double *v = download_vec(p, drop);
    st.drop = 0;
    for (int64_t k = 0; k < drop->numel; k++)
      st.drop += v[k];
    mc_free(v);
  }
  const Tensor *load = g->moe_load ? g->moe_load[i] : NULL;
  if (imp && imp->numel > 0) {
    double *v = download_vec(p, imp), mean = 0, var = 0;
    for (int64_t k = 0; k < imp->numel; k++)
      mean += v[k] / (double)imp->numel;
    for (int64_t k = 0; k < imp->numel; k++)
      var += (v[k] - mean) * (v[k] - mean) / (double)imp->numel;
    st.cv = mean > 0 ? sqrt(var) / mean : 0;
    mc_free(v);
  }
  if (load && load->numel > 0) {
    double *v = download_vec(p, load), mean = 0, mx = 0;
    for (int64_t k = 0; k < load->numel; k++) {
      mean += v[k] / (double)load->numel;
      mx = fmax(mx, v[k]);
    }
    st.load_ratio = mean > 0 ? mx / mean : 0;
    mc_free(v);
  }
  return st;
}

static const char *moe_name(const Graph *g, int i) {
  return g->moe_names ? g->moe_names[i] : "moe";
}

/* ---------------------------------------------------------------- lines */

/* "1:02:03" or "2:03" */
static const char *clock_str(double secs, char *buf, size_t n) {
  long t = isfinite(secs) && secs > 0 ? (long)(secs + 0.5) : 0;
  if (t >= 3600)
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  else
    snprintf(buf, n, "%ld:%02ld", t / 60, t % 60);
  return buf;
}

void rt_report_header(Run *r, int64_t start) {
  Graph *g = r->p->g;
  const Config *cfg = r->cfg;
  int64_t nparams = 0; /* the whole model's (a device holds its experts' rows) */
  for (int i = 0; i < g->nparams; i++) {
    const Tensor *t = g->params[i];
    int64_t per = 1; /* elements per row (a device may hold none of its rows: E_r = 0) */
    for (int d = 1; d < t->ty.rank; d++)
      per *= t->shape[d];
    nparams += r->p->rows && r->p->rows[i].list ? per * r->p->rows[i].global : t->numel;
  }
  char batch[64];
  if (r->pairs)
    snprintf(batch, sizeof batch, "batches of %lld tokens", (long long)r->pairs->budget);
  else
    snprintf(batch, sizeof batch, "batch %d x unroll %d", r->Bl * r->P, r->T);
  fprintf(r->out, "moec: training '%s': %lld parameters, %s", g->name, (long long)nparams,
          batch);
  if (r->K > 1) fprintf(r->out, " x %d micro-batches", r->K);
  fprintf(r->out, ", %s lr %g", cfg->optimizer == OPT_ADAM ? "adam" : "factored", cfg->lr);
  static const char *const decays[] = {"", "1/sqrt(step)", "cosine", "linear"};
  if (cfg->warmup) fprintf(r->out, " (warm-up %d steps", cfg->warmup);
  if (cfg->hold) fprintf(r->out, "%s%d at lr", cfg->warmup ? ", " : " (", cfg->hold);
  if (cfg->decay != DECAY_NONE)
    fprintf(r->out, "%s%s decay%s", cfg->warmup || cfg->hold ? ", then " : " (", decays[cfg->decay],
            cfg->min_lr > 0 ? " to min_lr" : "");
  if (cfg->warmup || cfg->hold || cfg->decay != DECAY_NONE) fprintf(r->out, ")");
  if (cfg->weight_decay > 0) fprintf(r->out, ", weight decay %g", cfg->weight_decay);
  fprintf(r->out, "%s", r->o.f64 ? ", float64" : "");
  if (r->P > 1) fprintf(r->out, ", %d devices", r->P);
  if (start) fprintf(r->out, ", resuming at step %lld", (long long)start);
  fprintf(r->out, "\n");
  const Corpus *c = r->corpus;
  if (r->pairs) {
    fprintf(r->out,
            "moec: data: '%s': %lld pairs in length buckets of %d, a shared BPE vocabulary of "
            "%d ids; valid: %s\n",
            r->pairs->path, (long long)r->pairs->train->n, RT_PAR_WIDTH,
            rt_bpe_vocab(r->pairs->bpe), r->pairs->valid_path ? r->pairs->valid_path : "none");
    rt_guard_outputs(r);
    return;
  }
  if (c->syn) {
    fprintf(r->out,
            "moec: data: synthetic(topics=%d, vocab=%d, seed=%llu): entropy floor %.4f "
            "nats/token (ppl %.3f), unigram ppl %.1f\n",
            cfg->topics, cfg->vocab, (unsigned long long)cfg->data_seed, r->floor_nats,
            exp(r->floor_nats), exp(c->syn->unigram_nats));
  } else if (c->tk) {
    char *desc = rt_tok_describe(c->tk);
    fprintf(r->out,
            "moec: data: '%s', %s: %d ids; %lld / %lld / %lld tokens (train / valid / "
            "test), unknown %.2f%% / %.2f%% / %.2f%%\n",
            c->path, desc, rt_tok_size(c->tk), (long long)c->ntok[0], (long long)c->ntok[1],
            (long long)c->ntok[2], 100.0 * (double)c->unk[0] / (double)MC_MAX(c->ntok[0], 1),
            100.0 * (double)c->unk[1] / (double)MC_MAX(c->ntok[1], 1),
            100.0 * (double)c->unk[2] / (double)MC_MAX(c->ntok[2], 1));
    mc_free(desc);
  } else {
    fprintf(r->out,
            "moec: data: '%s': %lld / %lld / %lld tokens (train / valid / test) of "
            "uint16 ids\n",
            c->path, (long long)c->ntok[0], (long long)c->ntok[1], (long long)c->ntok[2]);
  }
  if (c->split_path[1] && strcmp(c->split_path[1], c->path))
    fprintf(r->out, "moec: data: valid '%s', test '%s'\n", c->split_path[1], c->split_path[2]);
  rt_guard_outputs(r); /* flushed: a full disk fails now, with its errno */
}

void rt_report_step(Run *r, const StepInfo *si, bool show) {
  Graph *g = r->p->g;
  if (show && !r->o.quiet) {
    char rate[32], el[32], eta[32];
    fprintf(r->out, "%sstep %lld/%lld  loss %.4f  ppl %.2f  lr %.3g  %s tok/s  %s, ETA %s",
            r->tty ? "\r\033[K" : "", (long long)si->step, (long long)si->steps, si->loss,
            exp(si->xent), si->lr, human_rate(si->rate, rate, sizeof rate),
            clock_str(si->elapsed, el, sizeof el), clock_str(si->eta, eta, sizeof eta));
    if (g->aux) fprintf(r->out, "  aux %.4f", si->aux);
    for (int i = 0; i < g->nmoe; i++) {
      MoeStat ms = moe_stat(r->p, i);
      fprintf(r->out, "  %s: cv %.2f load %.2f", moe_name(g, i), ms.cv, ms.load_ratio);
      if (ms.drop >= 0) fprintf(r->out, " drop %.1f%%", 100 * ms.drop);
    }
    fprintf(r->out, r->tty ? "" : "\n");
    rt_guard_outputs(r);
  }
  if (!r->metrics) return;
  McBuf b = {0};
  mc_buf_printf(&b, "{\"event\":\"step\",\"step\":%lld", (long long)si->step);
  const int dg = r->o.f64 ? 17 : 9;
  json_num_digits(&b, "loss", si->loss, dg);
  json_num_digits(&b, "xent", si->xent, dg);
  json_num_digits(&b, "aux", si->aux, dg);
  json_num(&b, "ppl", exp(si->xent));
  json_num_digits(&b, "grad_norm", r->opt->last_norm, dg);
  json_num_digits(&b, "lr", si->lr, 17);
  mc_buf_printf(&b, ",\"tokens\":%lld", (long long)si->tokens);
  json_num(&b, "tokens_per_s", si->rate);
  json_num(&b, "elapsed", si->elapsed);
  mc_buf_printf(&b, ",\"moe\":[");
  for (int i = 0; i < g->nmoe; i++) {
    MoeStat ms = moe_stat(r->p, i);
    mc_buf_printf(&b, "%s{\"name\":", i ? "," : "");
    mc_buf_json_string(&b, moe_name(g, i));
    json_num(&b, "importance_cv", ms.cv);
    json_num(&b, "load_max_over_mean", ms.load_ratio);
    if (ms.drop >= 0) json_num(&b, "dropped", ms.drop);
    const Tensor *lt = g->moe_load ? g->moe_load[i] : NULL;
    if (lt && lt->numel > 0 && r->p->prec == PREC_F32) { /* per expert: experts = balanced */
      double *lv = download_vec(r->p, lt);
      mc_buf_printf(&b, ",\"load\":[");
      for (int64_t e = 0; e < lt->numel; e++)
        mc_buf_printf(&b, "%s%.6g", e ? "," : "", lv[e]);
      mc_buf_putc(&b, ']');
      mc_free(lv);
    }
    mc_buf_putc(&b, '}');
  }
  mc_buf_printf(&b, "]}\n");
  fputs(b.data, r->metrics);
  mc_buf_free(&b);
}

void rt_report_eval(Run *r, int64_t step, Split split, const EvalResult *e, double secs) {
  if (r->rank != 0) return;
  const char *name = split == SPLIT_VALID ? "valid" : "test";
  if (r->tty) fprintf(r->out, "\r\033[K");
  fprintf(r->out, "step %lld: %s loss %.4f ppl %.3f (%lld tokens", (long long)step, name, e->loss,
          exp(e->loss), (long long)e->tokens);
  if (e->left_out) fprintf(r->out, "; %lld not predicted", (long long)e->left_out);
  fprintf(r->out, ", %.1fs)", secs);
  if (r->floor_nats > 0) fprintf(r->out, "; floor ppl %.3f", exp(r->floor_nats));
  if (e->words > 0) fprintf(r->out, "; per word %.3f", e->word_ppl);
  fprintf(r->out, "\n");
  rt_guard_outputs(r);
  if (!r->metrics) return;
  McBuf b = {0};
  mc_buf_printf(&b, "{\"event\":\"eval\",\"step\":%lld,\"split\":\"%s\"", (long long)step, name);
  json_num_digits(&b, "loss", e->loss, r->o.f64 ? 17 : 9);
  json_num(&b, "ppl", exp(e->loss));
  mc_buf_printf(&b, ",\"tokens\":%lld,\"left_out\":%lld", (long long)e->tokens,
                (long long)e->left_out);
  if (e->words > 0) json_num(&b, "word_ppl", e->word_ppl);
  json_num(&b, "seconds", secs);
  mc_buf_printf(&b, "}\n");
  fputs(b.data, r->metrics);
  rt_guard_outputs(r);
  mc_buf_free(&b);
}

/* ---------------------------------------------------------------- summary */

/* Memory each device allocated for the model: parameters, their gradients, optimizer
 * state (what `moec plan` prints per device), and the program's two regions. */
enum { MEM_PARAMS, MEM_GRADS, MEM_OPTIM, MEM_PERSIST, MEM_ARENA, MEM_ROWS, MEM_N };

static void print_json(Run *r, const RunTotals *t, const int64_t *mem_all, const CommStats *cs) {
  const int P = r->P;
  McBuf b = {0};
  mc_buf_printf(&b, "{\"steps\":%lld", (long long)t->steps);
  mc_buf_printf(&b, ",\"devices\":%d", P);
  json_num(&b, "train_loss", t->train_loss);
  json_num(&b, "train_ppl", exp(t->train_xent));
  json_num(&b, "last_loss", t->last_loss);
  json_num(&b, "valid_ppl", exp(t->valid));
  json_num(&b, "test_ppl", exp(t->test));
  json_num(&b, "tokens_per_s", t->tokens_per_s);
  json_num(&b, "train_seconds", r->t_train);
  if (t->step_s_median > 0) json_num(&b, "step_ms_median", t->step_s_median * 1e3);
  json_num(&b, "data_seconds", r->t_data); /* rank 0: batches read or generated, uploaded */
  json_num(&b, "floor_ppl", r->floor_nats > 0 ? exp(r->floor_nats) : NAN);
  json_num(&b, "unigram_ppl", r->corpus && r->corpus->syn ? exp(r->corpus->syn->unigram_nats) : NAN);
  if (r->corpus && r->corpus->tk) { /* text: each split's tokens and the fraction of them that is <unk> */
    const Corpus *c = r->corpus;
    mc_buf_printf(&b, ",\"data\":{\"ids\":%d,\"tokens\":[%lld,%lld,%lld],\"unknown\":[",
                  rt_tok_size(c->tk), (long long)c->ntok[0], (long long)c->ntok[1],
                  (long long)c->ntok[2]);
    for (int s = 0; s < 3; s++)
      mc_buf_printf(&b, "%s%.9g", s ? "," : "",
                    (double)c->unk[s] / (double)MC_MAX(c->ntok[s], 1));
    mc_buf_printf(&b, "]}");
  }
  if (r->pairs) { /* translation: the pairs each split keeps and leaves out (max_len) */
    const RtParData *tr = r->pairs->train, *va = r->pairs->valid;
    mc_buf_printf(&b, ",\"data\":{\"pairs\":[%lld,%lld],\"left_out\":[%lld,%lld]}",
                  (long long)tr->n, (long long)(va ? va->n : 0), (long long)tr->nleft,
                  (long long)(va ? va->nleft : 0));
  }
  /* collectives per training step, summed over devices: payload = the plan's payload,
   * sent = its expected bytes (docs/placement.md); seconds: rank 0's */
  mc_buf_printf(&b, ",\"comm\":{");
  for (int k = 0; k < CK_COUNT; k++) {
    double per = t->done > 0 ? 1.0 / (double)t->done : 0;
    mc_buf_printf(&b, "%s\"%s\":{\"calls\":%.9g,\"payload_bytes\":%.9g,\"sent_bytes\":%.9g",
                  k ? "," : "", comm_kind_names[k], (double)cs->calls[k] * per,
                  cs->payload[k] * per, cs->sent[k] * per);
    json_num(&b, "seconds", r->stats.seconds[k]);
    mc_buf_putc(&b, '}');
  }
  mc_buf_putc(&b, '}');
  mc_buf_printf(&b, ",\"memory\":[");
  for (int d = 0; d < P; d++) {
    const int64_t *m = mem_all + d * MEM_N;
    mc_buf_printf(&b,
                  "%s{\"device\":%d,\"param_bytes\":%lld,\"grad_bytes\":%lld,"
                  "\"optimizer_bytes\":%lld,\"model_bytes\":%lld,\"persist_bytes\":%lld,"
                  "\"arena_bytes\":%lld,\"rows_bytes\":%lld}",
                  d ? "," : "", d, (long long)m[MEM_PARAMS], (long long)m[MEM_GRADS],
                  (long long)m[MEM_OPTIM], (long long)(m[MEM_PARAMS] + m[MEM_GRADS] + m[MEM_OPTIM]),
                  (long long)m[MEM_PERSIST], (long long)m[MEM_ARENA], (long long)m[MEM_ROWS]);
  }
  mc_buf_putc(&b, ']');
  if (r->o.settings) mc_buf_printf(&b, ",\"settings\":%s", r->o.settings);
  mc_buf_printf(&b, "}\n");
  fputs(b.data, stdout);
  rt_guard_outputs(r);
  mc_buf_free(&b);
}

void rt_report_summary(Run *r, const RunTotals *t) {
  Program *p = r->p;
  Graph *g = p->g;
  Comm *c = r->comm;
  const int P = r->P;
  int64_t mem[MEM_N] = {0}, *mem_all = mc_calloc((size_t)P * MEM_N, sizeof(int64_t));
  for (int i = 0; i < g->nparams; i++) {
    mem[MEM_PARAMS] += g->params[i]->numel * (int64_t)p->elem;
    mem[MEM_GRADS] += g->params[i]->numel * (int64_t)p->elem;
  }
  mem[MEM_OPTIM] = (int64_t)rt_md_optim_bytes(r->opt);
  mem[MEM_PERSIST] = (int64_t)p->persist_bytes;
  mem[MEM_ARENA] = (int64_t)p->arena_bytes;
  mem[MEM_ROWS] = (int64_t)rt_rows_bytes(p, true); /* expert rows moved apart: the most */
  c->all_gather(c, mem, mem_all, sizeof mem);
  CommStats cs = r->stats; /* summed over devices */
  if (P > 1) {
    double v[3 * CK_COUNT];
    for (int k = 0; k < CK_COUNT; k++) {
      v[k] = cs.payload[k];
      v[CK_COUNT + k] = cs.sent[k];
      v[2 * CK_COUNT + k] = (double)cs.calls[k];
    }
    c->all_reduce_sum_f64(c, v, 3 * CK_COUNT);
    for (int k = 0; k < CK_COUNT; k++) {
      cs.payload[k] = v[k];
      cs.sent[k] = v[CK_COUNT + k];
      cs.calls[k] = (int64_t)v[2 * CK_COUNT + k];
    }
  }
  if (r->rank != 0) {
    mc_free(mem_all);
    return;
  }
  char rate[32];
  if (r->pairs && !isnan(t->valid)) {
    fprintf(r->out, "valid ppl %.3f (per target token)\n", exp(t->valid));
  } else if (isnan(t->test)) {
    fprintf(r->out, "no evaluation (%s)\n", r->o.no_eval ? "--no-eval" : "no valid pairs");
  } else {
    fprintf(r->out, "test ppl %.3f", exp(t->test));
    if (r->floor_nats > 0)
      fprintf(r->out, " (floor %.3f, %.1f%% above)", exp(r->floor_nats),
              100.0 * (exp(t->test - r->floor_nats) - 1.0));
    fprintf(r->out, "; valid ppl %.3f\n", exp(t->valid));
  }
  fprintf(r->out, "%lld steps in %.1fs (%s tokens/s), evaluation %.1fs%s%s\n", (long long)t->done,
          r->t_train, human_rate(t->tokens_per_s, rate, sizeof rate), r->t_eval,
          r->o.save ? "; saved " : "", r->o.save ? r->o.save : "");
  int64_t mem_max = 0;
  for (int d = 0; d < P; d++)
    mem_max = MC_MAX(mem_max, mem_all[d * MEM_N + MEM_PARAMS] + mem_all[d * MEM_N + MEM_GRADS] +
                                  mem_all[d * MEM_N + MEM_OPTIM]);
  fprintf(r->out,
          "memory per device: params %.3f + grads %.3f + optimizer %.3f MiB (device 0; largest "
          "%.3f MiB); program %.3f MiB persistent + %.3f MiB arena",
          mem[MEM_PARAMS] / 1048576.0, mem[MEM_GRADS] / 1048576.0, mem[MEM_OPTIM] / 1048576.0,
          mem_max / 1048576.0, mem[MEM_PERSIST] / 1048576.0, mem[MEM_ARENA] / 1048576.0);
  if (mem[MEM_ROWS]) /* outgrew their slots in the arena: the region apart at its most */
    fprintf(r->out, " + %.3f MiB expert rows sized per step, apart from the arena (the most)",
            mem[MEM_ROWS] / 1048576.0);
  fputc('\n', r->out);
  if (P > 1) {
    double a2a = r->stats.seconds[CK_ALL_TO_ALL] + r->stats.seconds[CK_ALL_TO_ALL_BACK] +
                 r->stats.seconds[CK_RESHARD],
           ar = r->stats.seconds[CK_ALL_REDUCE] + r->stats.seconds[CK_ALL_GATHER_TOPM];
    fprintf(r->out,
            "%d devices: %s tokens/s per device; rank 0 in all-to-all %.1f%% and all-reduce "
            "%.1f%% of the training time\n",
            P, human_rate(t->tokens_per_s / P, rate, sizeof rate),
            100.0 * a2a / fmax(r->t_train, 1e-9), 100.0 * ar / fmax(r->t_train, 1e-9));
  }
  rt_guard_outputs(r);
  if (r->o.json) print_json(r, t, mem_all, &cs);
  mc_free(mem_all);
}
