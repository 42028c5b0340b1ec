/* tokenize.c: how a language model's text becomes ids, and back.
 *
 *   words                : whitespace-separated words (today's default)
 *   words(lower, split_punct): ASCII letters lower-cased; punctuation split off as its own
 *                          tokens the way BLEU's tokenizer does it (bleu.c): "Speak," ->
 *                          "Speak ,", but don't, 3.5 and 1,000 stay whole
 *   chars                : UTF-8 characters (an invalid byte is a token of its own)
 *   bpe(vocab=N)         : byte-pair encoding (bpe.c) learned from the training text: no
 *                          token is ever unknown
 *
 * Every line ends with a line-end token: "<eos>" (words, chars) or </s> (bpe). Words and
 * characters get a vocabulary of the most frequent tokens of the training text (ties: the
 * first seen), id 0 = <unk>. A tokenizer is stored in checkpoints as text
 * (data.tokenizer, and data.vocab or data.bpe), so evaluation, scoring, sampling and
 * resumed runs map text the same way. docs/training.md, "Tokenizers". */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "run.h"
#include "text.h"

/* ---------------------------------------------------------------- the token table */

typedef struct Word {
  const char *p;
  int len;
  int64_t count, first;
  int id;
} Word;

typedef struct WordTab {
  Word *w;
  int64_t cap, n;
} WordTab;

static uint64_t word_hash(const char *p, int len) {
  uint64_t h = 1469598103934665603ull;
  for (int i = 0; i < len; i++)
    h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
  return h;
}

static Word *wt_find(WordTab *t, const char *p, int len, bool add) {
  if (add && 2 * (t->n + 1) > t->cap) {
    WordTab nt = {mc_calloc((size_t)(t->cap ? 2 * t->cap : 1024), sizeof(Word)),
                  t->cap ? 2 * t->cap : 1024, 0};
    for (int64_t i = 0; i < t->cap; i++)
      if (t->w[i].p) {
        uint64_t h = word_hash(t->w[i].p, t->w[i].len) & (uint64_t)(nt.cap - 1);
        while (nt.w[h].p)
          h = (h + 1) & (uint64_t)(nt.cap - 1);
        nt.w[h] = t->w[i];
        nt.n++;
      }
    mc_free(t->w);
    *t = nt;
  }
  if (!t->cap) return NULL;
  uint64_t h = word_hash(p, len) & (uint64_t)(t->cap - 1);
  while (t->w[h].p) {
    if (t->w[h].len == len && !memcmp(t->w[h].p, p, (size_t)len)) return &t->w[h];
    h = (h + 1) & (uint64_t)(t->cap - 1);
  }
  if (!add) return NULL;
  t->w[h] = (Word){p, len, 0, t->n, -1};
  t->n++;
  return &t->w[h];
}

/* ---------------------------------------------------------------- splitting text */

struct RtTok {
  TokKind kind;
  bool lower, split_punct;
  char **words; /* words, chars: id -> token; 0 = <unk> */
  int nwords;
  WordTab tab; /* token -> id */
  RtBpe *bpe;
  int32_t eos; /* the line end's id */
};

static bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/* The bytes of the UTF-8 character at p (1 for an invalid or truncated sequence). */
static int utf8_len(const unsigned char *p, size_t n) {
  int k = p[0] < 0x80             ? 1
          : (p[0] & 0xe0) == 0xc0 ? 2
          : (p[0] & 0xf0) == 0xe0 ? 3
          : (p[0] & 0xf8) == 0xf0 ? 4
                                  : 1;
  if ((size_t)k > n) return 1;
  for (int i = 1; i < k; i++)
    if ((p[i] & 0xc0) != 0x80) return 1;
  return k;
}

typedef void (*TokenFn)(void *ctx, const char *p, int len);

/* Calls fn for every word of a line (whitespace-separated, after lower-casing and
 * splitting punctuation as t asks). */
static void line_words(const RtTok *t, const char *line, size_t n, TokenFn fn, void *ctx) {
  char *own = NULL;
  if (t->lower || t->split_punct) {
    own = mc_malloc(n + 1);
    for (size_t i = 0; i < n; i++) /* a NUL byte would end the string: a space instead */
      own[i] = line[i] ? (t->lower ? (char)tolower((unsigned char)line[i]) : line[i]) : ' ';
    own[n] = 0;
    if (t->split_punct) {
      char *split = rt_bleu_tokenize(own);
      mc_free(own);
      own = split;
    }
    line = own;
    n = strlen(own);
  }
  size_t k = 0;
  while (k < n) {
    while (k < n && is_space(line[k]))
      k++;
    size_t e = k;
    while (e < n && !is_space(line[e]))
      e++;
    if (e > k) {
      if (e - k > 1000000) mc_die("a word of more than 1000000 bytes in the data file");
      fn(ctx, line + k, (int)(e - k));
    }
    k = e;
  }
  mc_free(own);
}

