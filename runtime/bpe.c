/* bpe.c: byte-pair encoding, the subword vocabulary shared by language and translation
 * models (Sennrich et al. 2016, over bytes as GPT-2 does, so every input round-trips and
 * no id is unknown).
 *
 * Ids: 0 <pad>, 1 <s>, 2 </s>, 3..258 the 256 bytes, then one id per merge in the order
 * learned (merge i makes id 259 + i from two earlier ids). A line is split into
 * pre-tokens: a maximal run of letters (ASCII letters and every byte >= 0x80, so UTF-8
 * characters stay whole), of digits, or of other visible ASCII characters, each with the
 * space before it when whitespace precedes it (not at the line's start). Merges never
 * cross pre-tokens. Decoding concatenates the tokens' bytes, so decode(encode(line)) is
 * the line with each run of whitespace made one space and its ends trimmed.
 *
 * Learning: count the distinct pre-tokens, then repeatedly merge the most frequent
 * adjacent pair (ties: the smaller (left id, right id)), until the vocabulary has the
 * size asked for or no pair occurs twice. UTF-8: a merge whose token would start inside
 * a character, or end inside one without being just that character's first bytes, is
 * never made (utf8_token_ok), so the tokens of valid UTF-8 text are whole characters. Pair counts
 * are updated incrementally, only in the words that hold the merged pair (posting lists), and the
 * best pair comes from a max-heap with lazy deletion: the en-fr corpus (19.5k pairs) learns 8k ids
 * in well under a second. Deterministic: no dependence on hash order or threads.
 *
 * Encoding a pre-token applies its merges lowest rank first (the rank of a pair is when
 * it was learned), as learning did; results are cached per pre-token. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "../common/common.h"
#include "text.h"

/* ---------------------------------------------------------------- hashing */

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  return x ^ (x >> 33);
}

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return mix64(h ^ n);
}

/* A string's key in a U64Map and, on a (rare) 64-bit collision with another string, the
 * next one to try: every string settles on its own key, found again the same way. */
static uint64_t first_key(const char *s, size_t n) {
  uint64_t h = hash_bytes(s, n);
  return h == ~(uint64_t)0 ? 0 : h;
}
static uint64_t next_key(uint64_t h) {
  uint64_t k = mix64(h + 1);
  return k == ~(uint64_t)0 ? 0 : k;
}

