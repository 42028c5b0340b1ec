/* test_bleu.c: corpus BLEU-4 (runtime/bleu.c) on cases worked out by hand below,
 * following Moses' multi-bleu.perl: identical text = 100, an empty hypothesis or corpus
 * = 0, a missing 4-gram = 0, clipping, the brevity penalty over a corpus, the printed
 * line, ids and text agreeing, and the tokenizer. */
#include <string.h>

#include "../common/common.h"
#include "../runtime/text.h"
#include "test.h"

static RtBleu one(const char *hyp, const char *ref) {
  RtBleuStats s = {0};
  rt_bleu_add(&s, hyp, ref);
  return rt_bleu_score(&s);
}

static void t_identical(void) {
  RtBleu b = one("the cat sat on the mat", "the cat sat on the mat");
  CHECK(b.bleu == 100);
  CHECK(b.bp == 1 && b.ratio == 1 && b.hyp_len == 6 && b.ref_len == 6);
  /* whitespace runs and ends do not matter (Perl's split) */
  b = one("  the cat\tsat on  the mat\n", "the cat sat on the mat");
  CHECK(b.bleu == 100);
}

static void t_empty(void) {
  RtBleu b = one("", "the cat sat on the mat"); /* no words: 0 (the script divides by 0) */
  CHECK(b.bleu == 0 && b.hyp_len == 0 && b.ref_len == 6);
  RtBleuStats s = {0};
  b = rt_bleu_score(&s); /* an empty corpus */
  CHECK(b.bleu == 0 && b.bp == 0);
  b = one("the cat", ""); /* no reference words: the script's BLEU = 0 */
  CHECK(b.bleu == 0);
}

/* ref "the cat sat on the mat", hyp "the cat sat on a mat" (both 6 words):
 *   1-grams: the cat sat on a mat          -> 5 of 6 in the reference (not "a")
 *   2-grams: the-cat cat-sat sat-on on-a a-mat -> 3 of 5 (the first three)
 *   3-grams: the-cat-sat cat-sat-on sat-on-a on-a-mat -> 2 of 4
 *   4-grams: the-cat-sat-on cat-sat-on-a sat-on-a-mat -> 1 of 3
 *   BP = 1; BLEU = 100 * (5/6 * 3/5 * 1/2 * 1/3)^(1/4) = 100 * (1/12)^(1/4) = 53.7285 */
static void t_worked(void) {
  RtBleu b = one("the cat sat on a mat", "the cat sat on the mat");
  CHECK_CLOSE(b.precision[0], 5.0 / 6, 1e-15, 0);
  CHECK_CLOSE(b.precision[1], 3.0 / 5, 1e-15, 0);
  CHECK_CLOSE(b.precision[2], 2.0 / 4, 1e-15, 0);
  CHECK_CLOSE(b.precision[3], 1.0 / 3, 1e-15, 0);
  CHECK_CLOSE(b.bleu, 53.728496591177, 1e-12, 0);
  char line[160];
  rt_bleu_format(&b, line, sizeof line);
  CHECK(!strcmp(line, "BLEU = 53.73, 83.3/60.0/50.0/33.3 (BP=1.000, ratio=1.000, hyp_len=6, "
                      "ref_len=6)"));
  if (strcmp(line, "BLEU = 53.73, 83.3/60.0/50.0/33.3 (BP=1.000, ratio=1.000, hyp_len=6, "
                   "ref_len=6)"))
    fprintf(stderr, "  got: %s\n", line);
}

/* no 4-gram in common -> log 0 = -9999999999 -> BLEU 0, though other n match */
static void t_no_fourgram(void) {
  RtBleu b = one("the cat sat on", "the cat sat under");
  CHECK(b.precision[0] == 0.75 && b.precision[3] == 0);
  CHECK(b.bleu == 0);
}

/* clipping: hyp "the the the the" against "the cat the": "the" matches at most twice */
static void t_clipping(void) {
  RtBleu b = one("the the the the", "the cat the");
  CHECK(b.precision[0] == 0.5);
  CHECK(b.precision[1] == 0); /* "the the" is not in the reference */
}

/* Two sentences: hyp 1 = ref 1 (6 words: 6/6, 5/5, 4/4, 3/3), hyp 2 "a b c d" against
 * "a b c d e f g h" (4/4, 3/3, 2/2, 1/1): every p_n = 1; hyp_len 10 < ref_len 14, so
 * BP = exp(1 - 14/10) = exp(-0.4) = 0.670320046 and BLEU = 67.0320046. The brevity
 * penalty is the corpus's: sentence 1 alone would be 100. */
static void t_corpus_brevity(void) {
  RtBleuStats s = {0};
  rt_bleu_add(&s, "the cat sat on the mat", "the cat sat on the mat");
  rt_bleu_add(&s, "a b c d", "a b c d e f g h");
  RtBleu b = rt_bleu_score(&s);
  for (int n = 0; n < 4; n++)
    CHECK(b.precision[n] == 1);
  CHECK(s.total[0] == 10 && s.total[3] == 4 && s.matches[3] == 4);
  CHECK(b.hyp_len == 10 && b.ref_len == 14);
  CHECK_CLOSE(b.bp, exp(-0.4), 1e-15, 0);
  CHECK_CLOSE(b.bleu, 100 * exp(-0.4), 1e-13, 0);
  char line[160];
  rt_bleu_format(&b, line, sizeof line);
  CHECK(!strncmp(line, "BLEU = 67.03, 100.0/100.0/100.0/100.0 (BP=0.670, ratio=0.714", 60));
}

/* subword ids give the same statistics as the words they stand for */
static void t_ids(void) {
  const int32_t hyp[] = {1, 2, 3, 4, 5, 6}, ref[] = {1, 2, 3, 4, 1, 6};
  RtBleuStats a = {0}, w = {0};
  rt_bleu_add_ids(&a, hyp, 6, ref, 6);
  rt_bleu_add(&w, "the cat sat on a mat", "the cat sat on the mat");
  CHECK(!memcmp(&a, &w, sizeof a));
}

static void t_tokenize(void) {
  struct {
    const char *in, *want;
  } cases[] = {
      {"Hello, world!", "Hello , world !"},
      {"  It costs 3.50 or 1,000  ", "It costs 3.50 or 1,000"},
      {"Don't stop (now).", "Don't stop ( now ) ."},
      {"l'homme \xc3\xa9t\xc3\xa9 \"cit\xc3\xa9\"", "l'homme \xc3\xa9t\xc3\xa9 \" cit\xc3\xa9 \""},
      {"", ""},
      {"...", ". . ."},
  };
  for (size_t i = 0; i < MC_ARRAY_LEN(cases); i++) {
    char *t = rt_bleu_tokenize(cases[i].in);
    CHECK(!strcmp(t, cases[i].want));
    if (strcmp(t, cases[i].want)) fprintf(stderr, "  tokenize '%s' -> '%s'\n", cases[i].in, t);
    mc_free(t);
  }
}

/* a long line of distinct words: linear time (hashing), the right counts */
static void t_long(void) {
  McBuf h = {0};
  for (int i = 0; i < 20000; i++)
    mc_buf_printf(&h, "w%d ", i);
  RtBleu b = one(h.data, h.data);
  CHECK(b.bleu == 100 && b.hyp_len == 20000);
  mc_buf_free(&h);
}

int main(void) {
  t_identical();
  t_empty();
  t_worked();
  t_no_fourgram();
  t_clipping();
  t_corpus_brevity();
  t_ids();
  t_tokenize();
  t_long();
  TEST_DONE();
}