/* Calls fn for every token of text[0, len) as t splits it (words or characters), and
 * "<eos>" after each line. */
static void each_token(const RtTok *t, const char *text, size_t len, TokenFn fn, void *ctx) {
  size_t i = 0;
  while (i < len) {
    const char *nl = memchr(text + i, '\n', len - i);
    size_t j = nl ? (size_t)(nl - text) : len;
    if (t->kind == TOK_CHARS) {
      size_t end = j > i && text[j - 1] == '\r' ? j - 1 : j; /* CRLF: one line end */
      for (size_t k = i; k < end;) {
        int c = utf8_len((const unsigned char *)text + k, end - k);
        fn(ctx, text + k, c);
        k += (size_t)c;
      }
    } else {
      line_words(t, text + i, j - i, fn, ctx);
    }
    fn(ctx, "<eos>", 5);
    i = j + 1;
  }
}

/* ---------------------------------------------------------------- vocabularies */

/* Token counts; the tokens' bytes copied (a split line's are gone after the line). */
typedef struct Counter {
  WordTab tab;
  McArena a;
} Counter;

static void count_token(void *ctx, const char *p, int len) {
  Counter *c = ctx;
  Word *w = wt_find(&c->tab, p, len, false);
  if (!w) {
    char *own = mc_arena_alloc(&c->a, (size_t)len + 1);
    memcpy(own, p, (size_t)len);
    own[len] = 0;
    w = wt_find(&c->tab, own, len, true);
  }
  w->count++;
}

static int cmp_word(const void *a, const void *b) {
  const Word *x = *(Word *const *)a, *y = *(Word *const *)b;
  if (x->count != y->count) return x->count > y->count ? -1 : 1;
  return x->first < y->first ? -1 : x->first > y->first;
}

static char *dup_n(const char *p, size_t n) {
  char *s = mc_malloc(n + 1);
  memcpy(s, p, n);
  s[n] = 0;
  return s;
}

/* The lookup table of t->words; the line end's id. */
static void index_words(RtTok *t) {
  mc_free(t->tab.w);
  t->tab = (WordTab){0};
  t->eos = -1;
  for (int i = 0; i < t->nwords; i++) {
    Word *w = wt_find(&t->tab, t->words[i], (int)strlen(t->words[i]), true);
    if (w->id < 0) w->id = i;
    if (!strcmp(t->words[i], "<eos>") && t->eos < 0) t->eos = i;
  }
}

/* The most frequent tokens of text as t splits it, at most max_vocab ids with <unk>. */
static void learn_words(RtTok *t, const char *text, size_t len, int max_vocab) {
  Counter cn = {0};
  each_token(t, text, len, count_token, &cn);
  WordTab tab = cn.tab;
  Word **all = mc_malloc((size_t)(tab.n + 1) * sizeof(Word *));
  int64_t n = 0;
  for (int64_t i = 0; i < tab.cap; i++)
    if (tab.w[i].p && !(tab.w[i].len == 5 && !memcmp(tab.w[i].p, "<unk>", 5))) all[n++] = &tab.w[i];
  qsort(all, (size_t)n, sizeof(Word *), cmp_word);
  t->nwords = (int)MC_MIN(n + 1, (int64_t)max_vocab);
  t->words = mc_malloc((size_t)t->nwords * sizeof(char *));
  t->words[0] = dup_n("<unk>", 5);
  for (int i = 1; i < t->nwords; i++)
    t->words[i] = dup_n(all[i - 1]->p, (size_t)all[i - 1]->len);
  mc_free(all);
  mc_free(tab.w);
  mc_arena_free(&cn.a);
  index_words(t);
}

void rt_text_vocab(const char *text, size_t len, int max_vocab, char ***words, int *nwords) {
  RtTok t = {.kind = TOK_WORDS};
  learn_words(&t, text, len, max_vocab);
  *words = t.words;
  *nwords = t.nwords;
  mc_free(t.tab.w);
}