static uint64_t pair_key(int32_t a, int32_t b) {
  return (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
}

/* An open-addressing map from a uint64 key (never ~0) to an int64 value. */
typedef struct U64Map {
  uint64_t *key;
  int64_t *val;
  size_t cap, n; /* cap: a power of two */
} U64Map;

#define MAP_EMPTY (~(uint64_t)0)

static void map_grow(U64Map *m) {
  size_t nc = m->cap ? 2 * m->cap : 1024;
  uint64_t *k = mc_malloc(nc * sizeof *k);
  int64_t *v = mc_malloc(nc * sizeof *v);
  for (size_t i = 0; i < nc; i++)
    k[i] = MAP_EMPTY;
  for (size_t i = 0; i < m->cap; i++) {
    if (m->key[i] == MAP_EMPTY) continue;
    size_t j = mix64(m->key[i]) & (nc - 1);
    while (k[j] != MAP_EMPTY)
      j = (j + 1) & (nc - 1);
    k[j] = m->key[i];
    v[j] = m->val[i];
  }
  mc_free(m->key);
  mc_free(m->val);
  m->key = k;
  m->val = v;
  m->cap = nc;
}

/* The value slot of key, inserted with value `init` when absent. */
static int64_t *map_slot(U64Map *m, uint64_t key, int64_t init) {
  if (2 * (m->n + 1) > m->cap) map_grow(m);
  size_t j = mix64(key) & (m->cap - 1);
  while (m->key[j] != MAP_EMPTY && m->key[j] != key)
    j = (j + 1) & (m->cap - 1);
  if (m->key[j] == MAP_EMPTY) {
    m->key[j] = key;
    m->val[j] = init;
    m->n++;
  }
  return &m->val[j];
}

static const int64_t *map_find(const U64Map *m, uint64_t key) {
  if (!m->cap) return NULL;
  size_t j = mix64(key) & (m->cap - 1);
  for (; m->key[j] != MAP_EMPTY; j = (j + 1) & (m->cap - 1))
    if (m->key[j] == key) return &m->val[j];
  return NULL;
}

static void map_free(U64Map *m) {
  mc_free(m->key);
  mc_free(m->val);
  *m = (U64Map){0};
}

/* ---------------------------------------------------------------- the model */

/* A cached encoding: the pre-token's bytes and its ids. */
typedef struct CacheEntry {
  char *text;
  size_t len;
  int32_t *ids;
  int64_t nids;
} CacheEntry;

struct RtBpe {
  int32_t nmerges;
  int32_t *merges; /* [nmerges, 2]: merge i joins merges[2i], merges[2i+1] -> 259 + i */
  U64Map rank;     /* pair_key(a, b) -> merge index */
  char **tok;      /* bytes of every id (specials: their names) */
  int *toklen;
  U64Map cache; /* hash of a pre-token -> index into entries + 1 (chained by probing) */
  CacheEntry *entries;
  int64_t nentries, entcap;
};

static const char *const special_names[RT_BPE_NBASE - 256] = {"<pad>", "<s>", "</s>"};

/* Builds tok[] and rank from the merges; NULL after an error (message in err). */
static RtBpe *bpe_build(int32_t *merges, int32_t nmerges, char *err, size_t errn) {
  RtBpe *b = mc_calloc(1, sizeof *b);
  b->merges = merges;
  b->nmerges = nmerges;
  int32_t V = RT_BPE_NBASE + nmerges;
  b->tok = mc_calloc((size_t)V, sizeof *b->tok);
  b->toklen = mc_calloc((size_t)V, sizeof *b->toklen);
  for (int i = 0; i < RT_BPE_BYTE0; i++) {
    b->toklen[i] = (int)strlen(special_names[i]);
    b->tok[i] = mc_malloc((size_t)b->toklen[i] + 1);
    memcpy(b->tok[i], special_names[i], (size_t)b->toklen[i] + 1);
  }
  for (int c = 0; c < 256; c++) {
    b->tok[RT_BPE_BYTE0 + c] = mc_malloc(2);
    b->tok[RT_BPE_BYTE0 + c][0] = (char)c;
    b->tok[RT_BPE_BYTE0 + c][1] = 0;
    b->toklen[RT_BPE_BYTE0 + c] = 1;
  }
  for (int32_t i = 0; i < nmerges; i++) {
    int32_t x = merges[2 * i], y = merges[2 * i + 1], z = RT_BPE_NBASE + i;
    if (x < RT_BPE_BYTE0 || y < RT_BPE_BYTE0 || x >= z || y >= z) {
      snprintf(err, errn,
               "merge %d joins ids %d and %d: each must be a byte or an earlier merge "
               "(%d..%d)",
               (int)i, (int)x, (int)y, RT_BPE_BYTE0, (int)z - 1);
      b->nmerges = i; /* what is built so far is freed */
      rt_bpe_free(b);
      return NULL;
    }
    int64_t *r = map_slot(&b->rank, pair_key(x, y), -1);
    if (*r >= 0) {
      snprintf(err, errn, "merge %d repeats merge %lld (%d %d)", (int)i, (long long)*r, (int)x,
               (int)y);
      b->nmerges = i;
      rt_bpe_free(b);
      return NULL;
    }
    *r = i;
    b->toklen[z] = b->toklen[x] + b->toklen[y];
    b->tok[z] = mc_malloc((size_t)b->toklen[z] + 1);
    memcpy(b->tok[z], b->tok[x], (size_t)b->toklen[x]);
    memcpy(b->tok[z] + b->toklen[x], b->tok[y], (size_t)b->toklen[y] + 1);
  }
  return b;
}

void rt_bpe_free(RtBpe *b) {
  if (!b) return;
  int32_t V = RT_BPE_NBASE + b->nmerges;
  for (int32_t i = 0; i < V; i++)
    mc_free(b->tok[i]);
  mc_free(b->tok);
  mc_free(b->toklen);
  mc_free(b->merges);
  map_free(&b->rank);
  map_free(&b->cache);
  for (int64_t i = 0; i < b->nentries; i++) {
    mc_free(b->entries[i].text);
    mc_free(b->entries[i].ids);
  }
  mc_free(b->entries);
  mc_free(b);
}

int32_t rt_bpe_vocab(const RtBpe *b) {
  return RT_BPE_NBASE + b->nmerges;
}

const char *rt_bpe_token(const RtBpe *b, int32_t id, int *len) {
  if (id < 0 || id >= rt_bpe_vocab(b)) {
    *len = 0;
    return "";
  }
  *len = b->toklen[id];
  return b->tok[id];
}

/* ---------------------------------------------------------------- pre-tokens */

enum { CL_SPACE, CL_LETTER, CL_DIGIT, CL_OTHER };

static int byte_class(unsigned char c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') return CL_SPACE;
  if (c >= 0x80 || isalpha(c)) return CL_LETTER;
  if (isdigit(c)) return CL_DIGIT;
  return CL_OTHER;
}

/* Calls fn on every pre-token of text[0..n): its bytes, with the space before it (copied
 * into *scratch, of *cap bytes, only for a token that needs one). */
typedef void (*PretokFn)(const char *tok, size_t len, void *user);

static void pretokens(const char *text, size_t n, PretokFn fn, void *user, char **scratch,
                      size_t *cap) {
  size_t i = 0;
  bool space = false, any = false;
  while (i < n) {
    int cl = byte_class((unsigned char)text[i]);
    if (cl == CL_SPACE) {
      space = any;
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < n && byte_class((unsigned char)text[j]) == cl)
      j++;
    if (space) {
      if (j - i + 1 > *cap) {
        *cap = 2 * (j - i + 1);
        *scratch = mc_realloc(*scratch, *cap);
      }
      (*scratch)[0] = ' ';
      memcpy(*scratch + 1, text + i, j - i);
      fn(*scratch, j - i + 1, user);
    } else {
      fn(text + i, j - i, user);
    }
    space = false;
    any = true;
    i = j;
  }
}

/* ---------------------------------------------------------------- learning */

/* A token may not start inside a UTF-8 character, and may end inside one only when it is
 * nothing but that character's first bytes (a step towards the whole character). Bytes
 * that are not UTF-8 count as characters of one byte. */
static bool utf8_token_ok(const unsigned char *t, int n) {
  if (n == 0 || (t[0] & 0xC0) == 0x80) return n == 0;
  int i = n - 1;
  while (i > 0 && (t[i] & 0xC0) == 0x80)
    i--;
  int need = (t[i] & 0xE0) == 0xC0 ? 2 : (t[i] & 0xF0) == 0xE0 ? 3 : (t[i] & 0xF8) == 0xF0 ? 4 : 1;
  return n - i >= need || i == 0;
}

typedef struct Word {
  int32_t *sym;
  int32_t len;
  int64_t freq;
  int64_t stamp; /* the merge that last rewrote it (dedupes posting lists) */
} Word;

typedef struct Learner {
  Word *w;
  int64_t nw, wcap;
  U64Map index; /* pre-token hash -> word index + 1 ... chained: see find_word */
  /* pairs */
  U64Map pid;     /* pair_key -> pair index */
  int64_t *count; /* per pair */
  int32_t **post; /* per pair: the words that held it (may repeat or be stale) */
  int64_t *npost, *pcap;
  uint64_t *pkey; /* per pair: its key */
  int64_t np, pcap_all;
  /* heap of (count, pair index), max count first, then smaller key */
  int64_t *hc, *hp;
  int64_t nh, hcap;
  bool *banned; /* per pair: its token would split a UTF-8 character */
  char **tb;
  int *tl;       /* every id's bytes (base bytes and merges so far) */
  McArena arena; /* the pre-tokens' and tokens' bytes */
  const char **wtext;
  size_t *wlen; /* per word: its bytes (for lookups while counting) */
} Learner;

static bool heap_less(const Learner *L, int64_t i, int64_t j) { /* i below j */
  if (L->hc[i] != L->hc[j]) return L->hc[i] < L->hc[j];
  return L->pkey[L->hp[i]] > L->pkey[L->hp[j]];
}

static void heap_swap(Learner *L, int64_t i, int64_t j) {
  int64_t c = L->hc[i], p = L->hp[i];
  L->hc[i] = L->hc[j];
  L->hp[i] = L->hp[j];
  L->hc[j] = c;
  L->hp[j] = p;
}

static void heap_push(Learner *L, int64_t count, int64_t pair) {
  if (L->nh == L->hcap) {
    L->hcap = L->hcap ? 2 * L->hcap : 4096;
    L->hc = mc_realloc(L->hc, (size_t)L->hcap * sizeof *L->hc);
    L->hp = mc_realloc(L->hp, (size_t)L->hcap * sizeof *L->hp);
  }
  int64_t i = L->nh++;
  L->hc[i] = count;
  L->hp[i] = pair;
  while (i > 0 && heap_less(L, (i - 1) / 2, i)) {
    heap_swap(L, i, (i - 1) / 2);
    i = (i - 1) / 2;
  }
}

static void heap_pop(Learner *L) {
  heap_swap(L, 0, --L->nh);
  int64_t i = 0;
  for (;;) {
    int64_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < L->nh && heap_less(L, m, l)) m = l;
    if (r < L->nh && heap_less(L, m, r)) m = r;
    if (m == i) break;
    heap_swap(L, i, m);
    i = m;
  }
}

