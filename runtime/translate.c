/* translate.c: decoding a translation model, and what uses it: moec translate, and moec
 * eval's perplexity and BLEU.
 *
 * Two programs, compiled up front by the driver from the model's own layers
 * (driver/compile.c): its encoder (every statement that does not read the target inputs),
 * run once per batch of sentences, and one decoder step (the statements that do, at
 * T = 1, each LSTM's state carried from step to step), run once per output position
 * with the encoder's values the decoder reads copied in, each sentence's rows repeated for
 * its K hypotheses. Both are forward only: no dropout, no gate noise, batchwise MoE layers
 * gate by their learned thresholds.
 *
 * Beam search (K = 1: greedy): each step every live hypothesis is extended by each word;
 * among a sentence's 2K best extensions (score = sum of log-probabilities), those ending in
 * </s> are finished, with the score normalised by GNMT's lp(Y) = ((5 + |Y|) / 6)^alpha
 * (|Y| counting </s>), the others fill the K hypotheses of the next step. A sentence is
 * done when it has K finished hypotheses, when no live one can beat its best finished one
 * (a live score s < 0 can reach at most s / lp(max_len)), or at max_len (the live ones
 * finish there). The best finished hypothesis is the translation. Ties are broken by
 * (hypothesis, word) order: decoding is deterministic.
 *
 * Sentences are sorted by length and batched (rows / K sentences), so a batch's source
 * is padded little; translations come out in the input's order. docs/training.md,
 * "Translating". */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"

/* ---------------------------------------------------------------- a batch's search */

typedef struct Cand {
  double score;
  int k;     /* the hypothesis it extends */
  int32_t w; /* the word */
} Cand;

static int cand_cmp(const void *a, const void *b) {
  const Cand *x = a, *y = b;
  if (x->score != y->score) return x->score > y->score ? -1 : 1;
  if (x->k != y->k) return x->k < y->k ? -1 : 1;
  return x->w < y->w ? -1 : x->w > y->w;
}

typedef struct Search {
  Program *enc, *dec;
  const DecodeOpts *o;
  int K, V, L;
  int n, rows;               /* this batch: sentences, n * K rows */
  double *score;             /* [rows]: sum of log-probabilities; -inf: no hypothesis */
  int32_t *hist, *next_hist; /* [rows * L]: the words so far */
  int32_t *last;             /* [rows]: the word fed next */
  int *parent;               /* [rows]: the row each new hypothesis extends */
  double *best;              /* [n]: the best finished hypothesis' normalised score */
  int32_t *best_ids;         /* [n * L] */
  int *best_len, *nfin;
  bool *done;
  double *logp;  /* [V] */
  Cand *cand;    /* [K * 2K] */
  float *logits; /* [rows * V] */
} Search;

static double length_penalty(const Search *s, int len) {
  return pow((5.0 + len) / 6.0, s->o->alpha);
}

/* Row r's log-softmax into s->logp; returns false for a row with no hypothesis. */
static void log_softmax(Search *s, const float *x) {
  double mx = x[0], sum = 0;
  for (int w = 1; w < s->V; w++)
    mx = fmax(mx, x[w]);
  for (int w = 0; w < s->V; w++)
    sum += exp((double)x[w] - mx);
  double lse = mx + log(sum);
  for (int w = 0; w < s->V; w++)
    s->logp[w] = (double)x[w] - lse;
}

/* Sentence i's hypothesis: row's first len - 1 words, then w (</s>: not written), of
 * summed log-probability raw; |Y| = len (a final </s> counted). */
static void finish(Search *s, int i, int row, int len, int32_t w, double raw) {
  double norm = raw / length_penalty(s, len);
  s->nfin[i]++;
  if (s->best_len[i] >= 0 && !(norm > s->best[i])) return;
  s->best[i] = norm;
  int n = 0;
  for (int t = 0; t < len - 1; t++)
    s->best_ids[(int64_t)i * s->L + n++] = s->hist[(int64_t)row * s->L + t];
  if (w != RT_BPE_EOS) s->best_ids[(int64_t)i * s->L + n++] = w;
  s->best_len[i] = n;
}

