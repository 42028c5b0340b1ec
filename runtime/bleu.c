/* bleu.c: corpus BLEU-4 exactly as Moses' multi-bleu.perl computes it with one
 * reference per sentence: per sentence, each hypothesis n-gram (n = 1..4) matches at
 * most as often as it occurs in the reference (clipping); matches and hypothesis n-grams
 * add up over the corpus, as do the lengths; then
 *
 *   p_n  = matches_n / total_n                        (0 when total_n = 0)
 *   BP   = exp(1 - ref_len / hyp_len) if hyp_len < ref_len, else 1
 *   BLEU = 100 * BP * exp((log p_1 + log p_2 + log p_3 + log p_4) / 4)
 *
 * with log 0 = -9999999999 as the script has it, so any p_n = 0 gives BLEU 0. Where the
 * script divides by zero (no hypothesis words at all) BLEU is 0. Tokens are compared
 * exactly (case-sensitive, multi-bleu.perl without -lc). */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "text.h"

/* ---------------------------------------------------------------- n-gram matching */

typedef struct Grams {
  const int32_t *tok;
  int n;
} Grams;

static _Thread_local Grams cmp_ctx;

/* Orders n-gram start positions by their n tokens (then by position: a total order). */
static int cmp_gram(const void *pa, const void *pb) {
  int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;
  for (int k = 0; k < cmp_ctx.n; k++) {
    int32_t x = cmp_ctx.tok[a + k], y = cmp_ctx.tok[b + k];
    if (x != y) return x < y ? -1 : 1;
  }
  return a < b ? -1 : a > b;
}

static int cmp_between(const int32_t *x, const int32_t *y, int n) {
  for (int k = 0; k < n; k++)
    if (x[k] != y[k]) return x[k] < y[k] ? -1 : 1;
  return 0;
}

/* Sorted start positions of the n-grams of tok[len]: *count of them. */
static int64_t *sorted_grams(const int32_t *tok, int64_t len, int n, int64_t *count) {
  *count = len >= n ? len - n + 1 : 0;
  int64_t *pos = mc_malloc((size_t)(*count ? *count : 1) * sizeof(int64_t));
  for (int64_t i = 0; i < *count; i++)
    pos[i] = i;
  cmp_ctx = (Grams){tok, n};
  qsort(pos, (size_t)*count, sizeof(int64_t), cmp_gram);
  return pos;
}

void rt_bleu_add_ids(RtBleuStats *s, const int32_t *hyp, int64_t nhyp, const int32_t *ref,
                     int64_t nref) {
  s->hyp_len += nhyp;
  s->ref_len += nref;
  for (int n = 1; n <= 4; n++) {
    int64_t nh, nr;
    int64_t *ph = sorted_grams(hyp, nhyp, n, &nh), *pr = sorted_grams(ref, nref, n, &nr);
    s->total[n - 1] += nh;
    /* merge: for each distinct n-gram, min(count in hyp, count in ref) */
    int64_t i = 0, j = 0;
    while (i < nh && j < nr) {
      int c = cmp_between(hyp + ph[i], ref + pr[j], n);
      if (c < 0) {
        i++;
      } else if (c > 0) {
        j++;
      } else {
        int64_t ci = 0, cj = 0;
        const int32_t *g = hyp + ph[i];
        while (i < nh && !cmp_between(hyp + ph[i], g, n))
          i++, ci++;
        while (j < nr && !cmp_between(ref + pr[j], g, n))
          j++, cj++;
        s->matches[n - 1] += ci < cj ? ci : cj;
      }
    }
    mc_free(ph);
    mc_free(pr);
  }
}

/* ---------------------------------------------------------------- text */

/* One sentence pair's distinct words: open addressing over (start, length). */
typedef struct Vocab {
  const char **word;
  int *len;
  int n, cap;   /* words, capacity of word[] / len[] */
  int *slot;    /* ids + 1, 0 = empty */
  size_t nslot; /* a power of two, at least 2 * cap */
} Vocab;

static uint64_t hash_bytes(const char *w, int len) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < len; i++)
    h = (h ^ (unsigned char)w[i]) * 1099511628211ull;
  return h;
}