/* Whether the token a + b may exist (utf8_token_ok of its bytes). */
static bool pair_ok(const Learner *L, int32_t a, int32_t b) {
  unsigned char buf[64];
  int n = L->tl[a] + L->tl[b];
  unsigned char *t = n <= (int)sizeof buf ? buf : mc_malloc((size_t)n);
  memcpy(t, L->tb[a], (size_t)L->tl[a]);
  memcpy(t + L->tl[a], L->tb[b], (size_t)L->tl[b]);
  bool ok = utf8_token_ok(t, n);
  if (t != buf) mc_free(t);
  return ok;
}

static int64_t pair_index(Learner *L, int32_t a, int32_t b) {
  uint64_t key = pair_key(a, b);
  int64_t *slot = map_slot(&L->pid, key, -1);
  if (*slot >= 0) return *slot;
  if (L->np == L->pcap_all) {
    L->pcap_all = L->pcap_all ? 2 * L->pcap_all : 4096;
    size_t n = (size_t)L->pcap_all;
    L->count = mc_realloc(L->count, n * sizeof *L->count);
    L->post = mc_realloc(L->post, n * sizeof *L->post);
    L->npost = mc_realloc(L->npost, n * sizeof *L->npost);
    L->pcap = mc_realloc(L->pcap, n * sizeof *L->pcap);
    L->pkey = mc_realloc(L->pkey, n * sizeof *L->pkey);
    L->banned = mc_realloc(L->banned, n * sizeof *L->banned);
  }
  int64_t p = L->np++;
  L->count[p] = 0;
  L->post[p] = NULL;
  L->npost[p] = L->pcap[p] = 0;
  L->pkey[p] = key;
  L->banned[p] = !pair_ok(L, a, b);
  *slot = p;
  return p;
}

