/* evaluate.c: one evaluation loop, for 1 and N devices: the forward part of a program
 * over one pass of a split, LSTM state from zero, no dropout, no gate noise, every full
 * batch and the pass's last partial one; moec eval (the perplexity of a checkpoint) and
 * moec score (the log-likelihood of every sentence of a file). */
#include <float.h>
#include <math.h>
#include <string.h>

#include "run.h"
#include "text.h"

void rt_feed(Program *p, const Tensor *t, const int32_t *ids) {
  rt_dev_upload_input(p, p->buf[t->id], ids, (size_t)t->numel * sizeof(int32_t));
}

double rt_read_scalar(Program *p, const Tensor *t) {
  if (!t) return 0;
  if (p->prec == PREC_F64) {
    double v;
    p->be->download(&v, p->buf[t->id], sizeof v);
    return v;
  }
  float v;
  p->be->download(&v, p->buf[t->id], sizeof v);
  return v;
}

const Tensor *rt_probs_tensor(const Program *p) {
  for (int k = 0; k < p->g->nnodes; k++)
    if (p->g->nodes[k]->op == OP_XENT) return p->g->nodes[k]->out[1];
  return NULL;
}

static void zero_state(Program *p) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state;
    size_t nb = (size_t)s->numel * p->elem;
    void *z = mc_calloc(1, nb);
    p->be->upload(p->buf[s->id], z, nb);
    mc_free(z);
  }
}

/* -log p of targets tg of the first `k` positions of each of `rows` rows of T (the
 * probabilities of p's last forward pass), summed in double. */
static double probs_nll(Program *p, const Tensor *probs, const int32_t *tg, int rows, int T,
                        int k) {
  const int64_t V = probs->shape[1];
  void *owned = NULL;
  const void *pr = rt_dev_host_view(p, probs, &owned);
  double nll = 0;
  for (int r = 0; r < rows; r++)
    for (int t = 0; t < k; t++) {
      int64_t row = (int64_t)r * T + t;
      int32_t y = tg[row];
      double q = p->prec == PREC_F64 ? ((const double *)pr)[row * V + y]
                                     : ((const float *)pr)[row * V + y];
      nll -= log(fmax(q, (double)FLT_TRUE_MIN)); /* a probability that underflowed */
    }
  mc_free(owned);
  return nll;
}

EvalResult rt_evaluate(Comm *c, Program *p, const Corpus *corpus, Split split) {
  Graph *g = p->g;
  const int P = c->size, Bl = (int)(g->B_global / P), T = (int)g->T;
  const int64_t B = (int64_t)Bl * P;
  Batcher b; /* this device's rows of the global batch only */
  rt_batcher_init_rows(&b, corpus, split, Bl * P, T, c->rank * Bl, Bl);
  int64_t steps = rt_batcher_eval_steps(&b);
  size_t nl = (size_t)Bl * (size_t)T;
  int32_t *ids = mc_malloc(nl * sizeof(int32_t)), *tg = mc_malloc(nl * sizeof(int32_t));
  void **saved = mc_calloc((size_t)g->nstates + 1, sizeof(void *));
  for (int i = 0; i < g->nstates; i++) { /* the training state, put back below */
    const Tensor *s = g->states[i].state;
    saved[i] = mc_malloc((size_t)s->numel * p->elem);
    p->be->download(saved[i], p->buf[s->id], (size_t)s->numel * p->elem);
  }
  zero_state(p);
  KernelCtx ctx = {.training = false,
                   .batch0 = (int64_t)c->rank * Bl,
                   .batch_local = Bl,
                   .device = c->rank,
                   .ndevices = P,
                   .comm = P > 1 ? c : NULL,
                   .graph = P > 1 ? g : NULL,
                   .dev = p->dev};
  /* the loss on(...) a set without this device: it has no rows of it */
  bool has_loss = !g->xent->producer || g->ndev <= 1 || ir_runs_on(g->xent->producer, c->rank, P);
  double v[2] = {0, 0}; /* the sum of the batches' means; the partial batch's -log p */
  for (int64_t s = 0; s < steps; s++) {
    rt_batcher_next(&b, ids, tg);
    rt_feed(p, p->ids, ids);
    rt_feed(p, p->targets, tg);
    rt_exec(p, &ctx, 0, p->first_backward);
    if (has_loss) v[0] += rt_read_scalar(p, g->xent);
    rt_carry_state(p);
  }
  /* the pass's last positions, when the loss runs on every device (its probabilities are
   * this device's rows; on(...) a subset they are not: those positions are left out) */
  const Tensor *probs = rt_probs_tensor(p);
  const bool all_loss =
      !g->xent->producer || g->ndev <= 1 || ir_node_mask(g->xent->producer, P) == comm_all_mask(c);
  int tail = b.tail && probs && all_loss ? b.tail : 0;
  if (tail) {
    rt_batcher_tail(&b, ids, tg);
    rt_feed(p, p->ids, ids);
    rt_feed(p, p->targets, tg);
    rt_exec(p, &ctx, 0, p->first_backward);
    v[1] = probs_nll(p, probs, tg, Bl, T, tail);
  }
  if (P > 1) c->all_reduce_sum_f64(c, v, 2);
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *s = g->states[i].state;
    p->be->upload(p->buf[s->id], saved[i], (size_t)s->numel * p->elem);
    mc_free(saved[i]);
  }
  mc_free(saved);
  mc_free(ids);
  mc_free(tg);
  EvalResult e = {.tokens = steps * B * T + (int64_t)tail * B, .word_ppl = NAN};
  e.nll = v[0] * (double)(B * T) + v[1];
  e.loss = e.nll / (double)MC_MAX(e.tokens, 1);
  if (!b.ss) {
    e.left_out = corpus->ntok[split] - e.tokens;
    e.words = corpus->words[split];
    if (e.words > 0) e.word_ppl = exp(e.loss * (double)corpus->ntok[split] / (double)e.words);
  }
  rt_batcher_free(&b);
  return e;
}