/* Sentence i's step t (its K rows' log-probabilities in s->logits): the next hypotheses. */
static void step_sentence(Search *s, int i, int t) {
  const int K = s->K, m = 2 * K;
  int nc = 0;
  for (int k = 0; k < K; k++) {
    int row = i * K + k;
    if (!isfinite(s->score[row])) continue;
    log_softmax(s, s->logits + (int64_t)row * s->V);
    Cand *top = s->cand + nc; /* this row's m best words, kept sorted */
    int ntop = 0;
    for (int32_t w = RT_BPE_EOS; w < s->V; w++) { /* <pad> and <s> are never output */
      Cand c = {s->score[row] + s->logp[w], k, w};
      if (ntop == m && cand_cmp(&c, &top[m - 1]) >= 0) continue;
      int j = ntop < m ? ntop++ : m - 1;
      while (j > 0 && cand_cmp(&c, &top[j - 1]) < 0) {
        top[j] = top[j - 1];
        j--;
      }
      top[j] = c;
    }
    nc += ntop;
  }
  qsort(s->cand, (size_t)nc, sizeof(Cand), cand_cmp);
  int live = 0;
  for (int c = 0; c < nc && live < K; c++) {
    const Cand *x = &s->cand[c];
    int from = i * K + x->k;
    if (x->w == RT_BPE_EOS) {
      finish(s, i, from, t + 1, x->w, x->score);
      continue;
    }
    int row = i * K + live++;
    s->parent[row] = from;
    s->last[row] = x->w;
    s->score[row] = x->score; /* read again only through next_hist below */
    s->cand[c].k = -1 - row;  /* remember: a live hypothesis */
  }
  for (int k = live; k < K; k++) { /* fewer than K live: the rest are empty */
    int row = i * K + k;
    s->parent[row] = row;
    s->last[row] = RT_BPE_EOS;
    s->score[row] = -INFINITY;
  }
  double best_live = -INFINITY;
  for (int k = 0; k < live; k++)
    best_live = fmax(best_live, s->score[i * K + k]);
  bool last_step = t + 1 == s->L;
  if (s->nfin[i] >= K || live == 0 || last_step ||
      (s->best_len[i] >= 0 && s->best[i] >= best_live / length_penalty(s, s->L)))
    s->done[i] = true;
  if (s->done[i] && last_step) /* max_len: the live hypotheses finish here */
    for (int k = 0; k < live; k++) {
      int row = i * K + k;
      int from = s->parent[row];
      int32_t w = s->last[row];
      /* the t words of `from` (hist is this step's, before the update), then w */
      finish(s, i, from, t + 1, w, s->score[row]);
    }
}

/* States after a step: each new hypothesis takes its parent's (rows permuted). */
static void reorder_states(Search *s) {
  Program *p = s->dec;
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *st = g->states[i].state;
    int64_t per = st->numel / s->rows;
    size_t nb = (size_t)st->numel * p->elem;
    float *a = mc_malloc(nb), *b = mc_malloc(nb);
    p->be->download(a, p->buf[st->id], nb);
    for (int r = 0; r < s->rows; r++)
      memcpy(b + (int64_t)r * per, a + (int64_t)s->parent[r] * per, (size_t)per * p->elem);
    p->be->upload(p->buf[st->id], b, nb);
    mc_free(a);
    mc_free(b);
  }
}

/* Uploads the host rows `x` ([n rows of `per` values]) each repeated K times into t. */
static void upload_repeated(Program *p, const Tensor *t, const void *x, int n, int K,
                            size_t row_bytes) {
  MOEC_ASSERT((size_t)t->numel * (t->ty.dtype == DT_I32 ? 4 : p->elem) ==
              row_bytes * (size_t)n * (size_t)K);
  char *b = mc_malloc(row_bytes * (size_t)n * (size_t)K + 1);
  for (int i = 0; i < n; i++)
    for (int k = 0; k < K; k++)
      memcpy(b + ((size_t)i * K + k) * row_bytes, (const char *)x + (size_t)i * row_bytes,
             row_bytes);
  p->be->upload(p->buf[t->id], b, row_bytes * (size_t)n * (size_t)K);
  mc_free(b);
}

static void zero_states(Program *p) {
  Graph *g = p->g;
  for (int i = 0; i < g->nstates; i++) {
    const Tensor *st = g->states[i].state;
    size_t nb = (size_t)st->numel * p->elem;
    void *z = mc_calloc(1, nb + 1);
    p->be->upload(p->buf[st->id], z, nb);
    mc_free(z);
  }
}