static void post_add(Learner *L, int64_t p, int32_t w) {
  if (L->npost[p] && L->post[p][L->npost[p] - 1] == w) return;
  if (L->npost[p] == L->pcap[p]) {
    L->pcap[p] = L->pcap[p] ? 2 * L->pcap[p] : 4;
    L->post[p] = mc_realloc(L->post[p], (size_t)L->pcap[p] * sizeof(int32_t));
  }
  L->post[p][L->npost[p]++] = w;
}

/* Adds (sign +1) or removes (-1) a word's pairs from the counts; new counts go on the
 * heap, and with +1 the word joins each pair's posting list. */
static void word_pairs(Learner *L, int32_t wi, int sign) {
  Word *w = &L->w[wi];
  for (int32_t i = 0; i + 1 < w->len; i++) {
    int64_t p = pair_index(L, w->sym[i], w->sym[i + 1]);
    L->count[p] += sign * w->freq;
    if (sign > 0 && !L->banned[p]) {
      post_add(L, p, wi);
      heap_push(L, L->count[p], p);
    }
  }
}

typedef struct CountCtx {
  Learner *L;
} CountCtx;

/* Counts one pre-token: a new word, or one more of an existing one. */
static void count_pretoken(const char *tok, size_t len, void *user) {
  Learner *L = ((CountCtx *)user)->L;
  for (uint64_t h = first_key(tok, len);; h = next_key(h)) {
    int64_t *slot = map_slot(&L->index, h, -1);
    if (*slot < 0) {
      if (L->nw == L->wcap) {
        L->wcap = L->wcap ? 2 * L->wcap : 4096;
        L->w = mc_realloc(L->w, (size_t)L->wcap * sizeof *L->w);
        L->wtext = mc_realloc(L->wtext, (size_t)L->wcap * sizeof *L->wtext);
        L->wlen = mc_realloc(L->wlen, (size_t)L->wcap * sizeof *L->wlen);
      }
      char *copy = mc_arena_alloc(&L->arena, len + 1);
      memcpy(copy, tok, len);
      Word *w = &L->w[L->nw];
      w->len = (int32_t)len;
      w->sym = mc_malloc(len * sizeof(int32_t));
      for (size_t k = 0; k < len; k++)
        w->sym[k] = RT_BPE_BYTE0 + (unsigned char)tok[k];
      w->freq = 1;
      w->stamp = -1;
      L->wtext[L->nw] = copy;
      L->wlen[L->nw] = len;
      *slot = L->nw++;
      return;
    }
    if (L->wlen[*slot] == len && !memcmp(L->wtext[*slot], tok, len)) {
      L->w[*slot].freq++;
      return;
    }
  }
}