/* ---------------------------------------------------------------- moec eval, moec score */

static void json_num(McBuf *b, const char *key, double v) {
  if (isfinite(v))
    mc_buf_printf(b, ",\"%s\":%.9g", key, v);
  else
    mc_buf_printf(b, ",\"%s\":null", key);
}

Corpus *rt_eval_corpus(const Config *cfg, int model_vocab, const char *ckpt,
                       const char *data_path) {
  StFile *ck = rt_st_open(ckpt);
  RtTok *tk = rt_tok_from_ckpt(ck);
  Corpus *c = data_path ? rt_corpus_load_file(data_path, model_vocab, tk)
                        : rt_corpus_load(cfg, model_vocab, tk);
  rt_st_close(ck);
  return c;
}

int rt_eval(Program *p, const Corpus *c, const char *ckpt, const char *what, bool json) {
  StFile *ck = rt_st_open(ckpt);
  rt_st_load_params(ck, p);
  rt_st_close(ck);
  double t0 = mc_now();
  EvalResult e = rt_evaluate(rt_comm_self(), p, c, SPLIT_TEST);
  double secs = mc_now() - t0;
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"tokens\":%lld,\"left_out\":%lld", (long long)e.tokens,
                  (long long)e.left_out);
    json_num(&b, "test_loss", e.loss);
    json_num(&b, "test_ppl", exp(e.loss));
    json_num(&b, "nll", e.nll);
    mc_buf_printf(&b, ",\"words\":%lld", (long long)e.words);
    json_num(&b, "word_ppl", e.word_ppl);
    json_num(&b, "floor_ppl", c->syn ? exp(c->syn->floor_nats) : NAN);
    mc_buf_printf(&b, ",\"batch\":%lld,\"unroll\":%lld", (long long)p->g->B, (long long)p->g->T);
    json_num(&b, "seconds", secs);
    mc_buf_printf(&b, "}\n");
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("test ppl %.3f (loss %.4f nats/token over %lld tokens of %s, %.1fs)", exp(e.loss),
           e.loss, (long long)e.tokens, what, secs);
    if (c->syn) printf("; floor ppl %.3f", exp(c->syn->floor_nats));
    if (e.words) printf("; per word %.3f (%lld words)", e.word_ppl, (long long)e.words);
    printf("\n");
    if (e.left_out)
      printf("%lld tokens not predicted: the first of each of %lld streams after the first and "
             "the last N mod B (--batch 1 predicts every token)\n",
             (long long)e.left_out, (long long)p->g->B);
  }
  return 0;
}

/* One sentence of moec score: its tokens' -log p, up to and with its line end. */
typedef struct Sentence {
  int64_t line, first, n; /* its line (1-based), first token, token count */
  double nll;
} Sentence;

static void print_sentence(const Corpus *c, const Sentence *s, const int32_t *stream, bool json) {
  char *text = c->tk ? rt_tok_decode(c->tk, stream + s->first, s->n) : NULL;
  if (text) { /* the line's text without its line end */
    size_t n = strlen(text);
    if (n && text[n - 1] == '\n') text[n - 1] = 0;
  }
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"line\":%lld,\"tokens\":%lld", (long long)s->line, (long long)s->n);
    json_num(&b, "logprob", -s->nll);
    json_num(&b, "ppl", exp(s->nll / (double)MC_MAX(s->n, 1)));
    if (text) {
      mc_buf_printf(&b, ",\"text\":");
      mc_buf_json_string(&b, text);
    }
    mc_buf_printf(&b, "}\n");
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("%6lld  %10.3f  %5lld  %9.3f  %s\n", (long long)s->line, -s->nll, (long long)s->n,
           exp(s->nll / (double)MC_MAX(s->n, 1)), text ? text : "");
  }
  mc_free(text);
}