/* Translates sentences src[0..n) (ids with </s>, at most S each) into out[i] / nout[i]. */
static void search_batch(Search *s, int32_t *const *src, const int64_t *nsrc, int n, int32_t **out,
                         int64_t *nout) {
  const int K = s->K;
  int64_t S = 1;
  for (int i = 0; i < n; i++)
    S = MC_MAX(S, nsrc[i]);
  S = (S + RT_PAR_WIDTH - 1) / RT_PAR_WIDTH * RT_PAR_WIDTH;
  s->n = n;
  s->rows = n * K;
  /* the encoder, once */
  int32_t *ids = mc_calloc((size_t)n * (size_t)S, sizeof(int32_t));
  for (int i = 0; i < n; i++)
    memcpy(ids + (int64_t)i * S, src[i], (size_t)nsrc[i] * sizeof(int32_t));
  Program *e = s->enc, *d = s->dec;
  rt_program_bind(e, (BatchShape){n, 1, S});
  rt_feed(e, e->source, ids);
  KernelCtx ctx = {.training = false, .batch_local = n, .ndevices = 1, .dev = e->dev};
  rt_exec(e, &ctx, 0, e->ninstrs);
  /* the decoder's inputs: each sentence's rows K times */
  rt_program_bind(d, (BatchShape){s->rows, 1, S});
  if (d->source) upload_repeated(d, d->source, ids, n, K, (size_t)S * sizeof(int32_t));
  for (int b = 0; b < d->g->nbridge; b++) {
    const Tensor *from = e->g->bridge[b], *to = d->g->bridge[b];
    void *own;
    const void *h = rt_dev_host_view(e, from, &own);
    upload_repeated(d, to, h, n, K, (size_t)(from->numel / n) * e->elem);
    mc_free(own);
  }
  mc_free(ids);
  zero_states(d);
  for (int r = 0; r < s->rows; r++) {
    s->score[r] = r % K ? -INFINITY : 0; /* one hypothesis per sentence to start */
    s->last[r] = RT_BPE_BOS;
    s->parent[r] = r;
  }
  for (int i = 0; i < n; i++) {
    s->best_len[i] = -1;
    s->nfin[i] = 0;
    s->done[i] = false;
  }
  ctx = (KernelCtx){.training = false, .batch_local = s->rows, .ndevices = 1, .dev = d->dev};
  for (int t = 0; t < s->L; t++) {
    bool all = true;
    for (int i = 0; i < n; i++)
      all &= s->done[i];
    if (all) break;
    rt_feed(d, d->target_in, s->last);
    rt_exec(d, &ctx, 0, d->ninstrs);
    d->be->download(s->logits, d->buf[d->g->logits->id],
                    (size_t)s->rows * (size_t)s->V * sizeof(float));
    for (int i = 0; i < n; i++)
      if (!s->done[i]) {
        step_sentence(s, i, t);
      } else {
        for (int k = 0; k < K; k++) { /* a finished sentence's rows stay as they are */
          s->parent[i * K + k] = i * K + k;
          s->score[i * K + k] = -INFINITY;
        }
      }
    for (int r = 0; r < s->rows; r++) { /* histories follow their parents */
      memcpy(s->next_hist + (int64_t)r * s->L, s->hist + (int64_t)s->parent[r] * s->L,
             (size_t)t * sizeof(int32_t));
      s->next_hist[(int64_t)r * s->L + t] = s->last[r];
    }
    int32_t *h = s->hist;
    s->hist = s->next_hist;
    s->next_hist = h;
    rt_carry_state(d);
    if (K > 1) reorder_states(s);
  }
  for (int i = 0; i < n; i++) {
    nout[i] = MC_MAX(s->best_len[i], 0);
    out[i] = mc_malloc((size_t)(nout[i] + 1) * sizeof(int32_t));
    memcpy(out[i], s->best_ids + (int64_t)i * s->L, (size_t)nout[i] * sizeof(int32_t));
  }
}

typedef struct ByLen {
  int64_t len, i;
} ByLen;