/* The lines of text as strings (a copy, cut at the line ends; a final \r dropped). */
static char **split_lines(const char *text, size_t len, int64_t *n, char **owned) {
  char *c = *owned = dup_n(text, len);
  int64_t cap = 1;
  for (size_t i = 0; i < len; i++)
    cap += c[i] == '\n';
  char **lines = mc_malloc((size_t)cap * sizeof(char *));
  *n = 0;
  for (size_t i = 0; i < len;) {
    char *nl = memchr(c + i, '\n', len - i);
    size_t j = nl ? (size_t)(nl - c) : len;
    c[j] = 0;
    if (j > i && c[j - 1] == '\r') c[j - 1] = 0;
    lines[(*n)++] = c + i;
    i = j + 1;
  }
  return lines;
}

RtTok *rt_tok_learn(const Config *cfg, int max_vocab, const char *text, size_t len) {
  RtTok *t = mc_calloc(1, sizeof(RtTok));
  t->kind = cfg->tokenizer;
  t->lower = cfg->tok_lower;
  t->split_punct = cfg->tok_split_punct;
  if (t->kind != TOK_BPE) {
    learn_words(t, text, len, max_vocab);
    return t;
  }
  int32_t v = cfg->bpe_vocab ? cfg->bpe_vocab : (int32_t)MC_MIN(max_vocab, 65536);
  if (v > max_vocab || v < RT_BPE_NBASE)
    mc_die("bpe(vocab=%d): the model's vocabulary has %d ids (a byte-pair encoding needs "
           "%d..%d)",
           v, max_vocab, RT_BPE_NBASE, max_vocab);
  char *owned;
  int64_t n;
  char **lines = split_lines(text, len, &n, &owned);
  t->bpe = rt_bpe_learn((const char *const *)lines, n, v);
  t->eos = RT_BPE_EOS;
  mc_free(lines);
  mc_free(owned);
  return t;
}

void rt_tok_free(RtTok *t) {
  if (!t) return;
  for (int i = 0; i < t->nwords; i++)
    mc_free(t->words[i]);
  mc_free(t->words);
  mc_free(t->tab.w);
  rt_bpe_free(t->bpe);
  mc_free(t);
}

/* ---------------------------------------------------------------- encoding */

typedef struct Encoder {
  RtTok *t;
  int32_t *ids;
  int64_t n, cap;
} Encoder;

static void push(Encoder *e, int32_t id) {
  if (e->n == e->cap) {
    e->cap = e->cap ? 2 * e->cap : 4096;
    e->ids = mc_realloc(e->ids, (size_t)e->cap * sizeof(int32_t));
  }
  e->ids[e->n++] = id;
}

static void encode_token(void *ctx, const char *p, int len) {
  Encoder *e = ctx;
  Word *w = wt_find(&e->t->tab, p, len, false);
  push(e, w ? w->id : 0);
}

int64_t rt_tok_encode(RtTok *t, const char *text, size_t len, int32_t **ids) {
  Encoder e = {t, NULL, 0, 0};
  if (t->kind != TOK_BPE) {
    each_token(t, text, len, encode_token, &e);
  } else {
    char *owned;
    int64_t n;
    char **lines = split_lines(text, len, &n, &owned);
    for (int64_t i = 0; i < n; i++) {
      int32_t *x;
      int64_t k = rt_bpe_encode(t->bpe, lines[i], &x);
      for (int64_t j = 0; j < k; j++)
        push(&e, x[j]);
      mc_free(x);
      push(&e, RT_BPE_EOS);
    }
    mc_free(lines);
    mc_free(owned);
  }
  *ids = e.ids ? e.ids : mc_malloc(sizeof(int32_t));
  return e.n;
}

static void count_one(void *ctx, const char *p, int len) {
  (void)p, (void)len;
  ++*(int64_t *)ctx;
}

int64_t rt_tok_count_words(const char *text, size_t len) {
  RtTok words = {.kind = TOK_WORDS};
  int64_t n = 0;
  each_token(&words, text, len, count_one, &n);
  return n;
}

/* ---------------------------------------------------------------- ids */

int32_t rt_tok_size(const RtTok *t) {
  return t->bpe ? rt_bpe_vocab(t->bpe) : t->nwords;
}

int32_t rt_tok_eos(const RtTok *t) {
  return t->eos;
}

TokKind rt_tok_kind(const RtTok *t) {
  return t->kind;
}

bool rt_tok_unknown(const RtTok *t, int32_t id) {
  return t->bpe ? false : id == 0;
}

bool rt_tok_special(const RtTok *t, int32_t id) {
  return t->bpe ? id == RT_BPE_PAD || id == RT_BPE_BOS : id == 0;
}