static int32_t intern(Vocab *v, const char *w, int len) {
  if (2 * (size_t)(v->n + 1) > v->nslot) { /* grow and rehash */
    size_t ns = v->nslot ? 2 * v->nslot : 128;
    int *slot = mc_calloc(ns, sizeof(int));
    for (int i = 0; i < v->n; i++) {
      size_t j = hash_bytes(v->word[i], v->len[i]) & (ns - 1);
      while (slot[j])
        j = (j + 1) & (ns - 1);
      slot[j] = i + 1;
    }
    mc_free(v->slot);
    v->slot = slot;
    v->nslot = ns;
  }
  size_t j = hash_bytes(w, len) & (v->nslot - 1);
  for (; v->slot[j]; j = (j + 1) & (v->nslot - 1)) {
    int i = v->slot[j] - 1;
    if (v->len[i] == len && !memcmp(v->word[i], w, (size_t)len)) return i;
  }
  if (v->n == v->cap) {
    v->cap = v->cap ? 2 * v->cap : 64;
    v->word = mc_realloc(v->word, (size_t)v->cap * sizeof *v->word);
    v->len = mc_realloc(v->len, (size_t)v->cap * sizeof *v->len);
  }
  v->word[v->n] = w;
  v->len[v->n] = len;
  v->slot[j] = v->n + 1;
  return v->n++;
}

/* Splits text on whitespace (as Perl's split) into ids; returns the count. */
static int64_t words(Vocab *v, const char *text, int32_t **ids) {
  int64_t n = 0, cap = 16;
  *ids = mc_malloc((size_t)cap * sizeof(int32_t));
  for (const char *p = text; *p;) {
    while (*p && isspace((unsigned char)*p))
      p++;
    if (!*p) break;
    const char *w = p;
    while (*p && !isspace((unsigned char)*p))
      p++;
    if (n == cap) *ids = mc_realloc(*ids, (size_t)(cap *= 2) * sizeof(int32_t));
    (*ids)[n++] = intern(v, w, (int)(p - w));
  }
  return n;
}

void rt_bleu_add(RtBleuStats *s, const char *hyp, const char *ref) {
  Vocab v = {0};
  int32_t *h, *r;
  int64_t nh = words(&v, hyp ? hyp : "", &h), nr = words(&v, ref ? ref : "", &r);
  rt_bleu_add_ids(s, h, nh, r, nr);
  mc_free(h);
  mc_free(r);
  mc_free(v.word);
  mc_free(v.len);
  mc_free(v.slot);
}

/* ---------------------------------------------------------------- the score */

static double script_log(double p) {
  return p > 0 ? log(p) : -9999999999.0;
}

RtBleu rt_bleu_score(const RtBleuStats *s) {
  RtBleu b = {0};
  b.hyp_len = s->hyp_len;
  b.ref_len = s->ref_len;
  for (int n = 0; n < 4; n++)
    b.precision[n] = s->total[n] ? (double)s->matches[n] / (double)s->total[n] : 0;
  if (s->ref_len == 0 || s->hyp_len == 0) return b; /* the script's 0 (or its division by 0) */
  b.ratio = (double)s->hyp_len / (double)s->ref_len;
  b.bp = s->hyp_len < s->ref_len ? exp(1 - (double)s->ref_len / (double)s->hyp_len) : 1;
  double l = 0;
  for (int n = 0; n < 4; n++)
    l += script_log(b.precision[n]);
  b.bleu = 100 * b.bp * exp(l / 4);
  return b;
}

void rt_bleu_format(const RtBleu *b, char *buf, size_t n) {
  snprintf(buf, n,
           "BLEU = %.2f, %.1f/%.1f/%.1f/%.1f (BP=%.3f, ratio=%.3f, hyp_len=%lld, ref_len=%lld)",
           b->bleu, 100 * b->precision[0], 100 * b->precision[1], 100 * b->precision[2],
           100 * b->precision[3], b->bp, b->ratio, (long long)b->hyp_len, (long long)b->ref_len);
}

/* ---------------------------------------------------------------- tokenizer */

static bool is_punct(unsigned char c) {
  return c < 0x80 && ispunct(c);
}

char *rt_bleu_tokenize(const char *text) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  bool pending_space = false;
  const unsigned char *p = (const unsigned char *)(text ? text : "");
  for (size_t i = 0; p[i]; i++) {
    unsigned char c = p[i];
    if (isspace(c)) {
      pending_space = b.len > 0;
      continue;
    }
    bool prev_digit = i > 0 && isdigit(p[i - 1]), next_digit = isdigit(p[i + 1]);
    bool prev_alpha = i > 0 && (isalpha(p[i - 1]) || p[i - 1] >= 0x80);
    bool next_alpha = isalpha(p[i + 1]) || p[i + 1] >= 0x80;
    bool glued = ((c == '.' || c == ',') && prev_digit && next_digit) ||
                 (c == '\'' && prev_alpha && next_alpha);
    if (is_punct(c) && !glued) {
      if (b.len > 0) mc_buf_putc(&b, ' ');
      mc_buf_putc(&b, (char)c);
      pending_space = true;
      continue;
    }
    if (pending_space) mc_buf_putc(&b, ' ');
    pending_space = false;
    mc_buf_putc(&b, (char)c);
  }
  char *out = mc_malloc(b.len + 1);
  memcpy(out, b.data, b.len + 1);
  mc_buf_free(&b);
  return out;
}
