/* tokenize.c: how a language model's text becomes ids, and back.
 *
 *   words                : whitespace-separated words (today's default)
 *   words(lower, split_punct): ASCII letters lower-cased; punctuation split off as its own
 *                          tokens the way BLEU's tokenizer does it (bleu.c): "Speak," ->
 *                          "Speak ,", but don't, 3.5 and 1,000 stay whole
 *   words(vocab=N, spell=chars): GNMT's mixed word/character model (Wu et al. 2016, 4.2):
 *                          a word outside the vocabulary is spelled as character pieces
 *                          <B>x <M>y ... <E>z (a one-character word: <B>x alone), so only
 *                          a word with a character the training text lacks is <unk>
 *   chars                : UTF-8 characters (an invalid byte is a token of its own)
 *   bpe(vocab=N)         : byte-pair encoding (bpe.c) learned from the training text: no
 *                          token is ever unknown
 *
 * Every line ends with a line-end token: "<eos>" (words, chars) or </s> (bpe). Words and
 * characters get a vocabulary of the most frequent tokens of the training text (ties: the
 * first seen), id 0 = <unk>; with spell=chars, the pieces of every character the training
 * words have at each place are kept first and the words fill the rest (ids: <unk>, the
 * words, the pieces). A tokenizer is stored in checkpoints as text
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

/* A spelled word's pieces are stored in the vocabulary as "<B> x", "<M> x", "<E> x": the
 * space keeps them apart from every word (words never hold whitespace). */
enum { PIECE_PREFIX = 4 };