/* Rewrites every a,b in word wi (left to right) as z. */
static void merge_word(Word *w, int32_t a, int32_t b, int32_t z) {
  int32_t o = 0;
  for (int32_t i = 0; i < w->len; i++) {
    if (i + 1 < w->len && w->sym[i] == a && w->sym[i + 1] == b) {
      w->sym[o++] = z;
      i++;
    } else {
      w->sym[o++] = w->sym[i];
    }
  }
  w->len = o;
}

RtBpe *rt_bpe_learn(const char *const *lines, int64_t nlines, int32_t vocab) {
  Learner L = {0};
  CountCtx cc = {&L};
  int32_t idcap = RT_BPE_NBASE + (vocab > RT_BPE_NBASE ? vocab - RT_BPE_NBASE : 0);
  L.tb = mc_calloc((size_t)idcap, sizeof *L.tb);
  L.tl = mc_calloc((size_t)idcap, sizeof *L.tl);
  for (int c = 0; c < 256; c++) {
    L.tb[RT_BPE_BYTE0 + c] = mc_arena_alloc(&L.arena, 1);
    L.tb[RT_BPE_BYTE0 + c][0] = (char)c;
    L.tl[RT_BPE_BYTE0 + c] = 1;
  }
  char *scratch = NULL;
  size_t cap = 0;
  for (int64_t i = 0; i < nlines; i++)
    if (lines[i]) pretokens(lines[i], strlen(lines[i]), count_pretoken, &cc, &scratch, &cap);
  mc_free(scratch);
  for (int32_t wi = 0; wi < L.nw; wi++)
    word_pairs(&L, wi, +1);
  int32_t target = vocab - RT_BPE_NBASE, nm = 0, mcap = 64;
  int32_t *merges = mc_malloc((size_t)mcap * 2 * sizeof(int32_t));
  while (nm < target && L.nh > 0) {
    int64_t c = L.hc[0], p = L.hp[0];
    heap_pop(&L);
    if (c != L.count[p]) { /* stale: its count fell since */
      if (L.count[p] > 0 && c > L.count[p]) heap_push(&L, L.count[p], p);
      continue;
    }
    if (c < 2) break; /* merging a pair seen once gains nothing */
    int32_t a = (int32_t)(L.pkey[p] >> 32), b = (int32_t)(uint32_t)L.pkey[p];
    int32_t z = RT_BPE_NBASE + nm;
    if (nm == mcap) merges = mc_realloc(merges, (size_t)(mcap *= 2) * 2 * sizeof(int32_t));
    merges[2 * nm] = a;
    merges[2 * nm + 1] = b;
    L.tl[z] = L.tl[a] + L.tl[b];
    L.tb[z] = mc_arena_alloc(&L.arena, (size_t)L.tl[z]);
    memcpy(L.tb[z], L.tb[a], (size_t)L.tl[a]);
    memcpy(L.tb[z] + L.tl[a], L.tb[b], (size_t)L.tl[b]);
    /* the posting list may grow while we walk it (new pairs of these words): take a copy */
    int64_t np = L.npost[p];
    int32_t *ws = mc_malloc((size_t)(np ? np : 1) * sizeof(int32_t));
    memcpy(ws, L.post[p], (size_t)np * sizeof(int32_t));
    for (int64_t k = 0; k < np; k++) {
      Word *w = &L.w[ws[k]];
      if (w->stamp == nm) continue;
      w->stamp = nm;
      bool has = false;
      for (int32_t i = 0; i + 1 < w->len && !has; i++)
        has = w->sym[i] == a && w->sym[i + 1] == b;
      if (!has) continue;
      word_pairs(&L, ws[k], -1);
      merge_word(w, a, b, z);
      word_pairs(&L, ws[k], +1);
    }
    mc_free(ws);
    nm++;
  }
  for (int64_t i = 0; i < L.nw; i++)
    mc_free(L.w[i].sym);
  for (int64_t p = 0; p < L.np; p++)
    mc_free(L.post[p]);
  mc_free(L.w);
  mc_free(L.wtext);
  mc_free(L.wlen);
  map_free(&L.index);
  map_free(&L.pid);
  mc_free(L.count);
  mc_free(L.post);
  mc_free(L.npost);
  mc_free(L.pcap);
  mc_free(L.pkey);
  mc_free(L.banned);
  mc_free(L.tb);
  mc_free(L.tl);
  mc_free(L.hc);
  mc_free(L.hp);
  mc_arena_free(&L.arena);
  char err[160];
  RtBpe *bp = bpe_build(merges, nm, err, sizeof err);
  MOEC_ASSERT(bp != NULL); /* learned merges are valid by construction */
  return bp;
}

