/* sample.c: moec sample: text from a language model checkpoint, one token at a time, with
 * the model's own forward program compiled for one stream of one step (B = 1, T = 1): the
 * LSTM state carried from token to token, no dropout, no gate noise (batchwise gates use
 * their thresholds), the softmax's probabilities read after each step. Deterministic:
 * token i's draw is mc_rng_uniform(key(seed), i). docs/training.md, "moec sample". */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"

static const double *sort_lp; /* qsort's context (one sampler per process) */

static int by_prob(const void *a, const void *b) {
  int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
  if (sort_lp[x] != sort_lp[y]) return sort_lp[x] > sort_lp[y] ? -1 : 1;
  return x < y ? -1 : x > y;
}

/* The id to continue with: the most probable (temperature 0; ties: the lower id), or a
 * draw from p^(1/temperature) renormalised over the top_k most probable (top_k 0: all),
 * never a special id (<unk>, <pad>, <s>). */
static int32_t choose(const RtTok *tk, const double *lp, int64_t V, const SampleOpts *o,
                      uint64_t key, int64_t i, int32_t *order) {
  int64_t n = 0;
  for (int64_t v = 0; v < V; v++)
    if (!rt_tok_special(tk, (int32_t)v) && isfinite(lp[v])) order[n++] = (int32_t)v;
  if (!n) mc_die("the model gives no token a probability above zero");
  if (o->temperature == 0) {
    int32_t best = order[0];
    for (int64_t a = 1; a < n; a++)
      if (lp[order[a]] > lp[best]) best = order[a];
    return best;
  }
  int64_t k = n;
  if (o->top_k > 0 && o->top_k < n) {
    sort_lp = lp;
    qsort(order, (size_t)n, sizeof(int32_t), by_prob);
    k = o->top_k;
  }
  double mx = -INFINITY, sum = 0;
  for (int64_t a = 0; a < k; a++)
    mx = fmax(mx, lp[order[a]]);
  for (int64_t a = 0; a < k; a++)
    sum += exp((lp[order[a]] - mx) / o->temperature);
  double u = mc_rng_uniform(key, (uint64_t)i) * sum, acc = 0;
  for (int64_t a = 0; a < k; a++) {
    acc += exp((lp[order[a]] - mx) / o->temperature);
    if (u < acc) return order[a];
  }
  return order[k - 1];
}

/* Feeds one id, runs the forward program, and reads log p of the next id into lp. */
static void step(Program *p, const KernelCtx *ctx, const Tensor *probs, int32_t id, double *lp) {
  int32_t zero = 0;
  rt_feed(p, p->ids, &id);
  rt_feed(p, p->targets, &zero);
  rt_exec(p, ctx, 0, p->first_backward);
  rt_carry_state(p);
  void *owned = NULL;
  const void *pr = rt_dev_host_view(p, probs, &owned);
  for (int64_t v = 0; v < probs->shape[1]; v++) {
    double q = p->prec == PREC_F64 ? ((const double *)pr)[v] : ((const float *)pr)[v];
    lp[v] = q > 0 ? log(q) : -INFINITY;
  }
  mc_free(owned);
}

/* One id's text as decoding puts it (spelled words joined). */
static void put_piece(const RtTok *tk, int32_t id, bool *line_start) {
  McBuf b = {0};
  rt_tok_put(tk, id, line_start, &b);
  if (b.len) fwrite(b.data, 1, b.len, stdout);
  mc_buf_free(&b);
  fflush(stdout); /* streaming: each token as it comes */
}

int rt_sample(Program *p, const char *ckpt, const SampleOpts *o) {
  Graph *g = p->g;
  MOEC_ASSERT(g->B == 1 && g->T == 1);
  StFile *ck = rt_st_open(ckpt);
  RtTok *tk = rt_tok_from_ckpt(ck);
  if (!tk) {
    rt_st_close(ck);
    mc_die("checkpoint '%s' holds no vocabulary: moec sample needs a model trained on text (its "
           "tokenizer turns ids into text)",
           ckpt);
  }
  if (rt_tok_size(tk) > p->vocab)
    mc_die("checkpoint '%s': its vocabulary (%d ids) is larger than the model's (%d)", ckpt,
           rt_tok_size(tk), p->vocab);
  rt_st_load_params(ck, p);
  rt_st_close(ck);
  const Tensor *probs = rt_probs_tensor(p);
  if (!probs) mc_die("model '%s' has no softmax_xent to sample from", g->name);
  const int64_t V = probs->shape[1];
  const int32_t eos = rt_tok_eos(tk);
  if (eos < 0) mc_die("checkpoint '%s': its vocabulary has no line end (<eos>)", ckpt);
  int32_t *prompt = NULL;
  int64_t np = 0;
  if (o->prompt && *o->prompt) { /* its ids without the line end encoding adds */
    np = rt_tok_encode(tk, o->prompt, strlen(o->prompt), &prompt) - 1;
    for (int64_t i = 0; i < np; i++)
      if (rt_tok_unknown(tk, prompt[i]) && !o->quiet)
        fprintf(stderr,
                "moec sample: note: the prompt's token %lld is not in the vocabulary "
                "(<unk>)\n",
                (long long)i + 1);
  }
  KernelCtx ctx = {.training = false, .batch_local = 1, .ndevices = 1, .dev = p->dev};
  double *lp = mc_malloc((size_t)V * sizeof(double));
  int32_t *order = mc_malloc((size_t)V * sizeof(int32_t));
  /* from zero state, as after a line end: then the prompt */
  step(p, &ctx, probs, eos, lp);
  bool line_start = true;
  for (int64_t i = 0; i < np; i++) {
    put_piece(tk, prompt[i], &line_start);
    step(p, &ctx, probs, prompt[i], lp);
  }
  uint64_t key = mc_rng_key(o->seed, 0x53414d50ull /* "SAMP" */, 0);
  for (int64_t i = 0; i < o->tokens; i++) {
    int32_t id = choose(tk, lp, V, o, key, i, order);
    put_piece(tk, id, &line_start);
    if (i + 1 < o->tokens) step(p, &ctx, probs, id, lp);
  }
  if (!line_start) putchar('\n');
  fflush(stdout);
  mc_free(order);
  mc_free(lp);
  mc_free(prompt);
  rt_tok_free(tk);
  return 0;
}