const char *rt_tok_piece(const RtTok *t, int32_t id, int *len) {
  if (id == t->eos) {
    *len = 1;
    return "\n";
  }
  if (t->bpe) {
    if (id < RT_BPE_BYTE0 || id >= rt_bpe_vocab(t->bpe)) {
      *len = 0;
      return "";
    }
    return rt_bpe_token(t->bpe, id, len);
  }
  if (id < 0 || id >= t->nwords) {
    *len = 0;
    return "";
  }
  *len = (int)strlen(t->words[id]);
  return t->words[id];
}

char *rt_tok_decode(const RtTok *t, const int32_t *ids, int64_t n) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  bool line_start = true;
  for (int64_t i = 0; i < n; i++) {
    int len;
    const char *s = rt_tok_piece(t, ids[i], &len);
    if (t->kind == TOK_WORDS && !line_start && ids[i] != t->eos) mc_buf_putc(&b, ' ');
    for (int k = 0; k < len; k++)
      mc_buf_putc(&b, s[k]);
    line_start = ids[i] == t->eos;
  }
  return b.data;
}

/* ---------------------------------------------------------------- checkpoints */

char *rt_tok_describe(const RtTok *t) {
  McBuf b = {0};
  if (t->kind == TOK_CHARS)
    mc_buf_printf(&b, "chars");
  else if (t->kind == TOK_BPE)
    mc_buf_printf(&b, "bpe(vocab=%d)", rt_bpe_vocab(t->bpe));
  else if (t->lower || t->split_punct)
    mc_buf_printf(&b, "words(lower=%s, split_punct=%s)", t->lower ? "true" : "false",
                  t->split_punct ? "true" : "false");
  else
    mc_buf_printf(&b, "words");
  return b.data;
}

char *rt_tok_serialize(const RtTok *t, const char **key) {
  if (t->bpe) {
    *key = "data.bpe";
    return rt_bpe_to_string(t->bpe);
  }
  *key = "data.vocab";
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  for (int i = 0; i < t->nwords; i++)
    mc_buf_printf(&b, "%s%s", i ? "\n" : "", t->words[i]);
  return b.data;
}

RtTok *rt_tok_words(const char *const *words, int n) {
  RtTok *t = mc_calloc(1, sizeof(RtTok));
  t->words = mc_malloc((size_t)MC_MAX(n, 1) * sizeof(char *));
  for (int i = 0; i < n; i++)
    t->words[i] = dup_n(words[i], strlen(words[i]));
  t->nwords = n;
  index_words(t);
  return t;
}

RtTok *rt_tok_from_ckpt(const StFile *f) {
  const char *desc = f ? rt_st_meta(f, "data.tokenizer") : NULL;
  const char *vocab = f ? rt_st_meta(f, "data.vocab") : NULL;
  const char *bpe = f ? rt_st_meta(f, "data.bpe") : NULL;
  if (!desc && !vocab) return NULL; /* no text corpus (or a checkpoint from elsewhere) */
  RtTok *t = mc_calloc(1, sizeof(RtTok));
  desc = desc ? desc : "words"; /* checkpoints from before tokenizers */
  if (!strncmp(desc, "bpe", 3)) {
    t->kind = TOK_BPE;
    char err[256];
    t->bpe = bpe ? rt_bpe_from_string(bpe, err, sizeof err) : NULL;
    if (!t->bpe)
      mc_die("checkpoint '%s': its byte-pair encoding (data.bpe) %s", f->path,
             bpe ? err : "is missing");
    t->eos = RT_BPE_EOS;
    return t;
  }
  if (!strcmp(desc, "chars"))
    t->kind = TOK_CHARS;
  else if (!strncmp(desc, "words", 5)) {
    t->kind = TOK_WORDS;
    t->lower = strstr(desc, "lower=true") != NULL;
    t->split_punct = strstr(desc, "split_punct=true") != NULL;
  } else {
    mc_die("checkpoint '%s': unknown tokenizer '%s' (data.tokenizer)", f->path, desc);
  }
  if (!vocab) mc_die("checkpoint '%s': its vocabulary (data.vocab) is missing", f->path);
  int cap = 1;
  for (const char *p = vocab; *p; p++)
    cap += *p == '\n';
  t->words = mc_malloc((size_t)cap * sizeof(char *));
  for (const char *p = vocab;;) {
    const char *e = strchr(p, '\n');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    t->words[t->nwords++] = dup_n(p, n);
    if (!e) break;
    p = e + 1;
  }
  index_words(t);
  return t;
}