/* ---------------------------------------------------------------- encoding */

/* ids of one pre-token: its bytes, then the lowest-ranked adjacent pair merged until none
 * has a rank (O(len^2); pre-tokens are short, and cached). */
static int64_t encode_pretoken(const RtBpe *b, const char *tok, size_t len, int32_t **out) {
  int32_t *s = mc_malloc((len ? len : 1) * sizeof(int32_t));
  int64_t n = (int64_t)len;
  for (size_t k = 0; k < len; k++)
    s[k] = RT_BPE_BYTE0 + (unsigned char)tok[k];
  for (;;) {
    int64_t best = -1, at = -1;
    for (int64_t i = 0; i + 1 < n; i++) {
      const int64_t *r = map_find(&b->rank, pair_key(s[i], s[i + 1]));
      if (r && (best < 0 || *r < best)) {
        best = *r;
        at = i;
      }
    }
    if (best < 0) break;
    s[at] = RT_BPE_NBASE + (int32_t)best;
    memmove(s + at + 1, s + at + 2, (size_t)(n - at - 2) * sizeof(int32_t));
    n--;
  }
  *out = s;
  return n;
}

typedef struct EncCtx {
  RtBpe *b;
  int32_t *ids;
  int64_t n, cap;
} EncCtx;

static void encode_one(const char *tok, size_t len, void *user) {
  EncCtx *e = user;
  RtBpe *b = e->b;
  const CacheEntry *ce = NULL;
  for (uint64_t h = first_key(tok, len);; h = next_key(h)) {
    int64_t *slot = map_slot(&b->cache, h, -1);
    if (*slot < 0) { /* not cached: encode it and remember */
      if (b->nentries == b->entcap) {
        b->entcap = b->entcap ? 2 * b->entcap : 1024;
        b->entries = mc_realloc(b->entries, (size_t)b->entcap * sizeof *b->entries);
      }
      CacheEntry *ne = &b->entries[b->nentries];
      ne->text = mc_malloc(len + 1);
      memcpy(ne->text, tok, len);
      ne->text[len] = 0;
      ne->len = len;
      ne->nids = encode_pretoken(b, tok, len, &ne->ids);
      *slot = b->nentries++;
      ce = ne;
      break;
    }
    const CacheEntry *c = &b->entries[*slot];
    if (c->len == len && !memcmp(c->text, tok, len)) {
      ce = c;
      break;
    }
  }
  if (e->n + ce->nids > e->cap) {
    while (e->n + ce->nids > e->cap)
      e->cap = e->cap ? 2 * e->cap : 64;
    e->ids = mc_realloc(e->ids, (size_t)e->cap * sizeof(int32_t));
  }
  memcpy(e->ids + e->n, ce->ids, (size_t)ce->nids * sizeof(int32_t));
  e->n += ce->nids;
}