static int bylen_cmp(const void *a, const void *b) {
  const ByLen *x = a, *y = b;
  if (x->len != y->len) return x->len < y->len ? -1 : 1;
  return x->i < y->i ? -1 : x->i > y->i;
}

void rt_decode(Program *enc, Program *dec, const DecodeOpts *o, int32_t *const *src,
               const int64_t *nsrc, int64_t n, int32_t **out, int64_t *nout) {
  MOEC_ASSERT(enc->prec == PREC_F32 && dec->prec == PREC_F32 && dec->g->logits && dec->target_in);
  Search s = {.enc = enc, .dec = dec, .o = o, .K = o->beam, .L = o->max_len};
  s.V = (int)dec->g->logits->ty.dim[1].c;
  const int per = MC_MAX(1, o->rows / s.K), R = per * s.K;
  s.score = mc_malloc((size_t)R * sizeof(double));
  s.hist = mc_calloc((size_t)R * (size_t)s.L, sizeof(int32_t));
  s.next_hist = mc_calloc((size_t)R * (size_t)s.L, sizeof(int32_t));
  s.last = mc_malloc((size_t)R * sizeof(int32_t));
  s.parent = mc_malloc((size_t)R * sizeof(int));
  s.best = mc_malloc((size_t)per * sizeof(double));
  s.best_ids = mc_calloc((size_t)per * (size_t)s.L, sizeof(int32_t));
  s.best_len = mc_malloc((size_t)per * sizeof(int));
  s.nfin = mc_malloc((size_t)per * sizeof(int));
  s.done = mc_malloc((size_t)per * sizeof(bool));
  s.logp = mc_malloc((size_t)s.V * sizeof(double));
  s.cand = mc_malloc((size_t)(2 * s.K * s.K) * sizeof(Cand));
  s.logits = mc_malloc((size_t)R * (size_t)s.V * sizeof(float));
  ByLen *order = mc_malloc((size_t)MC_MAX(n, 1) * sizeof(ByLen));
  for (int64_t i = 0; i < n; i++)
    order[i] = (ByLen){nsrc[i], i};
  qsort(order, (size_t)n, sizeof(ByLen), bylen_cmp);
  int32_t **bs = mc_malloc((size_t)per * sizeof(int32_t *)),
          **bo = mc_malloc((size_t)per * sizeof(int32_t *));
  int64_t *bn = mc_malloc((size_t)per * sizeof(int64_t)),
          *bno = mc_malloc((size_t)per * sizeof(int64_t));
  for (int64_t a = 0; a < n; a += per) {
    int m = (int)MC_MIN((int64_t)per, n - a);
    for (int i = 0; i < m; i++) {
      bs[i] = src[order[a + i].i];
      bn[i] = nsrc[order[a + i].i];
    }
    search_batch(&s, bs, bn, m, bo, bno);
    for (int i = 0; i < m; i++) {
      out[order[a + i].i] = bo[i];
      nout[order[a + i].i] = bno[i];
    }
  }
  mc_free(bs);
  mc_free(bo);
  mc_free(bn);
  mc_free(bno);
  mc_free(order);
  mc_free(s.score);
  mc_free(s.hist);
  mc_free(s.next_hist);
  mc_free(s.last);
  mc_free(s.parent);
  mc_free(s.best);
  mc_free(s.best_ids);
  mc_free(s.best_len);
  mc_free(s.nfin);
  mc_free(s.done);
  mc_free(s.logp);
  mc_free(s.cand);
  mc_free(s.logits);
}

/* ---------------------------------------------------------------- moec translate, eval */

/* The checkpoint's weights into both programs, and its BPE vocabulary (dies without one:
 * a language model's checkpoint). */
static RtBpe *open_ckpt(const char *ckpt, Program *enc, Program *dec, Program *full) {
  StFile *f = rt_st_open(ckpt);
  RtBpe *bpe = rt_ckpt_bpe(f);
  if (!bpe)
    mc_die("checkpoint '%s' holds no BPE vocabulary (metadata data.bpe): it is not the "
           "checkpoint of a translation model (moec run --save of one writes it)",
           ckpt);
  if (rt_bpe_vocab(bpe) > (int32_t)dec->g->logits->ty.dim[1].c)
    mc_die("checkpoint '%s': its BPE vocabulary has %d ids, more than the model's %lld", ckpt,
           rt_bpe_vocab(bpe), (long long)dec->g->logits->ty.dim[1].c);
  rt_st_load_params_part(f, enc);
  rt_st_load_params_part(f, dec);
  if (full) rt_st_load_params(f, full);
  rt_st_close(f);
  return bpe;
}