int rt_score(Program *p, const Corpus *c, const char *ckpt, const char *what, bool json,
             bool quiet) {
  Graph *g = p->g;
  const int T = (int)g->T;
  MOEC_ASSERT(g->B == 1);
  StFile *ck = rt_st_open(ckpt);
  rt_st_load_params(ck, p);
  rt_st_close(ck);
  const Tensor *probs = rt_probs_tensor(p);
  if (!probs) mc_die("model '%s' has no softmax_xent to score with", g->name);
  int64_t n;
  const int32_t *stream = rt_corpus_stream(c, SPLIT_TEST, &n);
  const int32_t eos = c->tk ? rt_tok_eos(c->tk) : -1;
  zero_state(p);
  KernelCtx ctx = {.training = false, .batch_local = 1, .ndevices = 1, .dev = p->dev};
  int32_t *ids = mc_malloc((size_t)T * sizeof(int32_t)),
          *tg = mc_malloc((size_t)T * sizeof(int32_t));
  if (!quiet && !json)
    printf("%6s  %10s  %5s  %9s  %s\n", "line", "logprob", "tokens", "ppl", "text");
  double t0 = mc_now(), total = 0;
  int64_t lines = 0;
  Sentence s = {.line = 1, .first = 1};
  for (int64_t pos = 0; pos + 1 < n; pos += T) {
    int k = (int)MC_MIN((int64_t)T, n - 1 - pos);
    for (int t = 0; t < T; t++) { /* padding after the last token: its losses not counted */
      ids[t] = stream[pos + MC_MIN(t, k - 1)];
      tg[t] = t < k ? stream[pos + t + 1] : 0;
    }
    rt_feed(p, p->ids, ids);
    rt_feed(p, p->targets, tg);
    rt_exec(p, &ctx, 0, p->first_backward);
    rt_carry_state(p);
    void *owned = NULL;
    const void *pr = rt_dev_host_view(p, probs, &owned);
    const int64_t V = probs->shape[1];
    for (int t = 0; t < k; t++) {
      double q = p->prec == PREC_F64 ? ((const double *)pr)[t * V + tg[t]]
                                     : ((const float *)pr)[t * V + tg[t]];
      double nll = -log(fmax(q, (double)FLT_TRUE_MIN));
      total += nll;
      s.nll += nll;
      s.n++;
      if (tg[t] == eos) { /* a sentence ends with its line end */
        if (!quiet) print_sentence(c, &s, stream, json);
        lines++;
        s = (Sentence){.line = s.line + 1, .first = pos + t + 2};
      }
    }
    mc_free(owned);
  }
  if (s.n) { /* a last line without its line end (.bin data: the whole file) */
    if (!quiet) print_sentence(c, &s, stream, json);
    lines++;
  }
  double secs = mc_now() - t0;
  const int64_t tokens = n - 1;
  const double loss = total / (double)MC_MAX(tokens, 1);
  const int64_t words = c->words[SPLIT_TEST];
  const double word_ppl = words ? exp(total / (double)words) : NAN;
  if (json) {
    McBuf b = {0};
    mc_buf_printf(&b, "{\"sentences\":%lld,\"tokens\":%lld,\"unknown\":%lld", (long long)lines,
                  (long long)tokens, (long long)c->unk[SPLIT_TEST]);
    json_num(&b, "logprob", -total);
    json_num(&b, "loss", loss);
    json_num(&b, "ppl", exp(loss));
    mc_buf_printf(&b, ",\"words\":%lld", (long long)words);
    json_num(&b, "word_ppl", word_ppl);
    mc_buf_printf(&b, ",\"unroll\":%d", T);
    json_num(&b, "seconds", secs);
    mc_buf_printf(&b, "}\n");
    fputs(b.data, stdout);
    mc_buf_free(&b);
  } else {
    printf("total: logprob %.3f nats over %lld tokens of %lld line%s of %s: ppl %.3f", -total,
           (long long)tokens, (long long)lines, lines == 1 ? "" : "s", what, exp(loss));
    if (words) printf(", per word %.3f (%lld words)", word_ppl, (long long)words);
    if (c->tk)
      printf("; %.2f%% unknown", 100.0 * (double)c->unk[SPLIT_TEST] / (double)MC_MAX(tokens, 1));
    printf(" (%.1fs)\n", secs);
  }
  mc_free(ids);
  mc_free(tg);
  return 0;
}
