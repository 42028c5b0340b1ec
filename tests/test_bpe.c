/* test_bpe.c: the byte-pair encoder (runtime/bpe.c): merges learned on a tiny corpus
 * worked out by hand, encoding with them, pre-tokens and spaces, round trips (any bytes,
 * UTF-8 French, invalid UTF-8), UTF-8 safety of the learned tokens, determinism, the
 * serialised forms and their errors; then the en-fr corpus (../shared/data, when
 * present): learning 8000 ids and encoding every line in about a second, every valid line
 * round-tripping. */
#include <string.h>
#include <time.h>

#include "../common/common.h"
#include "../runtime/text.h"
#include "test.h"

#define ID(c) (RT_BPE_BYTE0 + (unsigned char)(c))

static bool ids_eq(const int32_t *a, int64_t na, const int32_t *b, int64_t nb) {
  return na == nb && !memcmp(a, b, (size_t)na * sizeof(int32_t));
}

/* The corpus {"aaab", "aaab"}: one pre-token "aaab" seen twice, bytes a a a b.
 *   pairs: (a,a) twice per word -> 4, (a,b) -> 2: merge 0 = (a,a) -> 259; the word
 *          reads left to right as 259 a b
 *   pairs: (259,a) 2, (a,b) 2: a tie, the smaller pair (a,b) = (100,101) wins:
 *          merge 1 = (a,b) -> 260; the word is 259 260
 *   pairs: (259,260) 2: merge 2 -> 261; the word is one token, and nothing is left. */
static void t_tiny(void) {
  const char *lines[] = {"aaab", "aaab"};
  RtBpe *b = rt_bpe_learn(lines, 2, 1000);
  int32_t n;
  const int32_t *m = rt_bpe_merges(b, &n);
  const int32_t want[] = {ID('a'), ID('a'), ID('a'), ID('b'), 259, 260};
  CHECK(n == 3 && !memcmp(m, want, sizeof want));
  CHECK(rt_bpe_vocab(b) == 262);
  int32_t *ids;
  int64_t k = rt_bpe_encode(b, "aaab", &ids);
  CHECK(k == 1 && ids[0] == 261);
  mc_free(ids);
  /* unseen "aaaab": the lowest rank first, leftmost: (a,a) at 0, then (a,a) at 1 ->
   * 259 259 b; (259,259) and (259,b) have no merge */
  k = rt_bpe_encode(b, "aaaab", &ids);
  const int32_t w2[] = {259, 259, ID('b')};
  CHECK(ids_eq(ids, k, w2, 3));
  char *s = rt_bpe_decode(b, ids, k);
  CHECK(!strcmp(s, "aaaab"));
  mc_free(s);
  mc_free(ids);
  /* a space before a word belongs to its first pre-token: " aaab" has no merge with the
   * space, so ' ' then the word's merges; punctuation and digits are pre-tokens apart */
  k = rt_bpe_encode(b, "x  aaab!7", &ids);
  const int32_t w3[] = {ID('x'), ID(' '), 261, ID('!'), ID('7')};
  CHECK(ids_eq(ids, k, w3, 5));
  s = rt_bpe_decode(b, ids, k);
  CHECK(!strcmp(s, "x aaab!7")); /* whitespace runs become one space */
  mc_free(s);
  mc_free(ids);
  rt_bpe_free(b);
  /* a smaller vocabulary stops early: 260 ids = the first merge only */
  b = rt_bpe_learn(lines, 2, 260);
  CHECK(rt_bpe_vocab(b) == 260);
  rt_bpe_free(b);
}

/* decode(encode(t)) = t with whitespace runs made one space and the ends trimmed, for
 * any bytes, with merges learned from other text */
static void t_round_trip(void) {
  const char *train[] = {"le chat est sur le tapis",
                         "l'\xc3\xa9l\xc3\xa8ve \xc3\xa0 l'\xc3\xa9"
                         "cole",
                         "the cat sat on the mat",
                         "\xe2\x80\x9cquoted\xe2\x80\x9d text \xe2\x80\x99s"};
  RtBpe *b = rt_bpe_learn(train, 4, 400);
  struct {
    const char *in, *want;
  } cases[] = {
      {"le chat", "le chat"},
      {"  \t l'\xc3\xa9l\xc3\xa8ve   \xc3\xa0 l'\xc3\xa9"
       "cole  ",
       "l'\xc3\xa9l\xc3\xa8ve \xc3\xa0 l'\xc3\xa9"
       "cole"},
      {"unseen \xe6\x97\xa5\xe6\x9c\xac words", "unseen \xe6\x97\xa5\xe6\x9c\xac words"},
      {"\xff\xfe bad \xc3 utf8 \x80", "\xff\xfe bad \xc3 utf8 \x80"},
      {"", ""},
      {"   ", ""},
      {"a,b;c", "a,b;c"},
  };
  for (size_t i = 0; i < MC_ARRAY_LEN(cases); i++) {
    int32_t *ids;
    int64_t n = rt_bpe_encode(b, cases[i].in, &ids);
    for (int64_t j = 0; j < n; j++)
      CHECK(ids[j] >= RT_BPE_BYTE0 && ids[j] < rt_bpe_vocab(b));
    char *s = rt_bpe_decode(b, ids, n);
    CHECK(!strcmp(s, cases[i].want));
    if (strcmp(s, cases[i].want)) fprintf(stderr, "  round trip of case %zu: '%s'\n", i, s);
    mc_free(s);
    mc_free(ids);
  }
  /* specials and ids out of range decode to nothing */
  int32_t odd[] = {RT_BPE_BOS, ID('o'), RT_BPE_PAD, ID('k'), RT_BPE_EOS, 99999, -4};
  char *s = rt_bpe_decode(b, odd, 7);
  CHECK(!strcmp(s, "ok"));
  mc_free(s);
  rt_bpe_free(b);
}