static char *read_all(const char *path, size_t *len) {
  if (path && strcmp(path, "-")) {
    char *s = mc_read_file(path, len);
    if (!s) mc_die("cannot read '%s': %s", path, strerror(errno));
    return s;
  }
  size_t cap = 1 << 16, n = 0;
  char *s = mc_malloc(cap + 1);
  for (size_t k; (k = fread(s + n, 1, cap - n, stdin)) > 0;)
    if ((n += k) == cap) s = mc_realloc(s, (cap *= 2) + 1);
  if (ferror(stdin)) mc_die("cannot read the standard input: %s", strerror(errno));
  s[n] = 0;
  *len = n;
  return s;
}

int rt_translate(Program *enc, Program *dec, const char *ckpt, const char *input,
                 const DecodeOpts *o) {
  RtBpe *bpe = open_ckpt(ckpt, enc, dec, NULL);
  const char *name = input && strcmp(input, "-") ? input : "<stdin>";
  size_t len = 0;
  char *text = read_all(input, &len);
  int64_t n = 0, cap = 64;
  int32_t **src = mc_malloc((size_t)cap * sizeof(int32_t *)), **keep;
  int64_t *nsrc = mc_malloc((size_t)cap * sizeof(int64_t));
  for (size_t at = 0; at < len;) { /* one sentence per line, "\r\n" too */
    size_t end = at;
    while (end < len && text[end] != '\n')
      end++;
    size_t m = end > at && text[end - 1] == '\r' ? end - at - 1 : end - at;
    if (memchr(text + at, 0, m)) mc_die("%s:%lld: a NUL byte in the line", name, (long long)n + 1);
    int64_t bad = rt_utf8_invalid_at(text + at, m);
    if (bad >= 0)
      mc_die("%s:%lld:%lld: invalid UTF-8 (byte 0x%02x)", name, (long long)n + 1,
             (long long)bad + 1, (unsigned char)text[at + (size_t)bad]);
    text[at + m] = 0;
    if (n == cap) {
      src = mc_realloc(src, (size_t)(cap *= 2) * sizeof(int32_t *));
      nsrc = mc_realloc(nsrc, (size_t)cap * sizeof(int64_t));
    }
    int32_t *ids = NULL;
    int64_t k = rt_bpe_encode(bpe, text + at, &ids);
    if (k == 0 || k + 1 > o->max_src) {
      fprintf(stderr,
              k ? "moec translate: warning: %s:%lld: %lld ids after BPE, more than the %d source "
                  "ids this model translates (max_len): translated as an empty line\n"
                : "moec translate: warning: %s:%lld: an empty line: translated as an empty line\n",
              name, (long long)n + 1, (long long)k + 1, o->max_src);
      k = -1; /* nothing to translate */
    } else {
      ids = mc_realloc(ids, (size_t)(k + 1) * sizeof(int32_t));
      ids[k] = RT_BPE_EOS;
    }
    src[n] = ids;
    nsrc[n++] = k + 1;
    at = end + 1;
  }
  /* the sentences to translate, then each line's translation in order */
  keep = mc_malloc((size_t)MC_MAX(n, 1) * sizeof(int32_t *));
  int64_t *nkeep = mc_malloc((size_t)MC_MAX(n, 1) * sizeof(int64_t)), nk = 0;
  for (int64_t i = 0; i < n; i++)
    if (nsrc[i] > 0) {
      keep[nk] = src[i];
      nkeep[nk++] = nsrc[i];
    }
  int32_t **out = mc_calloc((size_t)MC_MAX(nk, 1), sizeof(int32_t *));
  int64_t *nout = mc_calloc((size_t)MC_MAX(nk, 1), sizeof(int64_t));
  rt_decode(enc, dec, o, keep, nkeep, nk, out, nout);
  for (int64_t i = 0, j = 0; i < n; i++) {
    if (nsrc[i] > 0) {
      char *s = rt_bpe_decode(bpe, out[j], nout[j]);
      char *clean = rt_utf8_sanitize(s); /* a hypothesis may end inside a character */
      fputs(clean, stdout);
      mc_free(clean);
      mc_free(s);
      mc_free(out[j++]);
    }
    fputc('\n', stdout);
    mc_free(src[i]);
  }
  fflush(stdout);
  mc_free(out);
  mc_free(nout);
  mc_free(keep);
  mc_free(nkeep);
  mc_free(src);
  mc_free(nsrc);
  mc_free(text);
  rt_bpe_free(bpe);
  return ferror(stdout) ? 1 : 0;
}