struct RtTok {
  TokKind kind;
  bool lower, split_punct, spell;
  int vocab;    /* words(vocab=N): N, 0 when not given */
  char **words; /* words, chars: id -> token; 0 = <unk> */
  char *part;   /* spell: id -> 'B', 'M', 'E' for a piece, 0 for a word */
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

static void count_n(Counter *c, const char *p, int len, int64_t k) {
  Word *w = wt_find(&c->tab, p, len, false);
  if (!w) {
    char *own = mc_arena_alloc(&c->a, (size_t)len + 1);
    memcpy(own, p, (size_t)len);
    own[len] = 0;
    w = wt_find(&c->tab, own, len, true);
  }
  w->count += k;
}

static void count_token(void *ctx, const char *p, int len) {
  count_n(ctx, p, len, 1);
}

/* ---------------------------------------------------------------- spelling */

/* The vocabulary name of a word's character c[0, n) at character i of k: "<B> c" (the
 * first, or a one-character word's only one), "<E> c" (the last), "<M> c"; returns its
 * length (at most PIECE_PREFIX + 4). */
static int piece_name(char *out, const char *c, int n, int i, int k) {
  const char *pre = i == 0 ? "<B> " : i == k - 1 ? "<E> " : "<M> ";
  memcpy(out, pre, PIECE_PREFIX);
  memcpy(out + PIECE_PREFIX, c, (size_t)n);
  return PIECE_PREFIX + n;
}

/* Calls fn for each piece of word p[0, len) spelled out. */
static void spell(const char *p, int len, TokenFn fn, void *ctx) {
  int k = 0;
  for (int i = 0; i < len; i += utf8_len((const unsigned char *)p + i, (size_t)(len - i)))
    k++;
  char name[PIECE_PREFIX + 4];
  for (int i = 0, j = 0; i < len; j++) {
    int c = utf8_len((const unsigned char *)p + i, (size_t)(len - i));
    fn(ctx, name, piece_name(name, p + i, c, j, k));
    i += c;
  }
}

typedef struct PieceCount {
  Counter *c;
  int64_t k;
} PieceCount;

static void count_piece(void *ctx, const char *p, int len) {
  PieceCount *pc = ctx;
  count_n(pc->c, p, len, pc->k);
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

static bool is_piece(const char *w) {
  return strlen(w) > PIECE_PREFIX && w[0] == '<' && strchr("BME", w[1]) && !strncmp(w + 2, "> ", 2);
}

/* The lookup table of t->words; the line end's id; with spelling, which ids are pieces. */
static void index_words(RtTok *t) {
  mc_free(t->tab.w);
  mc_free(t->part);
  t->tab = (WordTab){0};
  t->part = t->spell ? mc_calloc((size_t)MC_MAX(t->nwords, 1), 1) : NULL;
  t->eos = -1;
  for (int i = 0; i < t->nwords; i++) {
    Word *w = wt_find(&t->tab, t->words[i], (int)strlen(t->words[i]), true);
    if (w->id < 0) w->id = i;
    if (!strcmp(t->words[i], "<eos>") && t->eos < 0) t->eos = i;
    if (t->spell && is_piece(t->words[i])) t->part[i] = t->words[i][1];
  }
}

/* A counter's entries, most frequent first (ties: the first counted), "<unk>" left out. */
static Word **sorted(const Counter *c, int64_t *n) {
  Word **all = mc_malloc((size_t)(c->tab.n + 1) * sizeof(Word *));
  *n = 0;
  for (int64_t i = 0; i < c->tab.cap; i++)
    if (c->tab.w[i].p && !(c->tab.w[i].len == 5 && !memcmp(c->tab.w[i].p, "<unk>", 5)))
      all[(*n)++] = &c->tab.w[i];
  qsort(all, (size_t)*n, sizeof(Word *), cmp_word);
  return all;
}

static bool is_eos(const Word *w) {
  return w->len == 5 && !memcmp(w->p, "<eos>", 5);
}

/* The most frequent tokens of text as t splits it, at most max_vocab ids with <unk>. With
 * spelling, the pieces of every training word come first out of max_vocab (all of them:
 * any word of the training text can be spelled), then the words, the line end always. */
static void learn_words(RtTok *t, const char *text, size_t len, int max_vocab) {
  Counter cn = {0}, pc = {0};
  each_token(t, text, len, count_token, &cn);
  int64_t n, np = 0;
  Word **all = sorted(&cn, &n), **pieces = NULL;
  int64_t keep = MC_MIN(n, (int64_t)max_vocab - 1);
  if (t->spell) {
    for (int64_t i = 0; i < n; i++)
      if (!is_eos(all[i]))
        spell(all[i]->p, all[i]->len, count_piece, &(PieceCount){&pc, all[i]->count});
    pieces = sorted(&pc, &np);
    keep = MC_MIN(n, (int64_t)max_vocab - 1 - np);
    if (keep < 1)
      mc_die("words(vocab=%d, spell=chars): the training words' characters take %lld ids "
             "(<B>, <M>, <E> pieces), leaving none for words and the line end: give a vocab= "
             "above %lld (or use bpe or chars)",
             max_vocab, (long long)np, (long long)np + 1);
    int64_t e = 0; /* the line end is kept (spelled it would be no line end) */
    while (e < n && !is_eos(all[e]))
      e++;
    if (e < n && e >= keep) all[keep - 1] = all[e];
  }
  t->nwords = (int)(1 + keep + np);
  t->words = mc_malloc((size_t)t->nwords * sizeof(char *));
  t->words[0] = dup_n("<unk>", 5);
  for (int64_t i = 0; i < keep; i++)
    t->words[1 + i] = dup_n(all[i]->p, (size_t)all[i]->len);
  for (int64_t i = 0; i < np; i++)
    t->words[1 + keep + i] = dup_n(pieces[i]->p, (size_t)pieces[i]->len);
  mc_free(all);
  mc_free(pieces);
  mc_free(cn.tab.w);
  mc_free(pc.tab.w);
  mc_arena_free(&cn.a);
  mc_arena_free(&pc.a);
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
  if (t->kind == TOK_WORDS) {
    t->spell = cfg->tok_spell;
    t->vocab = cfg->tok_vocab;
  }
  if (t->vocab > max_vocab)
    mc_die("words(vocab=%d): the model's vocabulary has %d ids", t->vocab, max_vocab);
  if (t->kind != TOK_BPE) {
    learn_words(t, text, len, t->vocab ? t->vocab : max_vocab);
    return t;
  }
  int32_t v = cfg->tok_vocab ? cfg->tok_vocab : (int32_t)MC_MIN(max_vocab, 65536);
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
  mc_free(t->part);
  mc_free(t->tab.w);
  rt_bpe_free(t->bpe);
  mc_free(t);
}

/* ---------------------------------------------------------------- encoding */

typedef struct Encoder {
  RtTok *t;
  int32_t *ids;
  int64_t n, cap;
  int64_t word0;  /* spelling: where the word's pieces start in ids */
  bool unspelled; /* spelling: a piece of the word is not in the vocabulary */
} Encoder;

static void push(Encoder *e, int32_t id) {
  if (e->n == e->cap) {
    e->cap = e->cap ? 2 * e->cap : 4096;
    e->ids = mc_realloc(e->ids, (size_t)e->cap * sizeof(int32_t));
  }
  e->ids[e->n++] = id;
}

static void encode_piece(void *ctx, const char *p, int len) {
  Encoder *e = ctx;
  Word *w = wt_find(&e->t->tab, p, len, false);
  if (w)
    push(e, w->id);
  else
    e->unspelled = true;
}

/* A word (never a piece: pieces hold a space); outside the vocabulary, spelled, or <unk>
 * when a character has no piece at its position. */
static void encode_token(void *ctx, const char *p, int len) {
  Encoder *e = ctx;
  Word *w = wt_find(&e->t->tab, p, len, false);
  if (w || !e->t->spell) {
    push(e, w ? w->id : 0);
    return;
  }
  e->word0 = e->n;
  e->unspelled = false;
  spell(p, len, encode_piece, e);
  if (e->unspelled) {
    e->n = e->word0;
    push(e, 0);
  }
}

int64_t rt_tok_encode(RtTok *t, const char *text, size_t len, int32_t **ids) {
  Encoder e = {.t = t};
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

char rt_tok_part(const RtTok *t, int32_t id) {
  return t->part && id >= 0 && id < t->nwords ? t->part[id] : 0;
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
  int skip = rt_tok_part(t, id) ? PIECE_PREFIX : 0;
  *len = (int)strlen(t->words[id]) - skip;
  return t->words[id] + skip;
}

void rt_tok_put(const RtTok *t, int32_t id, bool *line_start, McBuf *b) {
  int len;
  const char *s = rt_tok_piece(t, id, &len);
  char part = rt_tok_part(t, id);
  bool joins = part == 'M' || part == 'E'; /* the rest of a spelled word */
  if (t->kind == TOK_WORDS && !*line_start && id != t->eos && !joins) mc_buf_putc(b, ' ');
  for (int k = 0; k < len; k++)
    mc_buf_putc(b, s[k]);
  *line_start = id == t->eos;
}

char *rt_tok_decode(const RtTok *t, const int32_t *ids, int64_t n) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  bool line_start = true;
  for (int64_t i = 0; i < n; i++)
    rt_tok_put(t, ids[i], &line_start, &b);
  return b.data;
}

/* ---------------------------------------------------------------- checkpoints */

char *rt_tok_describe(const RtTok *t) {
  McBuf b = {0};
  if (t->kind == TOK_CHARS)
    mc_buf_printf(&b, "chars");
  else if (t->kind == TOK_BPE)
    mc_buf_printf(&b, "bpe(vocab=%d)", rt_bpe_vocab(t->bpe));
  else { /* the train block's own spelling of it, so that the two compare as strings */
    Config c = {.tokenizer = TOK_WORDS,
                .tok_lower = t->lower,
                .tok_split_punct = t->split_punct,
                .tok_spell = t->spell,
                .tok_vocab = t->vocab};
    char buf[160];
    mc_buf_printf(&b, "%s", fe_tokenizer_str(&c, buf, sizeof buf));
  }
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
    t->spell = strstr(desc, "spell=chars") != NULL;
    const char *v = strstr(desc, "vocab=");
    t->vocab = v ? atoi(v + 6) : 0;
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