/* Every learned token of UTF-8 text is whole characters or the first bytes of one. */
static bool utf8_whole_or_prefix(const char *t, int n) {
  const unsigned char *u = (const unsigned char *)t;
  if (n == 0 || (u[0] & 0xC0) == 0x80) return false;
  int i = n - 1;
  while (i > 0 && (u[i] & 0xC0) == 0x80)
    i--;
  int need = (u[i] & 0xE0) == 0xC0 ? 2 : (u[i] & 0xF0) == 0xE0 ? 3 : (u[i] & 0xF8) == 0xF0 ? 4 : 1;
  return n - i >= need || i == 0;
}

static void t_utf8(void) {
  /* many "é" after many different letters: a byte-level learner would happily merge
   * "x\xc3" (a letter and the first byte of é); this one may not */
  const char *lines[] = {"xé yé zé wé vé xé yé zé wé vé ééé ééé", "€€ €€ €x €y"};
  RtBpe *b = rt_bpe_learn(lines, 2, 300);
  CHECK(rt_bpe_vocab(b) > RT_BPE_NBASE);
  for (int32_t id = RT_BPE_NBASE; id < rt_bpe_vocab(b); id++) {
    int len;
    const char *t = rt_bpe_token(b, id, &len);
    CHECK(utf8_whole_or_prefix(t, len));
  }
  int32_t *ids;
  int64_t n = rt_bpe_encode(b, "xé ééé €y", &ids);
  for (int64_t j = 0; j < n; j++) { /* valid text: whole characters only */
    int len;
    const char *t = rt_bpe_token(b, ids[j], &len);
    bool whole = len > 0 && (((unsigned char)t[0] & 0xC0) != 0x80);
    char *one = rt_bpe_decode(b, &ids[j], 1);
    whole = whole && utf8_whole_or_prefix(one, (int)strlen(one));
    int k = len - 1;
    while (k > 0 && ((unsigned char)t[k] & 0xC0) == 0x80)
      k--;
    unsigned char lead = (unsigned char)t[k];
    int need = (lead & 0xE0) == 0xC0 ? 2 : (lead & 0xF0) == 0xE0 ? 3 : 1;
    CHECK(whole && len - k == need);
    mc_free(one);
  }
  char *s = rt_bpe_decode(b, ids, n);
  CHECK(!strcmp(s, "xé ééé €y"));
  mc_free(s);
  mc_free(ids);
  rt_bpe_free(b);
}

static void t_serialise(void) {
  const char *lines[] = {"the cat sat on the mat", "the cat is fat", "a mat is flat"};
  RtBpe *b = rt_bpe_learn(lines, 3, 300), *b2 = rt_bpe_learn(lines, 3, 300);
  char *s1 = rt_bpe_to_string(b), *s2 = rt_bpe_to_string(b2);
  CHECK(!strcmp(s1, s2)); /* deterministic */
  char err[200];
  RtBpe *c = rt_bpe_from_string(s1, err, sizeof err);
  CHECK(c && rt_bpe_vocab(c) == rt_bpe_vocab(b));
  int32_t n1, n2;
  const int32_t *m1 = rt_bpe_merges(b, &n1);
  RtBpe *d = rt_bpe_from_merges(m1, n1, err, sizeof err);
  const int32_t *m2 = rt_bpe_merges(d, &n2);
  CHECK(n1 == n2 && !memcmp(m1, m2, (size_t)n1 * 2 * sizeof(int32_t)));
  int32_t *i1, *i2;
  int64_t k1 = rt_bpe_encode(b, "the fat cat is on a flat mat", &i1);
  int64_t k2 = rt_bpe_encode(c, "the fat cat is on a flat mat", &i2);
  CHECK(ids_eq(i1, k1, i2, k2));
  mc_free(i1);
  mc_free(i2);
  /* errors: a message, no crash */
  const int32_t bad1[] = {ID('a'), 300};                       /* an id not made yet */
  const int32_t bad2[] = {0, ID('a')};                         /* a special in a merge */
  const int32_t bad3[] = {ID('a'), ID('b'), ID('a'), ID('b')}; /* twice */
  CHECK(!rt_bpe_from_merges(bad1, 1, err, sizeof err) && strstr(err, "earlier merge"));
  CHECK(!rt_bpe_from_merges(bad2, 1, err, sizeof err));
  CHECK(!rt_bpe_from_merges(bad3, 2, err, sizeof err) && strstr(err, "repeats"));
  CHECK(!rt_bpe_from_string("hello", err, sizeof err));
  CHECK(!rt_bpe_from_string("moec-bpe 1 3\n103 104\n", err, sizeof err) && strstr(err, "ends"));
  CHECK(!rt_bpe_from_string("moec-bpe 2 0\n", err, sizeof err));
  mc_free(s1);
  mc_free(s2);
  rt_bpe_free(b);
  rt_bpe_free(b2);
  rt_bpe_free(c);
  rt_bpe_free(d);
}