int rt_eval_pairs(Program *p, Program *enc, Program *dec, const Config *cfg, const char *ckpt,
                  const char *data_path, const DecodeOpts *o, bool json) {
  RtBpe *bpe = open_ckpt(ckpt, enc, dec, p);
  const char *path = data_path ? data_path : cfg->data_valid_path;
  if (!path)
    mc_die("no pairs to evaluate on: the train block's parallel data has no valid= file "
           "(give one with --data FILE.tsv)");
  RtParText t;
  char err[512];
  if (!rt_par_read(path, &t, err, sizeof err)) mc_die("%s", err);
  RtParData *d = rt_par_encode(&t, bpe, cfg->max_len);
  rt_par_text_free(&t);
  if (!json) rt_par_report(d, stdout);
  if (d->n == 0) mc_die("%s: no pair to evaluate on (every one left out)", path);
  Pairs pr = {.path = path,
              .bpe = bpe,
              .valid = d,
              .budget = cfg->batch_tokens,
              .quantum = rt_par_quantum(1)};
  double t0 = mc_now();
  int64_t tokens = 0;
  double loss = rt_evaluate_pairs(rt_comm_self(), p, &pr, d, &tokens);
  double t1 = mc_now();
  /* BLEU: the sources translated, against the references (both through the BPE) */
  int32_t **src = mc_malloc((size_t)d->n * sizeof(int32_t *)),
          **out = mc_calloc((size_t)d->n, sizeof(int32_t *));
  int64_t *nsrc = mc_malloc((size_t)d->n * sizeof(int64_t)),
          *nout = mc_calloc((size_t)d->n, sizeof(int64_t));
  for (int64_t i = 0; i < d->n; i++) {
    src[i] = d->src + d->src_off[i];
    nsrc[i] = d->src_off[i + 1] - d->src_off[i];
  }
  rt_decode(enc, dec, o, src, nsrc, d->n, out, nout);
  RtBleuStats st = {0};
  for (int64_t i = 0; i < d->n; i++) {
    char *hyp = rt_bpe_decode(bpe, out[i], nout[i]);
    char *ref = rt_bpe_decode(bpe, d->tgt + d->tgt_off[i], d->tgt_off[i + 1] - d->tgt_off[i]);
    char *th = rt_bleu_tokenize(hyp), *tr = rt_bleu_tokenize(ref);
    rt_bleu_add(&st, th, tr);
    mc_free(th);
    mc_free(tr);
    mc_free(hyp);
    mc_free(ref);
    mc_free(out[i]);
  }
  RtBleu b = rt_bleu_score(&st);
  double t2 = mc_now();
  char line[256];
  rt_bleu_format(&b, line, sizeof line);
  if (json)
    printf("{\"pairs\":%lld,\"tokens\":%lld,\"valid_loss\":%.9g,\"valid_ppl\":%.9g,\"bleu\":%.9g,"
           "\"beam\":%d,\"alpha\":%g,\"seconds\":%.3f,\"decode_seconds\":%.3f}\n",
           (long long)d->n, (long long)tokens, loss, exp(loss), b.bleu, o->beam, o->alpha, t1 - t0,
           t2 - t1);
  else
    printf("%s: ppl %.3f (loss %.4f nats per target token over %lld tokens, %.1fs)\n"
           "%s (beam %d, alpha %g, %lld sentences in %.1fs)\n",
           path, exp(loss), loss, (long long)tokens, t1 - t0, line, o->beam, o->alpha,
           (long long)d->n, t2 - t1);
  mc_free(src);
  mc_free(nsrc);
  mc_free(out);
  mc_free(nout);
  rt_par_free(d);
  rt_bpe_free(bpe);
  return 0;
}
