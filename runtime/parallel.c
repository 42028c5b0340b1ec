/* parallel.c: parallel corpora for translation models.
 *
 * A file holds one pair per line, `source<TAB>target`, UTF-8 (a final '\r' is dropped;
 * blank lines are skipped and counted). A line without a tab, with two tabs, or with
 * bytes that are not UTF-8 is an error naming file:line. Both sides are encoded with one
 * BPE vocabulary (bpe.c) learned from the training pairs' two sides; the source gets
 * </s> at its end, the target is fed as <s> y_1 .. y_n and predicted as y_1 .. y_n </s>.
 * A pair whose source or target (with its </s>) has more than max_len ids, or that has
 * an empty side, is left out of the batches and counted; rt_par_report says how many,
 * and which lines.
 *
 * Batches: pairs go to buckets by their lengths rounded up to a multiple of `width`
 * (source and target separately), so a bucket's pairs share S and T and pad little; a
 * bucket's pairs, in an order drawn from the seed and the epoch, are cut into batches of
 * B = floor(budget / max(S, T)) pairs (the last one of a bucket smaller), and the batches
 * of all buckets are shuffled. Evaluation keeps the file's order in each bucket and does
 * not shuffle. Padding is id 0 (<pad>) to the bucket's S and T. */
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "text.h"

/* ---------------------------------------------------------------- reading */

/* Length of the valid UTF-8 character at p (n bytes left), or 0. */
static int utf8_char(const unsigned char *p, size_t n) {
  unsigned char c = p[0];
  int len = c < 0x80             ? 1
            : (c & 0xE0) == 0xC0 ? 2
            : (c & 0xF0) == 0xE0 ? 3
            : (c & 0xF8) == 0xF0 ? 4
                                 : 0;
  if (!len || (size_t)len > n) return 0;
  for (int i = 1; i < len; i++)
    if ((p[i] & 0xC0) != 0x80) return 0;
  uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
  for (int i = 1; i < len; i++)
    cp = cp << 6 | (p[i] & 0x3F);
  static const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

/* The byte offset of the first invalid UTF-8 in s[0..n), or -1. */
static int64_t utf8_invalid_at(const char *s, size_t n) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    int l = utf8_char(p + i, n - i);
    if (!l) return (int64_t)i;
    i += (size_t)l;
  }
  return -1;
}

bool rt_par_read(const char *path, RtParText *t, char *err, size_t errn) {
  memset(t, 0, sizeof *t);
  size_t len = 0;
  t->text = mc_read_file(path, &len);
  if (!t->text) {
    snprintf(err, errn, "%s: cannot read the parallel corpus", path);
    return false;
  }
  int64_t cap = 1024;
  t->src = mc_malloc((size_t)cap * sizeof(char *));
  t->tgt = mc_malloc((size_t)cap * sizeof(char *));
  t->line = mc_malloc((size_t)cap * sizeof(int64_t));
  char *p = t->text, *end = t->text + len;
  for (int64_t lineno = 1; p < end; lineno++) {
    char *nl = memchr(p, '\n', (size_t)(end - p));
    char *e = nl ? nl : end;
    if (e > p && e[-1] == '\r') e--;
    *e = 0;
    size_t n = (size_t)(e - p);
    if (memchr(p, 0, n)) {
      snprintf(err, errn, "%s:%lld: a NUL byte in the line", path, (long long)lineno);
      goto fail;
    }
    int64_t bad = utf8_invalid_at(p, n);
    if (bad >= 0) {
      snprintf(err, errn, "%s:%lld:%lld: invalid UTF-8 (byte 0x%02x)", path, (long long)lineno,
               (long long)bad + 1, (unsigned char)p[bad]);
      goto fail;
    }
    bool blank = true;
    for (size_t i = 0; i < n && blank; i++)
      blank = p[i] == ' ' || p[i] == '\t';
    if (blank) {
      t->nblank++;
    } else {
      char *tab = memchr(p, '\t', n);
      if (!tab) {
        snprintf(err, errn, "%s:%lld: expected source<TAB>target, found no tab", path,
                 (long long)lineno);
        goto fail;
      }
      if (memchr(tab + 1, '\t', (size_t)(e - tab - 1))) {
        snprintf(err, errn, "%s:%lld: expected source<TAB>target, found more than one tab", path,
                 (long long)lineno);
        goto fail;
      }
      *tab = 0;
      if (t->n == cap) {
        cap *= 2;
        t->src = mc_realloc(t->src, (size_t)cap * sizeof(char *));
        t->tgt = mc_realloc(t->tgt, (size_t)cap * sizeof(char *));
        t->line = mc_realloc(t->line, (size_t)cap * sizeof(int64_t));
      }
      t->src[t->n] = p;
      t->tgt[t->n] = tab + 1;
      t->line[t->n++] = lineno;
    }
    if (!nl) break;
    p = nl + 1;
  }
  t->path = path;
  return true;
fail:
  rt_par_text_free(t);
  return false;
}