/* ---------------------------------------------------------------- en-fr */

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Splits a .tsv's text in place into its source and target lines. */
static int64_t tsv_lines(char *text, char ***out) {
  int64_t n = 0, cap = 1024;
  char **l = mc_malloc((size_t)cap * sizeof(char *));
  for (char *p = text; *p;) {
    char *nl = strchr(p, '\n');
    if (nl) *nl = 0;
    char *tab = strchr(p, '\t');
    if (tab) *tab = 0;
    if (n + 2 > cap) l = mc_realloc(l, (size_t)(cap *= 2) * sizeof(char *));
    l[n++] = p;
    if (tab) l[n++] = tab + 1;
    if (!nl) break;
    p = nl + 1;
  }
  *out = l;
  return n;
}

static char *normalised(const char *s) {
  McBuf b = {0};
  mc_buf_printf(&b, "%s", "");
  bool sp = false;
  for (const char *p = s; *p; p++) {
    if (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
      sp = b.len > 0;
      continue;
    }
    if (sp) mc_buf_putc(&b, ' ');
    sp = false;
    mc_buf_putc(&b, *p);
  }
  char *o = mc_malloc(b.len + 1);
  memcpy(o, b.data, b.len + 1);
  mc_buf_free(&b);
  return o;
}

static int t_en_fr(const char *dir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/en-fr/train.tsv", dir);
  size_t len;
  char *train = mc_read_file(path, &len);
  snprintf(path, sizeof path, "%s/en-fr/valid.tsv", dir);
  char *valid = mc_read_file(path, &len);
  if (!train || !valid) {
    printf("SKIP: %s/en-fr/{train,valid}.tsv not found (the shared data folder)\n", dir);
    mc_free(train);
    mc_free(valid);
    return 0;
  }
  char **tl, **vl;
  int64_t nt = tsv_lines(train, &tl), nv = tsv_lines(valid, &vl);
  double t0 = now();
  RtBpe *b = rt_bpe_learn((const char *const *)tl, nt, 8000);
  double t1 = now();
  int64_t tokens = 0, words = 0, broken = 0;
  for (int64_t i = 0; i < nt; i++) {
    int32_t *ids;
    tokens += rt_bpe_encode(b, tl[i], &ids);
    mc_free(ids);
  }
  double t2 = now();
  for (int64_t i = 0; i < nv; i++) {
    int32_t *ids;
    int64_t n = rt_bpe_encode(b, vl[i], &ids);
    char *s = rt_bpe_decode(b, ids, n), *want = normalised(vl[i]);
    CHECK(!strcmp(s, want));
    for (int64_t j = 0; j < n; j++) {
      int tl_;
      const char *t = rt_bpe_token(b, ids[j], &tl_);
      broken += ((unsigned char)t[0] & 0xC0) == 0x80 && ids[j] >= RT_BPE_NBASE;
    }
    for (char *p = want; *p; p++)
      words += *p == ' ';
    words++;
    mc_free(s);
    mc_free(want);
    mc_free(ids);
  }
  printf("en-fr: %lld lines, vocabulary %d learned in %.2f s, encoded in %.2f s (%.2f tokens "
         "per line); valid: %lld lines round-trip\n",
         (long long)nt, rt_bpe_vocab(b), t1 - t0, t2 - t1, (double)tokens / (double)nt,
         (long long)nv);
  CHECK(rt_bpe_vocab(b) == 8000);
  CHECK(broken == 0);
  CHECK(t2 - t0 < 20); /* about 1 s on the project's machine; generous under load */
  rt_bpe_free(b);
  mc_free(tl);
  mc_free(vl);
  mc_free(train);
  mc_free(valid);
  return 1;
}

/* test_bpe: the unit checks; test_bpe --corpus DIR: the en-fr checks (exit 77 without
 * the corpus). */
int main(int argc, char **argv) {
  if (argc == 3 && !strcmp(argv[1], "--corpus")) {
    if (!t_en_fr(argv[2])) return 77;
    TEST_DONE();
  }
  t_tiny();
  t_round_trip();
  t_utf8();
  t_serialise();
  TEST_DONE();
}