int64_t rt_bpe_encode(RtBpe *b, const char *text, int32_t **out) {
  EncCtx e = {b, NULL, 0, 0};
  char *scratch = NULL;
  size_t cap = 0;
  if (text) pretokens(text, strlen(text), encode_one, &e, &scratch, &cap);
  mc_free(scratch);
  if (!e.ids) e.ids = mc_malloc(sizeof(int32_t));
  *out = e.ids;
  return e.n;
}

char *rt_bpe_decode(const RtBpe *b, const int32_t *ids, int64_t n) {
  size_t len = 0;
  int32_t V = rt_bpe_vocab(b);
  for (int64_t i = 0; i < n; i++)
    if (ids[i] >= RT_BPE_BYTE0 && ids[i] < V) len += (size_t)b->toklen[ids[i]];
  char *s = mc_malloc(len + 1), *p = s;
  for (int64_t i = 0; i < n; i++)
    if (ids[i] >= RT_BPE_BYTE0 && ids[i] < V) {
      memcpy(p, b->tok[ids[i]], (size_t)b->toklen[ids[i]]);
      p += b->toklen[ids[i]];
    }
  *p = 0;
  return s;
}

/* ---------------------------------------------------------------- serialisation */

const int32_t *rt_bpe_merges(const RtBpe *b, int32_t *n) {
  *n = b->nmerges;
  return b->merges;
}

RtBpe *rt_bpe_from_merges(const int32_t *pairs, int32_t n, char *err, size_t errn) {
  if (n < 0) {
    snprintf(err, errn, "a negative number of merges (%d)", (int)n);
    return NULL;
  }
  int32_t *m = mc_malloc((size_t)(n ? n : 1) * 2 * sizeof(int32_t));
  memcpy(m, pairs, (size_t)n * 2 * sizeof(int32_t));
  return bpe_build(m, n, err, errn);
}

char *rt_bpe_to_string(const RtBpe *b) {
  McBuf s = {0};
  mc_buf_printf(&s, "moec-bpe 1 %d\n", (int)b->nmerges);
  for (int32_t i = 0; i < b->nmerges; i++)
    mc_buf_printf(&s, "%d %d\n", (int)b->merges[2 * i], (int)b->merges[2 * i + 1]);
  char *out = mc_malloc(s.len + 1);
  memcpy(out, s.data, s.len + 1);
  mc_buf_free(&s);
  return out;
}

RtBpe *rt_bpe_from_string(const char *text, char *err, size_t errn) {
  int version = 0, n = 0, used = 0;
  if (!text || sscanf(text, "moec-bpe %d %d%n", &version, &n, &used) != 2 || version != 1 ||
      n < 0) {
    snprintf(err, errn, "not a moec BPE vocabulary (it starts 'moec-bpe 1 MERGES')");
    return NULL;
  }
  int32_t *m = mc_malloc((size_t)(n ? n : 1) * 2 * sizeof(int32_t));
  const char *p = text + used;
  for (int32_t i = 0; i < n; i++) {
    char *end;
    long x = strtol(p, &end, 10);
    if (end == p) goto short_;
    p = end;
    long y = strtol(p, &end, 10);
    if (end == p) goto short_;
    p = end;
    if (x < 0 || y < 0 || x > INT32_MAX || y > INT32_MAX) {
      snprintf(err, errn, "merge %d: ids out of range", (int)i);
      mc_free(m);
      return NULL;
    }
    m[2 * i] = (int32_t)x;
    m[2 * i + 1] = (int32_t)y;
  }
  return bpe_build(m, n, err, errn);
short_:
  snprintf(err, errn, "the vocabulary ends before its %d merges", n);
  mc_free(m);
  return NULL;
}