void rt_par_text_free(RtParText *t) {
  mc_free(t->text);
  mc_free(t->src);
  mc_free(t->tgt);
  mc_free(t->line);
  memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------- encoding */

RtBpe *rt_par_learn_bpe(const RtParText *t, int32_t vocab) {
  const char **lines = mc_malloc((size_t)(2 * t->n + 1) * sizeof(char *));
  for (int64_t i = 0; i < t->n; i++) {
    lines[2 * i] = t->src[i];
    lines[2 * i + 1] = t->tgt[i];
  }
  RtBpe *b = rt_bpe_learn(lines, 2 * t->n, vocab);
  mc_free(lines);
  return b;
}

/* Appends ids[0..n) and then `last` (if >= 0) to the CSR arrays. */
static void csr_add(int32_t **ids, int64_t *nids, int64_t *cap, int64_t *off, int64_t i,
                    const int32_t *add, int64_t n, int32_t last) {
  int64_t need = *nids + n + 1;
  if (need > *cap) {
    while (need > *cap)
      *cap = *cap ? 2 * *cap : 4096;
    *ids = mc_realloc(*ids, (size_t)*cap * sizeof(int32_t));
  }
  memcpy(*ids + *nids, add, (size_t)n * sizeof(int32_t));
  *nids += n;
  if (last >= 0) (*ids)[(*nids)++] = last;
  off[i + 1] = *nids;
}

RtParData *rt_par_encode(const RtParText *t, RtBpe *bpe, int max_len) {
  RtParData *d = mc_calloc(1, sizeof *d);
  d->path = t->path;
  d->max_len = max_len;
  d->nblank = t->nblank;
  d->src_off = mc_calloc((size_t)t->n + 1, sizeof(int64_t));
  d->tgt_off = mc_calloc((size_t)t->n + 1, sizeof(int64_t));
  d->line = mc_malloc((size_t)(t->n ? t->n : 1) * sizeof(int64_t));
  d->left_out = mc_malloc((size_t)(t->n ? t->n : 1) * sizeof(int64_t));
  int64_t ns = 0, nt = 0, cs = 0, ct = 0;
  for (int64_t i = 0; i < t->n; i++) {
    int32_t *a, *b;
    int64_t na = rt_bpe_encode(bpe, t->src[i], &a), nb = rt_bpe_encode(bpe, t->tgt[i], &b);
    bool empty = na == 0 || nb == 0, longp = na + 1 > max_len || nb + 1 > max_len;
    if (empty || longp) {
      if (empty)
        d->nempty++;
      else
        d->nlong++;
      d->left_out[d->nleft++] = t->line[i];
    } else {
      int64_t k = d->n++;
      csr_add(&d->src, &ns, &cs, d->src_off, k, a, na, RT_BPE_EOS);
      csr_add(&d->tgt, &nt, &ct, d->tgt_off, k, b, nb, RT_BPE_EOS);
      d->line[k] = t->line[i];
      d->src_tokens += na + 1;
      d->tgt_tokens += nb + 1;
      d->max_src = MC_MAX(d->max_src, (int)(na + 1));
      d->max_tgt = MC_MAX(d->max_tgt, (int)(nb + 1));
    }
    mc_free(a);
    mc_free(b);
  }
  return d;
}

void rt_par_free(RtParData *d) {
  if (!d) return;
  mc_free(d->src);
  mc_free(d->tgt);
  mc_free(d->src_off);
  mc_free(d->tgt_off);
  mc_free(d->line);
  mc_free(d->left_out);
  mc_free(d);
}

void rt_par_report(const RtParData *d, FILE *out) {
  fprintf(out, "%s: %lld pairs, %lld + %lld tokens (source + target, with </s>; longest %d + %d)",
          d->path ? d->path : "parallel data", (long long)d->n, (long long)d->src_tokens,
          (long long)d->tgt_tokens, d->max_src, d->max_tgt);
  if (d->nblank) fprintf(out, "; %lld blank lines skipped", (long long)d->nblank);
  fprintf(out, "\n");
  if (!d->nleft) return;
  fprintf(out,
          "%s: %lld pairs left out: %lld with a side longer than max_len = %d tokens, "
          "%lld with an empty side; lines",
          d->path ? d->path : "parallel data", (long long)d->nleft, (long long)d->nlong, d->max_len,
          (long long)d->nempty);
  for (int64_t i = 0; i < d->nleft && i < 10; i++)
    fprintf(out, " %lld", (long long)d->left_out[i]);
  fprintf(out, "%s\n", d->nleft > 10 ? " ..." : "");
}

/* ---------------------------------------------------------------- batches */

static int64_t round_up(int64_t x, int64_t w) {
  return (x + w - 1) / w * w;
}

typedef struct Keyed {
  int64_t s, t;   /* the bucket: lengths rounded up */
  uint64_t order; /* inside it: a draw, or the file order */
  int64_t pair;
} Keyed;

static int cmp_keyed(const void *a, const void *b) {
  const Keyed *x = a, *y = b;
  if (x->s != y->s) return x->s < y->s ? -1 : 1;
  if (x->t != y->t) return x->t < y->t ? -1 : 1;
  if (x->order != y->order) return x->order < y->order ? -1 : 1;
  return x->pair < y->pair ? -1 : x->pair > y->pair;
}

RtParBatches *rt_par_batches(const RtParData *d, int64_t budget, int width, uint64_t seed,
                             int64_t epoch, bool shuffle) {
  MOEC_ASSERT(width >= 1 && budget >= 1);
  RtParBatches *bs = mc_calloc(1, sizeof *bs);
  bs->pairs = mc_malloc((size_t)(d->n ? d->n : 1) * sizeof(int64_t));
  /* sort by (bucket S, bucket T, a draw or the file order) */
  Keyed *k = mc_malloc((size_t)(d->n ? d->n : 1) * sizeof *k);
  uint64_t key = mc_rng_key(seed, 0x70617273ull /* "pars" */, (uint64_t)epoch);
  for (int64_t i = 0; i < d->n; i++) {
    k[i].s = round_up(d->src_off[i + 1] - d->src_off[i], width);
    k[i].t = round_up(d->tgt_off[i + 1] - d->tgt_off[i], width);
    k[i].order =
        shuffle ? (uint64_t)(mc_rng_uniform(key, (uint64_t)i) * 9007199254740992.0) : (uint64_t)i;
    k[i].pair = i;
  }
  qsort(k, (size_t)d->n, sizeof *k, cmp_keyed);
  int64_t cap = 64;
  bs->b = mc_malloc((size_t)cap * sizeof *bs->b);
  for (int64_t i = 0; i < d->n;) {
    int64_t j = i;
    while (j < d->n && k[j].s == k[i].s && k[j].t == k[i].t)
      j++;
    int64_t S = k[i].s, T = k[i].t;
    int64_t per = MC_MAX(1, budget / MC_MAX(S, T));
    for (int64_t a = i; a < j; a += per) {
      if (bs->n == cap) bs->b = mc_realloc(bs->b, (size_t)(cap *= 2) * sizeof *bs->b);
      RtParBatch *b = &bs->b[bs->n++];
      b->B = (int32_t)MC_MIN(per, j - a);
      b->S = (int32_t)S;
      b->T = (int32_t)T;
      b->first = a;
    }
    for (int64_t a = i; a < j; a++)
      bs->pairs[a] = k[a].pair;
    i = j;
  }
  mc_free(k);
  if (shuffle) /* Fisher-Yates over the batches, from the same draw's key */
    for (int64_t i = bs->n - 1; i > 0; i--) {
      int64_t j = (int64_t)(mc_rng_uniform(key, (uint64_t)(d->n + i)) * (double)(i + 1));
      RtParBatch t = bs->b[i];
      bs->b[i] = bs->b[j];
      bs->b[j] = t;
    }
  for (int64_t i = 0; i < bs->n; i++) {
    bs->tokens += (int64_t)bs->b[i].B * MC_MAX(bs->b[i].S, bs->b[i].T);
    bs->max_B = MC_MAX(bs->max_B, bs->b[i].B);
  }
  return bs;
}

void rt_par_batches_free(RtParBatches *bs) {
  if (!bs) return;
  mc_free(bs->b);
  mc_free(bs->pairs);
  mc_free(bs);
}

void rt_par_fill(const RtParData *d, const RtParBatches *bs, int64_t i, int32_t *src,
                 int32_t *tgt_in, int32_t *tgt_out) {
  const RtParBatch *b = &bs->b[i];
  memset(src, 0, (size_t)b->B * (size_t)b->S * sizeof(int32_t));
  memset(tgt_in, 0, (size_t)b->B * (size_t)b->T * sizeof(int32_t));
  memset(tgt_out, 0, (size_t)b->B * (size_t)b->T * sizeof(int32_t));
  for (int32_t r = 0; r < b->B; r++) {
    int64_t p = bs->pairs[b->first + r];
    int64_t ns = d->src_off[p + 1] - d->src_off[p], nt = d->tgt_off[p + 1] - d->tgt_off[p];
    MOEC_ASSERT(ns <= b->S && nt <= b->T);
    memcpy(src + (int64_t)r * b->S, d->src + d->src_off[p], (size_t)ns * sizeof(int32_t));
    /* target ids y_1 .. y_n </s>: fed as <s> y_1 .. y_n, predicted as y_1 .. y_n </s> */
    const int32_t *y = d->tgt + d->tgt_off[p];
    int32_t *in = tgt_in + (int64_t)r * b->T, *out = tgt_out + (int64_t)r * b->T;
    in[0] = RT_BPE_BOS;
    memcpy(in + 1, y, (size_t)(nt - 1) * sizeof(int32_t));
    memcpy(out, y, (size_t)nt * sizeof(int32_t));
  }
}
